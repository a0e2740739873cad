//! A Triton model repository's `config.pbtxt`: Triton's `ModelConfig` in protobuf text format,
//! parsed against the schema of `proto/model_config.proto` (every field Triton accepts parses;
//! a misspelt one is an error naming it), and reduced to what modelship acts on.

use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, Value};

/// What modelship takes from a `config.pbtxt`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TritonConfig {
    /// `name`; empty when the file leaves it out (the directory names the model).
    pub name: String,
    /// `platform` (`onnxruntime_onnx`) or `backend` (`onnxruntime`), whichever is set.
    pub platform: String,
    pub backend: String,
    pub versions: VersionPolicy,
    /// `max_batch_size`: above 0, every input and output has a first (batch) dimension that
    /// `dims` leave out.
    pub max_batch_size: i32,
    pub inputs: Vec<TensorConfig>,
    pub outputs: Vec<TensorConfig>,
    /// `dynamic_batching`, when set.
    pub dynamic_batching: Option<DynamicBatching>,
    /// The instances of the model (`instance_group[].count` summed; each group counts 1 when
    /// it gives none); `None` when there is no instance group.
    pub instances: Option<usize>,
    /// The instance groups' kinds (`KIND_CPU`, `KIND_GPU`, ...).
    pub instance_kinds: Vec<String>,
    /// The GPUs the instance groups name (`gpus: [0]`), in order.
    pub instance_gpus: Vec<u32>,
    /// `default_model_filename`; empty: `model.onnx`.
    pub default_model_filename: String,
    /// The other fields set, which modelship does not act on (named in its log).
    pub ignored: Vec<String>,
    /// `sequence_batching` or `ensemble_scheduling`, when set: models modelship cannot serve.
    pub scheduling: Option<String>,
}

