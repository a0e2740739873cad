//! `modelship traffic ...`: a running server's routing, through its admin API.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use comfy_table::presets::NOTHING;
use comfy_table::Table;
use modelship_router::{BasisPoints, Change, StickyKey};
use serde_json::{Value, json};

use crate::cli::{OutputFormat, TrafficArgs, TrafficCommand};
use crate::config::{Env, ProcessEnv};

pub fn main(args: TrafficArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub struct Admin {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Admin {
    pub fn connect(admin: Option<String>, token_file: Option<std::path::PathBuf>, env: &dyn Env) -> anyhow::Result<Self> {
        let base = admin.or_else(|| env.get("MODELSHIP_ADMIN_URL")).unwrap_or_else(|| "http://127.0.0.1:8001".to_owned());
        let token = match env.get("MODELSHIP_ADMIN_TOKEN") {
            Some(t) => t,
            None => {
                let file = token_file.unwrap_or_else(|| crate::registry_config::state_dir(env).join("admin-token"));
                std::fs::read_to_string(&file)
                    .with_context(|| format!("no admin token: set MODELSHIP_ADMIN_TOKEN or pass --token-file (tried {})", file.display()))?
                    .trim()
                    .to_owned()
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Ok(Admin { base: base.trim_end_matches('/').to_owned(), token, agent })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("authorization", &auth)
                .header("user-agent", &actor())
                .send_json(body.unwrap_or(json!({}))),
        };
        let mut response = response.with_context(|| format!("cannot reach the admin API at {} (is the server running? --admin)", self.base))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let message = value.get("error").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| value.to_string());
            bail!("{message} (HTTP {})", status.as_u16())
        }
    }
}

pub fn actor() -> String {
    ProcessEnv.get("USER").map_or_else(|| "cli".to_owned(), |u| format!("cli:{u}"))
}

/// `5%`, `0.25%`, `250bp`, or a bare number of percent (`--percent 100`).
fn share(s: &str) -> anyhow::Result<BasisPoints> {
    let s = s.trim();
    let text = if s.parse::<f64>().is_ok() { format!("{s}%") } else { s.to_owned() };
    text.parse::<BasisPoints>().map_err(|e| anyhow::anyhow!(e))
}

fn run(args: TrafficArgs) -> anyhow::Result<()> {
    let admin = Admin::connect(args.admin.admin.clone(), args.admin.token_file.clone(), &ProcessEnv)?;
    let json_out = args.admin.output == OutputFormat::Json;
    let change = |model: &str, change: Change| -> anyhow::Result<Value> {
        admin.call("POST", &format!("/models/{model}/traffic"), Some(json!({"change": change, "reason": args.admin.reason, "actor": actor()})))
    };
    let result = match &args.command {
        TrafficCommand::Status { model } => {
            let status = admin.call("GET", &format!("/models/{model}/traffic"), None)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            return Ok(());
        }
        TrafficCommand::History { model } => {
            let history = admin.call("GET", &format!("/models/{model}/traffic/history"), None)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                print_history(&history);
            }
            return Ok(());
        }
        TrafficCommand::Set { model, candidate, weight, sticky_header, sticky_field } => {
            let mut last = None;
            if let Some(key) = sticky_header.clone().map(StickyKey::Header).or_else(|| sticky_field.clone().map(StickyKey::Field)) {
                last = Some(change(model, Change::Sticky { key: Some(key) })?);
            }
            match (candidate, weight) {
                (Some(version), weight) => {
                    let weight = weight.as_deref().map(share).transpose()?.unwrap_or(BasisPoints::ZERO);
                    last = Some(change(model, Change::Canary { version: version.clone(), weight })?);
                }
                (None, Some(weight)) => last = Some(change(model, Change::Weight { weight: share(weight)? })?),
                (None, None) if last.is_none() => bail!("nothing to set: give --candidate VERSION and/or --weight SHARE, or a sticky key"),
                (None, None) => {}
            }
            last.unwrap_or(Value::Null)
        }
        TrafficCommand::Promote { model } => change(model, Change::Promote)?,
        TrafficCommand::Abort { model } => change(model, Change::Abort)?,
        TrafficCommand::Shadow { model, version, percent, off } => match (off, version) {
            (true, _) => change(model, Change::StopShadow)?,
            (false, Some(version)) => change(model, Change::Shadow { version: version.clone(), percent: share(percent)? })?,
            (false, None) => bail!("give --version VERSION, or --off"),
        },
        TrafficCommand::Switch { model, version } => change(model, Change::Switch { version: version.clone() })?,
        TrafficCommand::Rollback { model, to_revision } => admin.call(
            "POST",
            &format!("/models/{model}/traffic/rollback"),
            Some(json!({"to_revision": to_revision, "reason": args.admin.reason, "actor": actor()})),
        )?,
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("revision {}: {}", result["revision"], describe(&result["traffic"]));
    }
    Ok(())
}

