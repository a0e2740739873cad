//! `modelship traffic ...`: a running server's routing, through its admin API.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use comfy_table::Table;
use comfy_table::presets::NOTHING;
use modelship_protocol::ErrorBody;
use modelship_protocol::admin::{ChangeRequest, Revision, RollbackRequest, TrafficStatus};
use modelship_router::{BasisPoints, Change, StickyKey, TrafficTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

    /// One call to `/admin/v1{path}`: `body` sent as JSON (a POST without one sends none), the
    /// answer read as `Resp`. A refusal is the server's error message with its HTTP status.
    pub fn call<Req: Serialize, Resp: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&Req>) -> anyhow::Result<Resp> {
        let url = format!("{}/admin/v1{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let response = match method {
            "GET" => self.agent.get(&url).header("authorization", &auth).call(),
            _ => {
                let post = self.agent.post(&url).header("authorization", &auth).header("user-agent", &actor());
                match body {
                    Some(body) => post.send_json(body),
                    None => post.send_empty(),
                }
            }
        };
        let mut response = response.with_context(|| format!("cannot reach the admin API at {} (is the server running? --admin)", self.base))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if !status.is_success() {
            let message = serde_json::from_str::<ErrorBody>(&text).map_or(text, |e| e.error);
            bail!("{message} (HTTP {})", status.as_u16());
        }
        serde_json::from_str(&text).with_context(|| {
            let shown: String = text.chars().take(200).collect();
            format!("unexpected answer from {method} {path}: {shown}")
        })
    }

    pub fn get<Resp: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Resp> {
        self.call::<(), Resp>("GET", path, None)
    }

    pub fn post<Req: Serialize, Resp: DeserializeOwned>(&self, path: &str, body: &Req) -> anyhow::Result<Resp> {
        self.call("POST", path, Some(body))
    }
}

pub fn actor() -> String {
    ProcessEnv.get("USER").map_or_else(|| "cli".to_owned(), |u| format!("cli:{u}"))
}

/// `--output json`: the answer as the server sent it.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
    let change = |model: &str, change: Change| -> anyhow::Result<Revision> {
        let request = ChangeRequest { change, reason: args.admin.reason.clone(), actor: Some(actor()) };
        admin.post(&format!("/models/{model}/traffic"), &request)
    };
    let revision = match &args.command {
        TrafficCommand::Status { model } => {
            let status: TrafficStatus = admin.get(&format!("/models/{model}/traffic"))?;
            if json_out {
                print_json(&status)?;
            } else {
                print!("{}", render_status(&status));
            }
            return Ok(());
        }
        TrafficCommand::History { model } => {
            let history: Vec<Revision> = admin.get(&format!("/models/{model}/traffic/history"))?;
            if json_out {
                print_json(&history)?;
            } else {
                print!("{}", render_history(&history));
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
                (None, None) => {}
            }
            last.context("nothing to set: give --candidate VERSION and/or --weight SHARE, or a sticky key")?
        }
        TrafficCommand::Promote { model } => change(model, Change::Promote)?,
        TrafficCommand::Abort { model } => change(model, Change::Abort)?,
        TrafficCommand::Shadow { model, version, percent, off } => match (off, version) {
            (true, _) => change(model, Change::StopShadow)?,
            (false, Some(version)) => change(model, Change::Shadow { version: version.clone(), percent: share(percent)? })?,
            (false, None) => bail!("give --version VERSION, or --off"),
        },
        TrafficCommand::Switch { model, version } => change(model, Change::Switch { version: version.clone() })?,
        TrafficCommand::Rollback { model, to_revision } => {
            let request = RollbackRequest { to_revision: *to_revision, reason: args.admin.reason.clone(), actor: Some(actor()) };
            admin.post(&format!("/models/{model}/traffic/rollback"), &request)?
        }
    };
    if json_out {
        print_json(&revision)
    } else {
        println!("revision {}: {}", revision.revision, describe(&revision.traffic));
        Ok(())
    }
}

/// `1.2.0 95% (stable) | 1.3.0 5% (candidate) | shadow 1.4.0 100% | sticky header x-user-id`
fn describe(t: &TrafficTable) -> String {
    let mut parts = Vec::new();
    match &t.candidate {
        Some(c) => {
            let stable = BasisPoints::new(10_000 - u32::from(c.weight.get())).unwrap_or_default();
            parts.push(format!("{} {stable} (stable)", t.stable));
            parts.push(format!("{} {} (candidate)", c.version, c.weight));
        }
        None => parts.push(format!("{} 100% (stable)", t.stable)),
    }
    if let Some(s) = &t.shadow {
        parts.push(format!("shadow {} {}", s.version, s.percent));
    }
    if let Some(key) = &t.sticky {
        parts.push(format!("sticky {}", sticky(key)));
    }
    if let Some(p) = &t.previous {
        parts.push(format!("warm for rollback: {p}"));
    }
    parts.join(" | ")
}

