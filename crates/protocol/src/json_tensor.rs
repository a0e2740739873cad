//! JSON tensor data: decoding `data` arrays (flat or nested, any OIP datatype) straight into typed
//! vectors, and encoding output tensors back.
//!
//! Decoding walks the JSON once with a serde visitor: no intermediate `serde_json::Value` tree,
//! ragged nesting detected on the way, every value range-checked for its datatype.

use std::fmt;

use half::f16;
use modelship_inference::{DataType, TensorData};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use crate::DecodeError;

/// Decoded `data`: the elements in row-major order and the nesting of the JSON arrays
/// (`[n]` for a flat array, `[rows, cols]` for an array of rows, `[]` for a bare scalar).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub data: TensorData,
    pub nesting: Vec<usize>,
}

/// Decodes a JSON value (a scalar, a flat array, or nested arrays) as elements of `datatype`.
/// `field` names the value in error messages, e.g. `input 'x' data` (formatted only for an
/// error). `expected` is how many elements the value is declared to hold (0 when unknown): the
/// output is allocated for them once, within what the JSON text can hold, instead of growing.
pub fn decode(raw: &RawValue, datatype: DataType, field: &dyn fmt::Display, expected: usize) -> Result<Decoded, DecodeError> {
    fn run<T: Element>(raw: &RawValue, field: &dyn fmt::Display, expected: usize, wrap: fn(Vec<T>) -> TensorData) -> Result<Decoded, DecodeError> {
        // Every element takes at least one character and a separator, so a false declaration
        // cannot make this allocate more than the body's size.
        let capacity = expected.min(raw.get().len() / 2 + 1);
        let mut state = FlatState::<T> { out: Vec::with_capacity(capacity), dims: Vec::new(), leaf_depth: None, datatype: T::DATATYPE };
        let mut de = serde_json::Deserializer::from_str(raw.get());
        Level { state: &mut state, depth: 0 }
            .deserialize(&mut de)
            .map_err(|e| DecodeError::in_field(&field.to_string(), &e))?;
        let nesting = state.dims.iter().map(|d| d.unwrap_or(0)).collect();
        Ok(Decoded { data: wrap(state.out), nesting })
    }
    match datatype {
        DataType::Bool => run(raw, field, expected, TensorData::Bool),
        DataType::Uint8 => run(raw, field, expected, TensorData::Uint8),
        DataType::Uint16 => run(raw, field, expected, TensorData::Uint16),
        DataType::Uint32 => run(raw, field, expected, TensorData::Uint32),
        DataType::Uint64 => run(raw, field, expected, TensorData::Uint64),
        DataType::Int8 => run(raw, field, expected, TensorData::Int8),
        DataType::Int16 => run(raw, field, expected, TensorData::Int16),
        DataType::Int32 => run(raw, field, expected, TensorData::Int32),
        DataType::Int64 => run(raw, field, expected, TensorData::Int64),
        DataType::Fp16 => run(raw, field, expected, TensorData::Fp16),
        DataType::Fp32 => run(raw, field, expected, TensorData::Fp32),
        DataType::Fp64 => run(raw, field, expected, TensorData::Fp64),
        DataType::Bytes => run(raw, field, expected, TensorData::Bytes),
    }
}

/// A Rust element type that JSON values convert into, with the datatype's range rules.
trait Element: Sized {
    const DATATYPE: DataType;
    fn from_bool(_: bool) -> Result<Self, String> {
        Err("a boolean".to_owned())
    }
    fn from_i64(v: i64) -> Result<Self, String> {
        Err(format!("the number {v}"))
    }
    fn from_u64(v: u64) -> Result<Self, String> {
        Err(format!("the number {v}"))
    }
    fn from_f64(v: f64) -> Result<Self, String> {
        Err(format!("the number {v}"))
    }
    fn from_str(_: &str) -> Result<Self, String> {
        Err("a string".to_owned())
    }
}

macro_rules! integer_element {
    ($t:ty, $dt:expr) => {
        impl Element for $t {
            const DATATYPE: DataType = $dt;
            fn from_i64(v: i64) -> Result<Self, String> {
                <$t>::try_from(v).map_err(|_| format!("{v}, out of range"))
            }
            fn from_u64(v: u64) -> Result<Self, String> {
                <$t>::try_from(v).map_err(|_| format!("{v}, out of range"))
            }
            fn from_f64(v: f64) -> Result<Self, String> {
                // 3.0 is an acceptable integer; 3.5 is not. The bounds are strict against one
                // past each end: an integer literal reaches here only when it does not fit 64
                // bits, and u64::MAX, i64::MAX and one below i64::MIN round to the power of two
                // at the end as f64, so `<= MAX` would let 2^64 through, saturated.
                if v.fract() == 0.0 && v > <$t>::MIN as f64 - 1.0 && v < <$t>::MAX as f64 + 1.0 {
                    Ok(v as $t)
                } else {
                    Err(format!("{v}, not an integer in range"))
                }
            }
        }
    };
}
integer_element!(u8, DataType::Uint8);
integer_element!(u16, DataType::Uint16);
integer_element!(u32, DataType::Uint32);
integer_element!(u64, DataType::Uint64);
integer_element!(i8, DataType::Int8);
integer_element!(i16, DataType::Int16);
integer_element!(i32, DataType::Int32);
integer_element!(i64, DataType::Int64);

