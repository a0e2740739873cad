//! Block YAML with every string double-quoted, for files that YAML 1.1 readers parse.
//!
//! `docker-compose` 1.x reads Compose files with PyYAML and `docker stack deploy` with Go's
//! yaml.v2, both YAML 1.1: there `no`, `on`, `off`, `y` are booleans and `2222:22` a base-60
//! integer. The serde YAML crates (`serde_yaml_ng`, `serde_norway`) quote only what YAML 1.2
//! would misread, so a Redis `--appendonly no` or a port mapping could change meaning. Here the
//! typed values are turned into a `serde_yaml_ng::Value` by serde, and each string is written
//! with JSON's escaping, which is valid YAML double-quoted syntax in both versions; keys are written
//! plain only when no YAML reader could take them for anything but a string.

use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};

pub fn to_string<T: Serialize>(value: &T) -> String {
    // serde_yaml_ng's `Value` keeps the fields in declaration order (serde_json's map may sort
    // them, depending on a feature another crate can turn on).
    let value = serde_yaml_ng::to_value(value).expect("generated values serialize");
    let mut out = String::new();
    match &value {
        Value::Mapping(map) if !map.is_empty() => write_map(&mut out, map, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &Mapping, indent: usize) {
    for (i, (key, value)) in map.iter().enumerate() {
        // The first key of a map inside a list item shares the `- ` line.
        if !(i == 0 && out.ends_with("- ")) {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key_text(key));
        out.push(':');
        write_value(out, value, indent);
    }
}

fn write_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Mapping(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent + 2);
        }
        Value::Sequence(items) if !items.is_empty() => {
            out.push('\n');
            for item in items {
                out.push_str(&" ".repeat(indent + 2));
                out.push_str("- ");
                match item {
                    Value::Mapping(map) if !map.is_empty() => write_map(out, map, indent + 4),
                    other => {
                        out.push_str(&scalar(other));
                        out.push('\n');
                    }
                }
            }
        }
        Value::String(text) if is_block(text) => {
            // A literal block: always a string, in YAML 1.1 and 1.2, whatever its lines say.
            out.push_str(" |\n");
            for line in text.lines() {
                if !line.is_empty() {
                    out.push_str(&" ".repeat(indent + 2));
                    out.push_str(line);
                }
                out.push('\n');
            }
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
}

/// Multi-line text (a file in a ConfigMap) reads better as a literal block. Only text a block
/// keeps exactly: one final line break (the block's default chomping), no first line starting
/// with a space (it would need an indentation indicator), no carriage return or other control
/// character, no trailing whitespace on a line, which editors drop.
fn is_block(text: &str) -> bool {
    text.ends_with('\n')
        && !text.ends_with("\n\n")
        && text.trim_end_matches('\n').contains('\n')
        && !text.starts_with([' ', '\n'])
        && !text.chars().any(|c| c.is_control() && c != '\n')
        && text.lines().all(|l| !l.ends_with([' ', '\t']))
}

/// A scalar, or an empty (or nested) collection in flow style, as JSON writes it: YAML reads
/// JSON the same in both versions.
fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Sequence(items) => format!("[{}]", items.iter().map(scalar).collect::<Vec<_>>().join(", ")),
        Value::Mapping(map) => {
            format!("{{{}}}", map.iter().map(|(k, v)| format!("{}: {}", quote(&key_string(k)), scalar(v))).collect::<Vec<_>>().join(", "))
        }
        Value::Tagged(tagged) => scalar(&tagged.value),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn key_string(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => scalar(other),
    }
}

/// Plain when it can only be a string in YAML 1.1 and 1.2, else quoted.
fn key_text(key: &Value) -> String {
    const SPECIAL: [&str; 9] = ["y", "n", "yes", "no", "true", "false", "on", "off", "null"];
    let key = key_string(key);
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !SPECIAL.contains(&key.to_ascii_lowercase().as_str());
    if plain { key } else { quote(&key) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::*;

    #[test]
    fn strings_a_yaml_1_1_reader_would_misread_are_quoted_and_read_back_unchanged() {
        let tricky = ["no", "on", "Off", "y", "2222:22", "1:20", "~", "null", "012", "1_000", ".5", "-", "", "a: b", "#x", "\"q\"\n\\"];
        let mut doc: BTreeMap<String, Value> = BTreeMap::new();
        doc.insert("list".into(), serde_json::json!(tricky));
        doc.insert("no".into(), serde_json::json!({"nested": [{"a": 1, "b": "off"}, "x"], "empty": {}, "none": []}));
        doc.insert("NUMBER".into(), serde_json::json!(3.5));
        let text = to_string(&doc);
        assert_eq!(
            text,
            "NUMBER: 3.5\nlist:\n  - \"no\"\n  - \"on\"\n  - \"Off\"\n  - \"y\"\n  - \"2222:22\"\n  - \"1:20\"\n  - \"~\"\n  - \"null\"\n  - \"012\"\n  - \"1_000\"\n  - \".5\"\n  - \"-\"\n  - \"\"\n  - \"a: b\"\n  - \"#x\"\n  - \"\\\"q\\\"\\n\\\\\"\n\"no\":\n  empty: {}\n  nested:\n    - a: 1\n      b: \"off\"\n    - \"x\"\n  none: []\n"
        );
        let back: BTreeMap<String, Value> = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn files_are_literal_blocks_that_read_back_unchanged() {
        let texts = [
            "model: {path: /m.onnx}\n# no\n\nserver:\n  port: 8000\n",
            "--- a\n... b\n\"q\": 'x'\n",
            " leading space\nx\n",
            "two\nbreaks\n\n",
            "trailing \nspace\n",
            "one line\n",
            "no final break\nx",
        ];
        let doc: BTreeMap<String, Value> = texts.iter().enumerate().map(|(i, t)| (format!("k{i}"), serde_json::json!(t))).collect();
        let text = to_string(&doc);
        assert!(text.starts_with("k0: |\n  model: {path: /m.onnx}\n  # no\n\n  server:\n    port: 8000\nk1: |\n  --- a\n"), "{text}");
        assert!(text.contains("k2: \" leading space\\nx\\n\"\n") && text.contains("k5: \"one line\\n\"\n"), "{text}");
        let back: BTreeMap<String, Value> = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, doc);
    }
}