fn sticky(key: &StickyKey) -> String {
    match key {
        StickyKey::Header(h) => format!("header {h}"),
        StickyKey::Field(f) => format!("field {f}"),
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(header.to_vec());
    table
}

fn render_status(s: &TrafficStatus) -> String {
    let mut out = format!("model {}  revision {}  loaded {}\n", s.model, s.revision, s.loaded_versions.join(", "));
    let mut rows = table(&["VERSION", "ROLE", "WEIGHT"]);
    for w in &s.weights {
        rows.add_row(vec![w.version.as_str(), w.role.as_str(), &w.weight]);
    }
    if let Some(sh) = &s.shadow {
        rows.add_row(vec![sh.version.as_str(), "shadow", &sh.percent]);
    }
    out += &format!("{rows}\n");
    if let Some(sh) = &s.shadow {
        let rate = sh.agreement.map_or("-".to_owned(), |r| format!("{:.2}%", r * 100.0));
        let diff = sh.mean_abs_diff.map_or("-".to_owned(), |d| format!("{d:.6}"));
        out += &format!(
            "shadow {}: {} compared, agreement {rate}, mean |diff| {diff}, {} dropped, {} failed\n",
            sh.version, sh.compared, sh.dropped, sh.failed
        );
    }
    if let Some(key) = &s.traffic.sticky {
        out += &format!("sticky: {}\n", sticky(key));
    }
    if let Some(p) = &s.traffic.previous {
        out += &format!("warm for rollback: {p}\n");
    }
    out
}

fn render_history(history: &[Revision]) -> String {
    let mut rows = table(&["REV", "TIME", "BY", "REASON", "ROUTING"]);
    for r in history {
        rows.add_row(vec![r.revision.to_string(), time(r.at_ms), r.actor.clone(), r.reason.clone(), describe(&r.traffic)]);
    }
    format!("{rows}\n")
}

/// Milliseconds since the epoch as an RFC 3339 time, to the second.
pub fn time(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status as the server sent it: 25 % canary, shadow, sticky users.
    const STATUS: &str = r#"{"loaded_versions":["1","2"],"model":"fraud","revision":3,"roles":["stable","candidate","shadow"],"shadow":{"agreed":90,"agreement":0.9,"compared":100,"dropped":2,"failed":0,"mean_abs_diff":0.0125,"percent":"100%","percent_bp":10000,"version":"2"},"traffic":{"candidate":{"version":"2","weight":2500},"shadow":{"percent":10000,"version":"2"},"stable":"1","sticky":{"header":"x-user-id"}},"weights":[{"role":"stable","version":"1","weight":"75%","weight_bp":7500},{"role":"candidate","version":"2","weight":"25%","weight_bp":2500}]}"#;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect()
    }

    #[test]
    fn the_admin_api_is_the_flag_else_modelship_admin_url_else_the_default() {
        use std::collections::BTreeMap;
        let base = |flag: Option<&str>, url: Option<&str>| {
            let mut env = BTreeMap::from([("MODELSHIP_ADMIN_TOKEN", "t")]);
            if let Some(url) = url {
                env.insert("MODELSHIP_ADMIN_URL", url);
            }
            Admin::connect(flag.map(str::to_owned), None, &env).unwrap().base
        };
        assert_eq!(base(None, None), "http://127.0.0.1:8001");
        // What the generated containers set, so `docker exec ... modelship traffic` finds the server.
        assert_eq!(base(None, Some("http://127.0.0.1:18001/")), "http://127.0.0.1:18001");
        assert_eq!(base(Some("http://10.0.0.5:9001"), Some("http://127.0.0.1:18001")), "http://10.0.0.5:9001");
    }

    #[test]
    fn status_reads_as_a_table_of_versions() {
        let status: TrafficStatus = serde_json::from_str(STATUS).unwrap();
        assert_eq!(
            lines(&render_status(&status)),
            [
                "model fraud revision 3 loaded 1, 2",
                "VERSION ROLE WEIGHT",
                "1 stable 75%",
                "2 candidate 25%",
                "2 shadow 100%",
                "shadow 2: 100 compared, agreement 90.00%, mean |diff| 0.012500, 2 dropped, 0 failed",
                "sticky: header x-user-id",
            ]
        );
    }

    #[test]
    fn tables_read_as_one_line_each() {
        let table = |json: &str| describe(&serde_json::from_str(json).unwrap());
        let cases = [
            (r#"{"stable":"1"}"#, "1 100% (stable)"),
            (r#"{"stable":"1","candidate":{"version":"2","weight":2500}}"#, "1 75% (stable) | 2 25% (candidate)"),
            (
                r#"{"stable":"1","candidate":{"version":"2","weight":1},"shadow":{"version":"3","percent":10000},"sticky":{"field":"user"}}"#,
                "1 99.99% (stable) | 2 0.01% (candidate) | shadow 3 100% | sticky field user",
            ),
            (r#"{"stable":"2","previous":"1"}"#, "2 100% (stable) | warm for rollback: 1"),
        ];
        for (json, expected) in cases {
            assert_eq!(table(json), expected, "{json}");
        }
        let history: Vec<Revision> = serde_json::from_str(
            r#"[{"model":"fraud","revision":0,"at_ms":1796156088675,"actor":"server","reason":"initial routing","change":null,"traffic":{"stable":"1"}}]"#,
        )
        .unwrap();
        assert_eq!(lines(&render_history(&history))[1], "0 2026-12-01T20:14:48Z server initial routing 1 100% (stable)");
    }
}