/// `1.2.0 95% | 1.3.0 5% (candidate) | shadow 1.4.0 100% | sticky header x-user-id`
fn describe(t: &Value) -> String {
    let mut parts = Vec::new();
    match t.get("candidate").filter(|c| !c.is_null()) {
        Some(c) => {
            let w = u32::try_from(c["weight"].as_u64().unwrap_or(0)).unwrap_or(0);
            let stable = BasisPoints::new(10_000 - w.min(10_000)).unwrap_or_default();
            parts.push(format!("{} {stable} (stable)", t["stable"].as_str().unwrap_or("?")));
            parts.push(format!("{} {} (candidate)", c["version"].as_str().unwrap_or("?"), BasisPoints::new(w).unwrap_or_default()));
        }
        None => parts.push(format!("{} 100% (stable)", t["stable"].as_str().unwrap_or("?"))),
    }
    if let Some(s) = t.get("shadow").filter(|s| !s.is_null()) {
        let p = BasisPoints::new(u32::try_from(s["percent"].as_u64().unwrap_or(0)).unwrap_or(0)).unwrap_or_default();
        parts.push(format!("shadow {} {p}", s["version"].as_str().unwrap_or("?")));
    }
    if let Some(k) = t.get("sticky").filter(|s| !s.is_null()) {
        parts.push(format!("sticky {}", k.to_string().replace(['{', '}', '"'], "").replace(':', " ")));
    }
    if let Some(p) = t.get("previous").and_then(Value::as_str) {
        parts.push(format!("warm for rollback: {p}"));
    }
    parts.join(" | ")
}

fn print_status(s: &Value) {
    println!("model {}  revision {}  loaded {}", s["model"].as_str().unwrap_or("?"), s["revision"], s["loaded_versions"]);
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(vec!["VERSION", "ROLE", "WEIGHT"]);
    for w in s["weights"].as_array().into_iter().flatten() {
        table.add_row(vec![w["version"].as_str().unwrap_or("?").to_owned(), w["role"].as_str().unwrap_or("?").to_owned(), w["weight"].as_str().unwrap_or("?").to_owned()]);
    }
    if let Some(sh) = s.get("shadow").filter(|v| !v.is_null()) {
        table.add_row(vec![sh["version"].as_str().unwrap_or("?").to_owned(), "shadow".to_owned(), sh["percent"].as_str().unwrap_or("?").to_owned()]);
    }
    println!("{table}");
    if let Some(sh) = s.get("shadow").filter(|v| !v.is_null()) {
        let rate = sh["agreement"].as_f64().map_or("-".to_owned(), |r| format!("{:.2}%", r * 100.0));
        let diff = sh["mean_abs_diff"].as_f64().map_or("-".to_owned(), |d| format!("{d:.6}"));
        println!(
            "shadow {}: {} compared, agreement {rate}, mean |diff| {diff}, {} dropped, {} failed",
            sh["version"].as_str().unwrap_or("?"), sh["compared"], sh["dropped"], sh["failed"]
        );
    }
    if let Some(sticky) = s["traffic"].get("sticky").filter(|v| !v.is_null()) {
        println!("sticky: {sticky}");
    }
}

fn print_history(h: &Value) {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(vec!["REV", "TIME", "BY", "REASON", "ROUTING"]);
    for r in h.as_array().into_iter().flatten() {
        let at = r["at_ms"].as_u64().map(|ms| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()).unwrap_or_default();
        table.add_row(vec![
            r["revision"].to_string(),
            at,
            r["actor"].as_str().unwrap_or("").to_owned(),
            r["reason"].as_str().unwrap_or("").to_owned(),
            describe(&r["traffic"]),
        ]);
    }
    println!("{table}");
}
