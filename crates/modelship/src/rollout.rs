//! `modelship rollout ...`: automatic rollouts on a running server, through its admin API.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::cli::{OutputFormat, RolloutArgs, RolloutCommand};
use crate::config::ProcessEnv;
use crate::traffic::{Admin, actor};

pub fn main(args: RolloutArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a spec file (YAML or JSON), accepting the design's `rollout:` wrapper and its `model:` key.
fn read_spec(path: &std::path::Path, to: Option<String>) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the rollout spec {}", path.display()))?;
    let mut spec: Value = serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not YAML or JSON", path.display()))?;
    if let Some(inner) = spec.get("rollout").cloned() {
        spec = inner;
    }
    let object = spec.as_object_mut().with_context(|| format!("{}: a rollout spec is a mapping", path.display()))?;
    object.remove("model");
    if let Some(to) = to {
        object.insert("to".to_owned(), Value::String(to));
    }
    // YAML reads `to: 3` or `to: 1.3` as a number; versions are strings.
    if let Some(n) = object.get("to").filter(|v| v.is_number()).map(ToString::to_string) {
        object.insert("to".to_owned(), Value::String(n));
    }
    if !object.contains_key("to") {
        anyhow::bail!("no version to roll out: pass --to VERSION or set `to:` in {}", path.display());
    }
    Ok(spec)
}

fn run(args: RolloutArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.admin.admin.clone(), args.admin.token_file.clone(), &ProcessEnv)?;
    let json_out = args.admin.output == OutputFormat::Json;
    let path = |model: &str, rest: &str| format!("/models/{model}/rollout{rest}");
    let result = match &args.command {
        RolloutCommand::Start { model, to, spec } => {
            let spec = read_spec(spec, to.clone())?;
            admin.call("POST", &path(model, ""), Some(json!({"spec": spec, "actor": actor()})))?
        }
        RolloutCommand::Status { model, watch } => {
            let live = *watch && std::io::stdout().is_terminal() && !json_out;
            loop {
                let status = admin.call("GET", &path(model, ""), None)?;
                if live {
                    print!("\x1b[2J\x1b[H");
                }
                show(&status, json_out);
                let done = status.get("phase").and_then(|p| p.get("phase")).and_then(Value::as_str).is_none_or(|p| p == "promoted" || p == "rolled_back");
                if !watch || done {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        RolloutCommand::Approve { model } => admin.call("POST", &path(model, "/approve"), Some(json!({"reason": args.admin.reason})))?,
        RolloutCommand::Pause { model } => admin.call("POST", &path(model, "/pause"), Some(json!({"reason": args.admin.reason})))?,
        RolloutCommand::Resume { model } => admin.call("POST", &path(model, "/resume"), Some(json!({"reason": args.admin.reason})))?,
        RolloutCommand::Abort { model } => admin.call("POST", &path(model, "/abort"), Some(json!({"reason": args.admin.reason})))?,
        RolloutCommand::History { model } => {
            let history = admin.call("GET", &path(model, "/history"), None)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                for d in history.as_array().into_iter().flatten() {
                    let at = d["at"].as_u64().map(|ms| humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()).unwrap_or_default();
                    println!("{at}  rollout {}  {}  {}", d["rollout"], d["action"]["action"].as_str().unwrap_or("?"), d["reason"].as_str().unwrap_or(""));
                }
            }
            return Ok(());
        }
    };
    show(&result, json_out);
    Ok(())
}

fn show(status: &Value, json_out: bool) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(status).unwrap_or_default());
        return;
    }
    if status.get("rollout").is_some_and(Value::is_null) {
        println!("no rollout for model {}", status["model"].as_str().unwrap_or("?"));
        return;
    }
    let phase = &status["phase"];
    let why = phase.get("reason").and_then(Value::as_str).map(|r| format!(" ({r})")).unwrap_or_default();
    println!(
        "rollout {}: {} -> {}  {}{why}  step {}/{} {}  failures {} in a row, {} in all",
        status["rollout"], status["stable"].as_str().unwrap_or("?"), status["to"].as_str().unwrap_or("?"),
        phase["phase"].as_str().unwrap_or("?"), status["step"], status["steps"], status["current_step"],
        status["consecutive_failures"], status["total_failures"]
    );
    for c in status["checks"].as_array().into_iter().flatten() {
        let r = &c["result"];
        let value = r.get("value").and_then(Value::as_f64).map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".to_owned());
        let reason = r.get("reason").and_then(Value::as_str).unwrap_or("");
        println!("  {:<11} {:<13} {value:>10}  {reason}", c["check"].as_str().unwrap_or("?"), r["verdict"].as_str().unwrap_or("?"));
    }
}