/// Which versions of a model Triton serves (`version_policy`; default: the newest one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    Latest(u32),
    All,
    Specific(Vec<i64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorConfig {
    pub name: String,
    /// The V2 name of `data_type` (`TYPE_FP32` is `FP32`, `TYPE_STRING` is `BYTES`).
    pub datatype: String,
    pub dims: Vec<i64>,
    /// Whether it has a `reshape` (the model's shape differs from the one clients send).
    pub reshape: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DynamicBatching {
    pub preferred_batch_sizes: Vec<usize>,
    pub max_queue_delay_microseconds: u64,
}

/// The fields modelship acts on; any other that is set is reported as ignored.
const UNDERSTOOD: &[&str] = &[
    "name",
    "platform",
    "backend",
    "version_policy",
    "max_batch_size",
    "input",
    "output",
    "dynamic_batching",
    "instance_group",
    "default_model_filename",
    "sequence_batching",
    "ensemble_scheduling",
];

fn pool() -> Result<DescriptorPool, String> {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/model_config.bin")).as_ref())
        .map_err(|e| format!("the config.pbtxt schema does not load: {e}"))
}

/// Parses `text` (a `config.pbtxt`). `source` names it in errors.
pub fn parse(source: &str, text: &str) -> Result<TritonConfig, String> {
    let pool = pool()?;
    let descriptor = pool.get_message_by_name("inference.ModelConfig").ok_or("the config.pbtxt schema has no ModelConfig")?;
    let text = colon_before_lists(text);
    let message = DynamicMessage::parse_text_format(descriptor, &text).map_err(|e| format!("{source} is not a valid Triton model configuration: {e}"))?;
    let string = |m: &DynamicMessage, f: &str| m.get_field_by_name(f).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let mut config = TritonConfig {
        name: string(&message, "name"),
        platform: string(&message, "platform"),
        backend: string(&message, "backend"),
        max_batch_size: message.get_field_by_name("max_batch_size").and_then(|v| v.as_i32()).unwrap_or(0),
        default_model_filename: string(&message, "default_model_filename"),
        ..TritonConfig::default()
    };
    let messages = |m: &DynamicMessage, f: &str| -> Vec<DynamicMessage> {
        m.get_field_by_name(f)
            .and_then(|v| v.as_list().map(|l| l.iter().filter_map(|v| v.as_message().cloned()).collect()))
            .unwrap_or_default()
    };
    let enum_name = |m: &DynamicMessage, f: &str| -> String {
        let Some(field) = m.descriptor().get_field_by_name(f) else { return String::new() };
        let number = m.get_field(&field).as_enum_number().unwrap_or(0);
        field.kind().as_enum().and_then(|e| e.get_value(number)).map(|v| v.name().to_owned()).unwrap_or_else(|| number.to_string())
    };
    let tensors = |f: &str| -> Vec<TensorConfig> {
        messages(&message, f)
            .iter()
            .map(|t| {
                let datatype = enum_name(t, "data_type");
                let datatype = match datatype.strip_prefix("TYPE_").unwrap_or(&datatype) {
                    "STRING" => "BYTES".to_owned(),
                    other => other.to_owned(),
                };
                let dims = t.get_field_by_name("dims").and_then(|v| v.as_list().map(|l| l.iter().filter_map(Value::as_i64).collect())).unwrap_or_default();
                TensorConfig { name: string(t, "name"), datatype, dims, reshape: t.has_field_by_name("reshape") }
            })
            .collect()
    };
    config.inputs = tensors("input");
    config.outputs = tensors("output");
    if message.has_field_by_name("version_policy")
        && let Some(policy) = message.get_field_by_name("version_policy").and_then(|v| v.as_message().cloned())
    {
        config.versions = if let Some(latest) = policy.has_field_by_name("latest").then(|| policy.get_field_by_name("latest")).flatten() {
            let n = latest.as_message().and_then(|l| l.get_field_by_name("num_versions")).and_then(|v| v.as_u32()).unwrap_or(1);
            VersionPolicy::Latest(n.max(1))
        } else if policy.has_field_by_name("all") {
            VersionPolicy::All
        } else if policy.has_field_by_name("specific") {
            let versions = policy
                .get_field_by_name("specific")
                .and_then(|s| s.as_message().and_then(|s| s.get_field_by_name("versions")).and_then(|v| v.as_list().map(|l| l.iter().filter_map(Value::as_i64).collect())))
                .unwrap_or_default();
            VersionPolicy::Specific(versions)
        } else {
            VersionPolicy::default()
        };
    }
    if message.has_field_by_name("dynamic_batching")
        && let Some(batching) = message.get_field_by_name("dynamic_batching").and_then(|v| v.as_message().cloned())
    {
        let preferred = batching
            .get_field_by_name("preferred_batch_size")
            .and_then(|v| v.as_list().map(|l| l.iter().filter_map(Value::as_i32).filter_map(|n| usize::try_from(n).ok()).collect()))
            .unwrap_or_default();
        let delay = batching.get_field_by_name("max_queue_delay_microseconds").and_then(|v| v.as_u64()).unwrap_or(0);
        config.dynamic_batching = Some(DynamicBatching { preferred_batch_sizes: preferred, max_queue_delay_microseconds: delay });
    }
    let groups = messages(&message, "instance_group");
    if !groups.is_empty() {
        config.instances = Some(groups.iter().map(|g| g.get_field_by_name("count").and_then(|v| v.as_i32()).filter(|n| *n > 0).unwrap_or(1) as usize).sum());
        config.instance_kinds = groups.iter().map(|g| enum_name(g, "kind")).collect();
        config.instance_gpus = groups
            .iter()
            .filter_map(|g| g.get_field_by_name("gpus").and_then(|v| v.as_list().map(|l| l.iter().filter_map(Value::as_i32).filter_map(|n| u32::try_from(n).ok()).collect::<Vec<_>>())))
            .flatten()
            .collect();
    }
    for scheduling in ["sequence_batching", "ensemble_scheduling"] {
        if message.has_field_by_name(scheduling) {
            config.scheduling = Some(scheduling.to_owned());
        }
    }
    config.ignored = message
        .fields()
        .map(|(field, _)| field.name().to_owned())
        .filter(|name| !UNDERSTOOD.contains(&name.as_str()))
        .collect();
    Ok(config)
}

/// `text` with a colon between a field name and the `[` of its list where the colon is left out
/// (`input [ {...} ]`, as Triton's own configurations write it). The text format allows that for
/// a list of messages, and prost-reflect's parser asks for the colon. Strings and `#` comments
/// are left as they are.
fn colon_before_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut quote, mut escaped, mut comment) = (None::<char>, false, false);
    // Where the last token outside comments ends in `out`, and whether it is a name.
    let (mut token_end, mut after_name) = (0, false);
    for c in text.chars() {
        match (quote, comment) {
            (Some(q), _) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            (None, true) => comment = c != '\n',
            (None, false) => match c {
                '"' | '\'' => quote = Some(c),
                '#' => comment = true,
                '[' if after_name => out.insert(token_end, ':'),
                _ => {}
            },
        }
        out.push(c);
        if quote.is_none() && !comment && !c.is_whitespace() && c != '#' {
            token_end = out.len();
            after_name = c.is_ascii_alphanumeric() || c == '_';
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typical_onnx_configuration_reads_as_triton_reads_it() {
        let text = r#"
            name: "fraud"
            platform: "onnxruntime_onnx"
            max_batch_size: 8
            input [ { name: "features" data_type: TYPE_FP32 dims: [ 30 ] } ]
            output [
              { name: "label" data_type: TYPE_INT64 dims: [ 1 ] },
              { name: "note" data_type: TYPE_STRING dims: [ -1 ] }
            ]
            version_policy: { latest: { num_versions: 2 } }
            dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
            instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_CPU } ]
            parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
            model_warmup [ { name: "zeros" batch_size: 1 inputs { key: "features" value: { data_type: TYPE_FP32 dims: [ 30 ] zero_data: true } } } ]
            optimization { graph { level: 1 } }
        "#;
        let c = parse("fraud/config.pbtxt", text).unwrap();
        assert_eq!((c.name.as_str(), c.platform.as_str(), c.max_batch_size), ("fraud", "onnxruntime_onnx", 8));
        assert_eq!(c.inputs, [TensorConfig { name: "features".into(), datatype: "FP32".into(), dims: vec![30], reshape: false }]);
        assert_eq!(c.outputs[1], TensorConfig { name: "note".into(), datatype: "BYTES".into(), dims: vec![-1], reshape: false });
        assert_eq!(c.versions, VersionPolicy::Latest(2));
        assert_eq!(c.dynamic_batching, Some(DynamicBatching { preferred_batch_sizes: vec![4, 8], max_queue_delay_microseconds: 100 }));
        assert_eq!((c.instances, c.instance_kinds.as_slice()), (Some(3), ["KIND_CPU".to_owned(), "KIND_CPU".to_owned()].as_slice()));
        assert_eq!(c.ignored, ["optimization", "parameters", "model_warmup"]);
    }

    #[test]
    fn a_list_of_messages_may_leave_out_its_colon() {
        // (text, what the parser is given)
        let cases = [
            ("input [ {} ]", "input: [ {} ]"),
            ("input: [ {} ]", "input: [ {} ]"),
            ("dims:[1]", "dims:[1]"),
            ("name: \"a [b\" # c [d\noutput\n[{}]", "name: \"a [b\" # c [d\noutput:\n[{}]"),
            ("input # the features\n[ {} ]", "input: # the features\n[ {} ]"),
            ("x: 1 y: \"q\\\" [\" z [{}]", "x: 1 y: \"q\\\" [\" z: [{}]"),
        ];
        for (text, expected) in cases {
            assert_eq!(colon_before_lists(text), expected, "{text}");
        }
    }

    #[test]
    fn policies_defaults_and_refusals() {
        // (text, expected policy or error fragment)
        let cases: &[(&str, Result<VersionPolicy, &str>)] = &[
            ("", Ok(VersionPolicy::Latest(1))),
            ("version_policy: { all { } }", Ok(VersionPolicy::All)),
            ("version_policy: { specific: { versions: [1, 3] } }", Ok(VersionPolicy::Specific(vec![1, 3]))),
            ("version_policy: { latest: { } }", Ok(VersionPolicy::Latest(1))),
            ("max_batch_sise: 8", Err("max_batch_sise")),
            ("input [ { name: \"x\" data_type: TYPE_FLOAT } ]", Err("TYPE_FLOAT")),
            ("name: fraud", Err("m/config.pbtxt")),
        ];
        for (text, expected) in cases {
            match (parse("m/config.pbtxt", text), expected) {
                (Ok(c), Ok(policy)) => assert_eq!(&c.versions, policy, "{text}"),
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{text}: {e}"),
                (got, _) => panic!("{text}: {got:?}"),
            }
        }
    }
}