macro_rules! float_element {
    ($t:ty, $dt:expr, $from:expr) => {
        impl Element for $t {
            const DATATYPE: DataType = $dt;
            fn from_i64(v: i64) -> Result<Self, String> {
                <$t as Element>::from_f64(v as f64)
            }
            fn from_u64(v: u64) -> Result<Self, String> {
                <$t as Element>::from_f64(v as f64)
            }
            fn from_f64(v: f64) -> Result<Self, String> {
                let x: $t = $from(v);
                if x.is_finite() { Ok(x) } else { Err(format!("{v:e}, out of range")) }
            }
        }
    };
}
float_element!(f32, DataType::Fp32, |v: f64| v as f32);
float_element!(f64, DataType::Fp64, |v: f64| v);
float_element!(f16, DataType::Fp16, f16::from_f64);

impl Element for bool {
    const DATATYPE: DataType = DataType::Bool;
    fn from_bool(v: bool) -> Result<Self, String> {
        Ok(v)
    }
}

impl Element for Vec<u8> {
    const DATATYPE: DataType = DataType::Bytes;
    fn from_str(v: &str) -> Result<Self, String> {
        Ok(v.as_bytes().to_vec())
    }
}

struct FlatState<T> {
    out: Vec<T>,
    /// Length of the arrays seen at each depth; `None` until the first one closes.
    dims: Vec<Option<usize>>,
    /// Depth at which scalars sit; every scalar must sit at the same depth.
    leaf_depth: Option<usize>,
    datatype: DataType,
}

impl<T: Element> FlatState<T> {
    fn push<E: de::Error>(&mut self, depth: usize, value: Result<T, String>) -> Result<(), E> {
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(E::custom("ragged array: numbers and arrays are mixed at the same level"));
            }
            Some(_) => {}
        }
        match value {
            Ok(v) => {
                self.out.push(v);
                Ok(())
            }
            Err(what) => Err(E::custom(format_args!(
                "element {} is {what}, which is not a valid {} value",
                self.out.len(),
                self.datatype
            ))),
        }
    }
}

struct Level<'s, T> {
    state: &'s mut FlatState<T>,
    depth: usize,
}

