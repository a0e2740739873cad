//! Bounds on the parts of a request that are kept as JSON values or vectors of their own
//! (parameters, shapes), so that no request costs more memory than a small multiple of its bytes:
//! a `serde_json::Value` costs 32 bytes or more for as little as 2 bytes of text (`[]`), so
//! parameters are measured as text and their nesting counted before they become values.

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The most bytes of JSON a request's `parameters` (entities included), or `/v1/predict`'s
/// `entities`, may take: some 40 000 entities of one short key.
pub const MAX_PARAMETERS_BYTES: usize = 1024 * 1024;
/// The most bytes of JSON one input's or output's `parameters` may take.
pub const MAX_TENSOR_PARAMETERS_BYTES: usize = 4 * 1024;
/// The deepest nesting of arrays and objects inside `parameters` (the object itself is 1).
pub const MAX_PARAMETERS_DEPTH: usize = 8;
/// The most dimensions a tensor's shape may have (ONNX models use a handful).
pub const MAX_SHAPE_DIMS: usize = 64;
/// The most inputs, or requested outputs, one request may list.
pub const MAX_TENSORS: usize = 4096;
/// The longest input or output name (ONNX names are a few dozen bytes).
pub const MAX_NAME_BYTES: usize = 1024;

/// An input's or output's name, at most [`MAX_NAME_BYTES`] (never echoed whole in errors).
pub fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    check_name(&name).map_err(D::Error::custom)?;
    Ok(name)
}

/// Refuses a tensor name over [`MAX_NAME_BYTES`], without quoting it.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("an input or output name is at most {MAX_NAME_BYTES} bytes, not {}", name.len()));
    }
    Ok(())
}

/// A request's `inputs` or `outputs`: at most [`MAX_TENSORS`], refused as soon as there is one
/// more (each costs a few allocations beyond its text).
pub fn tensors<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    at_most(d, MAX_TENSORS, "tensors", "a request lists at most {max} inputs or outputs")
}

/// A JSON array of at most `max` elements, refused as soon as it has one more (never collected
/// whole first); `what` names the elements, `refusal` says the rule (`{max}` is replaced).
fn at_most<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D, max: usize, what: &'static str, refusal: &'static str) -> Result<Vec<T>, D::Error> {
    struct AtMost<T> {
        max: usize,
        what: &'static str,
        refusal: &'static str,
        element: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for AtMost<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "an array of at most {} {}", self.max, self.what)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut all = Vec::new();
            while let Some(element) = seq.next_element::<T>()? {
                if all.len() == self.max {
                    return Err(A::Error::custom(self.refusal.replace("{max}", &self.max.to_string())));
                }
                all.push(element);
            }
            Ok(all)
        }
    }
    d.deserialize_seq(AtMost { max, what, refusal, element: std::marker::PhantomData })
}

/// [`tensors`], for an optional list (`null` is none).
pub fn optional_tensors<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Vec<T>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(bound = "T: Deserialize<'de>")]
    struct Listed<T>(#[serde(deserialize_with = "tensors")] Vec<T>);
    Ok(Option::<Listed<T>>::deserialize(d)?.map(|l| l.0))
}

/// A request's `parameters`: at most [`MAX_PARAMETERS_BYTES`] of text, [`MAX_PARAMETERS_DEPTH`] levels.
pub fn request_parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Map<String, Value>>, D::Error> {
    parameters(d, MAX_PARAMETERS_BYTES)
}

/// An input's or output's `parameters`: at most [`MAX_TENSOR_PARAMETERS_BYTES`] of text.
pub fn tensor_parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Map<String, Value>>, D::Error> {
    parameters(d, MAX_TENSOR_PARAMETERS_BYTES)
}

fn parameters<'de, D: Deserializer<'de>>(d: D, max: usize) -> Result<Option<Map<String, Value>>, D::Error> {
    let Some(raw) = Option::<Box<RawValue>>::deserialize(d)? else { return Ok(None) };
    parse_parameters(raw.get(), max).map(Some).map_err(D::Error::custom)
}

