//! Log output: one JSON object per line (or human text) on standard error.
//!
//! The JSON shape is flat, `{"timestamp", "level", "target", "message", ...fields}`, plus the
//! static fields of the deployment (`pod_name`, `pod_namespace`) on every line, so log pipelines
//! need no parsing rules.

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogConfig;

pub fn init(config: &LogConfig) {
    let level = LevelFilter::from_level(config.level);
    // ONNX Runtime narrates every session it creates at info level; its warnings and errors are
    // what an operator needs, unless they asked for debug output.
    let runtime = if level >= LevelFilter::DEBUG { level } else { level.min(LevelFilter::WARN) };
    let filter = Targets::new().with_default(level).with_target("ort", runtime);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    ));
    let result = if config.json {
        let layer = layer.event_format(JsonLines { static_fields: config.static_fields.clone() });
        tracing_subscriber::registry().with(layer.with_filter(filter)).try_init()
    } else {
        tracing_subscriber::registry().with(layer.with_target(false).with_filter(filter)).try_init()
    };
    // A second init (tests calling in twice) keeps the first subscriber.
    let _ = result;
}

/// Colour codes only for a person at a terminal: in a file or a pipe they are noise that log
/// pipelines must strip. `NO_COLOR` (any non-empty value, <https://no-color.org>) turns them off
/// on a terminal too.
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

struct JsonLines {
    static_fields: BTreeMap<&'static str, String>,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut timestamp = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut object = Map::new();
        object.insert("timestamp".to_owned(), Value::String(timestamp));
        object.insert("level".to_owned(), Value::String(meta.level().as_str().to_owned()));
        object.insert("target".to_owned(), Value::String(meta.target().to_owned()));
        for (key, value) in &self.static_fields {
            object.insert((*key).to_owned(), Value::String(value.clone()));
        }
        event.record(&mut JsonVisitor(&mut object));
        writeln!(writer, "{}", Value::Object(object))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        for (terminal, no_color, expected) in [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ] {
            assert_eq!(super::colour(terminal, no_color.map(OsStr::new)), expected, "terminal {terminal}, NO_COLOR {no_color:?}");
        }
    }
}