impl<'de, T: Element> DeserializeSeed<'de> for Level<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Level<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {} values", self.state.datatype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth;
        if self.state.leaf_depth.is_some_and(|d| d <= depth) {
            return Err(de::Error::custom("ragged array: numbers and arrays are mixed at the same level"));
        }
        let mut count = 0usize;
        while seq.next_element_seed(Level { state: &mut *self.state, depth: depth + 1 })?.is_some() {
            count += 1;
        }
        if self.state.dims.len() <= depth {
            self.state.dims.resize(depth + 1, None);
        }
        match self.state.dims[depth] {
            None => self.state.dims[depth] = Some(count),
            Some(n) if n != count => {
                return Err(de::Error::custom(format_args!(
                    "ragged array: arrays at depth {} have lengths {n} and {count}",
                    depth + 1
                )));
            }
            Some(_) => {}
        }
        // An empty array closes a level without reaching a scalar: record where scalars would be.
        if count == 0 && self.state.leaf_depth.is_none() && self.state.out.is_empty() {
            self.state.leaf_depth = Some(depth + 1);
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.state.push(self.depth, T::from_bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.state.push(self.depth, T::from_i64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.state.push(self.depth, T::from_u64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.state.push(self.depth, T::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.state.push(self.depth, T::from_str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.state.push(self.depth, Err("null".to_owned()))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.state.push(self.depth, Err("an object".to_owned()))
    }
}

/// Serializes tensor elements as a flat JSON array (FP16 widened to f32, BYTES as text).
#[derive(Debug)]
pub struct DataJson<'a>(pub &'a TensorData);

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Bytes(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for b in v {
                    seq.serialize_element(&String::from_utf8_lossy(b))?;
                }
                seq.end()
            }
            TensorData::Bool(v) => s.collect_seq(v),
            TensorData::Uint8(v) => s.collect_seq(v),
            TensorData::Uint16(v) => s.collect_seq(v),
            TensorData::Uint32(v) => s.collect_seq(v),
            TensorData::Uint64(v) => s.collect_seq(v),
            TensorData::Int8(v) => s.collect_seq(v),
            TensorData::Int16(v) => s.collect_seq(v),
            TensorData::Int32(v) => s.collect_seq(v),
            TensorData::Int64(v) => s.collect_seq(v),
            TensorData::Fp32(v) => s.collect_seq(v),
            TensorData::Fp64(v) => s.collect_seq(v),
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, datatype: DataType) -> String {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let answer = |expected| match decode(&raw, datatype, &"input 'x' data", expected) {
            Ok(d) => format!("{:?} nesting={:?}", d.data, d.nesting),
            Err(e) => format!("error: {e}"),
        };
        let unknown = answer(0);
        // The declared count only sizes the allocation: too few, right or absurd, same answer.
        for expected in [1, 3, 4, usize::MAX] {
            assert_eq!(answer(expected), unknown, "{json} declared as {expected} elements");
        }
        unknown
    }

    #[test]
    fn a_declared_count_never_allocates_past_what_the_text_can_hold() {
        let raw: Box<RawValue> = serde_json::from_str("[1, 2, 3]").unwrap();
        let decoded = decode(&raw, DataType::Fp32, &"x", usize::MAX).unwrap();
        let TensorData::Fp32(values) = decoded.data else { unreachable!("asked for FP32") };
        assert!(values.capacity() <= "[1, 2, 3]".len(), "capacity {}", values.capacity());
    }

    #[test]
    fn decodes_flat_nested_and_scalar() {
        assert_eq!(check("[1, 2.5, -3]", DataType::Fp32), "Fp32([1.0, 2.5, -3.0]) nesting=[3]");
        assert_eq!(check("[[1, 2], [3, 4]]", DataType::Int64), "Int64([1, 2, 3, 4]) nesting=[2, 2]");
        assert_eq!(check("7", DataType::Int32), "Int32([7]) nesting=[]");
        assert_eq!(check("[]", DataType::Fp64), "Fp64([]) nesting=[0]");
        assert_eq!(check("[true, false]", DataType::Bool), "Bool([true, false]) nesting=[2]");
        assert_eq!(check(r#"["ab", "ç"]"#, DataType::Bytes), "Bytes([[97, 98], [195, 167]]) nesting=[2]");
        assert_eq!(check("[1.5]", DataType::Fp16), "Fp16([1.5]) nesting=[1]");
        assert_eq!(check("[18446744073709551615]", DataType::Uint64), "Uint64([18446744073709551615]) nesting=[1]");
        // One past the largest, as serde reads it (a float): refused, never saturated.
        for (text, datatype) in [
            ("[18446744073709551616]", DataType::Uint64),
            ("[9223372036854775808]", DataType::Int64),
            ("[-9223372036854775809]", DataType::Int64),
            ("[4294967296]", DataType::Uint32),
            ("[1.8446744073709552e19]", DataType::Uint64),
        ] {
            assert!(check(text, datatype).contains("out of range") || check(text, datatype).contains("not an integer in range"), "{text}: {}", check(text, datatype));
        }
        assert_eq!(check("[3.0]", DataType::Int8), "Int8([3]) nesting=[1]");
    }

    #[test]
    fn names_the_bad_element() {
        let cases = [
            ("[1, 300]", DataType::Uint8, "error: input 'x' data: element 1 is 300, out of range, which is not a valid UINT8 value"),
            ("[-1]", DataType::Uint32, "error: input 'x' data: element 0 is -1, out of range, which is not a valid UINT32 value"),
            ("[1.5]", DataType::Int64, "error: input 'x' data: element 0 is 1.5, not an integer in range, which is not a valid INT64 value"),
            ("[1e39]", DataType::Fp32, "error: input 'x' data: element 0 is 1e39, out of range, which is not a valid FP32 value"),
            ("[1e6]", DataType::Fp16, "error: input 'x' data: element 0 is 1e6, out of range, which is not a valid FP16 value"),
            ("[1, null]", DataType::Fp32, "error: input 'x' data: element 1 is null, which is not a valid FP32 value"),
            ("[\"1\"]", DataType::Fp32, "error: input 'x' data: element 0 is a string, which is not a valid FP32 value"),
            ("[1]", DataType::Bool, "error: input 'x' data: element 0 is the number 1, which is not a valid BOOL value"),
            ("[1]", DataType::Bytes, "error: input 'x' data: element 0 is the number 1, which is not a valid BYTES value"),
            ("[{\"a\": 1}]", DataType::Fp32, "error: input 'x' data: element 0 is an object, which is not a valid FP32 value"),
        ];
        for (json, dt, want) in cases {
            assert_eq!(check(json, dt), want, "{json} as {dt}");
        }
    }

    #[test]
    fn rejects_ragged_arrays() {
        for json in ["[[1, 2], [3]]", "[[1, 2], 3]", "[1, [2, 3]]", "[[[1], [2]], [[3], [4], [5]]]", "[[1], []]"] {
            let got = check(json, DataType::Fp32);
            assert!(got.starts_with("error: input 'x' data: ragged array"), "{json}: {got}");
        }
    }

    #[test]
    fn encodes_outputs() {
        let cases = [
            (TensorData::Fp32(vec![0.1, 2.0]), "[0.1,2.0]"),
            (TensorData::Fp16(vec![f16::from_f32(0.5)]), "[0.5]"),
            (TensorData::Bytes(vec![b"hi".to_vec()]), "[\"hi\"]"),
            (TensorData::Bool(vec![true]), "[true]"),
            (TensorData::Uint64(vec![u64::MAX]), "[18446744073709551615]"),
        ];
        for (data, want) in cases {
            assert_eq!(serde_json::to_string(&DataJson(&data)).unwrap(), want);
        }
    }
}