/// `/v1/predict`'s `entities`: at most [`MAX_PARAMETERS_BYTES`] of text, [`MAX_PARAMETERS_DEPTH`] levels.
pub fn entities<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Map<String, Value>>>, D::Error> {
    let Some(raw) = Option::<Box<RawValue>>::deserialize(d)? else { return Ok(None) };
    parse("entities", raw.get(), MAX_PARAMETERS_BYTES).map_err(D::Error::custom)
}

/// Parses the text of a `parameters` object within the bounds.
pub fn parse_parameters(text: &str, max: usize) -> Result<Map<String, Value>, String> {
    Ok(parse::<Option<Map<String, Value>>>("parameters", text, max)?.unwrap_or_default())
}

/// Parses `text`, the JSON of field `what`, once it is known to be at most `max` bytes and
/// [`MAX_PARAMETERS_DEPTH`] levels deep.
pub fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str, max: usize) -> Result<T, String> {
    if text.len() > max {
        return Err(format!("'{what}' takes {} bytes; the limit is {max}", text.len()));
    }
    if let Some(depth) = too_deep(text) {
        return Err(format!("'{what}' nest {depth} levels deep; the limit is {MAX_PARAMETERS_DEPTH}"));
    }
    serde_json::from_str::<T>(text).map_err(|e| format!("'{what}' must be {}: {e}", if what == "entities" { "a JSON array of objects" } else { "a JSON object" }))
}

/// How deep `json` nests when deeper than the limit (strings are skipped, escapes included).
fn too_deep(json: &str) -> Option<usize> {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    (deepest > MAX_PARAMETERS_DEPTH).then_some(deepest)
}

/// A shape of at most [`MAX_SHAPE_DIMS`] dimensions, refused as soon as it has one more (never
/// collected whole first).
pub fn shape<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    at_most(d, MAX_SHAPE_DIMS, "integers", "a shape has at most {max} dimensions")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_bounded_in_bytes_and_depth() {
        let deep = |n: usize| format!("{{\"x\":{}1{}}}", "[".repeat(n - 1), "]".repeat(n - 1));
        // (text, limit, error fragment or None)
        let cases: Vec<(String, usize, Option<&str>)> = vec![
            (r#"{"a":1,"b":"x"}"#.to_owned(), 100, None),
            ("null".to_owned(), 100, None),
            (deep(MAX_PARAMETERS_DEPTH), 1000, None),
            (deep(MAX_PARAMETERS_DEPTH + 1), 1000, Some("nest 9 levels deep")),
            (r#"{"s":"[[[[[[[[[[[[[[[[[["}"#.to_owned(), 1000, None),
            (r#"{"s":"\"[[[[[[[[[[[[[[[[[["}"#.to_owned(), 1000, None),
            (format!(r#"{{"s":"{}"}}"#, "a".repeat(200)), 100, Some("the limit is 100")),
            ("[1]".to_owned(), 100, Some("must be a JSON object")),
        ];
        for (text, limit, want) in cases {
            match (parse_parameters(&text, limit), want) {
                (Ok(_), None) => {}
                (Err(e), Some(fragment)) => assert!(e.contains(fragment), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn a_long_shape_is_refused_as_it_is_read() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "shape")]
            #[allow(dead_code)]
            shape: Vec<i64>,
        }
        let ok = format!(r#"{{"shape":[{}]}}"#, vec!["1"; MAX_SHAPE_DIMS].join(","));
        assert!(serde_json::from_str::<T>(&ok).is_ok());
        let long = format!(r#"{{"shape":[{}]}}"#, vec!["1"; MAX_SHAPE_DIMS + 1].join(","));
        let e = serde_json::from_str::<T>(&long).err().unwrap().to_string();
        assert!(e.contains("at most 64 dimensions"), "{e}");
    }
}
