//! `modelship rollout ...`: automatic rollouts on a running server, through its admin API.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use comfy_table::Table;
use comfy_table::presets::NOTHING;
use modelship_protocol::admin::{CommandRequest, RolloutCommand, RolloutDecision, RolloutState, RolloutStatus, StartRequest};
use modelship_rollout::check::Verdict;
use modelship_rollout::engine::{Action, Phase};
use modelship_rollout::spec::{RolloutSpec, Span, Step};
use modelship_server::CANARY_HEADER;
use serde_json::Value;

use crate::cli::{self, OutputFormat, RolloutArgs};
use crate::config::ProcessEnv;
use crate::traffic::{Admin, actor, print_json, time};

/// `rollout wait`: the rollout rolled back.
pub const EXIT_ROLLED_BACK: u8 = 3;
/// `rollout wait --timeout`: the rollout was still running.
pub const EXIT_TIMED_OUT: u8 = 4;

pub fn main(args: RolloutArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads a spec file (YAML or JSON; `-` is standard input), accepting the design's `rollout:`
/// wrapper and its `model:` key.
pub(crate) fn read_spec(path: &std::path::Path, to: Option<String>) -> anyhow::Result<RolloutSpec> {
    let text = if path == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the rollout spec from standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read the rollout spec {}", path.display()))?
    };
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
    serde_json::from_value(spec).with_context(|| format!("{} is not a rollout spec", path.display()))
}

fn run(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let admin = Admin::connect(args.admin.admin.clone(), args.admin.token_file.clone(), &ProcessEnv)?;
    let json_out = args.admin.output == OutputFormat::Json;
    let path = |model: &str, rest: &str| format!("/models/{model}/rollout{rest}");
    let command = |model: &str, command: RolloutCommand| -> anyhow::Result<RolloutStatus> {
        admin.post(&path(model, &format!("/{command}")), &CommandRequest { reason: args.admin.reason.clone() })
    };
    let timeout = |t: &Option<String>| -> anyhow::Result<Option<Duration>> {
        t.as_deref().map(|t| humantime::parse_duration(t).with_context(|| format!("--timeout {t}: give a duration like 45m or 2h"))).transpose()
    };
    let status = match &args.command {
        cli::RolloutCommand::Start { model, to, spec, wait, timeout: limit, force } => {
            let limit = timeout(limit)?;
            let spec = read_spec(spec, to.clone())?;
            let started: RolloutStatus = admin.post(&path(model, ""), &StartRequest { spec, actor: Some(actor()), force: *force })?;
            if !*wait {
                show(&started, json_out)?;
                return Ok(ExitCode::SUCCESS);
            }
            return follow(&admin, model, started.rollout.map(|r| r.id), limit, json_out);
        }
        cli::RolloutCommand::Wait { model, timeout: limit } => return follow(&admin, model, None, timeout(limit)?, json_out),
        cli::RolloutCommand::Status { model, watch } => {
            let live = *watch && std::io::stdout().is_terminal() && !json_out;
            loop {
                let status: RolloutStatus = admin.get(&path(model, ""))?;
                if live {
                    print!("\x1b[2J\x1b[H");
                }
                show(&status, json_out)?;
                let done = status.rollout.as_ref().is_none_or(|r| r.phase.is_done());
                if !watch || done {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        cli::RolloutCommand::Approve { model } => command(model, RolloutCommand::Approve)?,
        cli::RolloutCommand::Pause { model } => command(model, RolloutCommand::Pause)?,
        cli::RolloutCommand::Resume { model } => command(model, RolloutCommand::Resume)?,
        cli::RolloutCommand::Abort { model } => command(model, RolloutCommand::Abort)?,
        cli::RolloutCommand::History { model } => {
            let history: Vec<RolloutDecision> = admin.get(&path(model, "/history"))?;
            if json_out {
                print_json(&history)?;
            } else {
                print!("{}", render_history(&history));
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    show(&status, json_out)?;
    Ok(ExitCode::SUCCESS)
}

/// Polls whose failure (a server restarting, a port-forward reconnecting) is waited out.
const UNREACHABLE_POLLS: u32 = 30;

/// Follows rollout `id` of `model` (the current one when `None`) until it ends: 0 when it
/// promoted, [`EXIT_ROLLED_BACK`], or [`EXIT_TIMED_OUT`] after `timeout`. On a terminal it
/// redraws the status and the latest decisions; otherwise (CI) it prints a line per decision and
/// per change of step, phase or verdicts, and one a minute while nothing changes. With
/// `--output json` the lines go to standard error and the final status is the JSON on standard
/// output.
fn follow(admin: &Admin, model: &str, id: Option<i64>, timeout: Option<Duration>, json_out: bool) -> anyhow::Result<ExitCode> {
    let live = std::io::stdout().is_terminal() && !json_out;
    let mut lines: Box<dyn Write> = if json_out { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let started = Instant::now();
    let mut id = id;
    let (mut printed, mut unreachable) = (0usize, 0u32);
    let (mut last_state, mut last_line) = (String::new(), Instant::now());
    loop {
        let polled = admin.get::<RolloutStatus>(&format!("/models/{model}/rollout")).and_then(|s| Ok((s, admin.get::<Vec<RolloutDecision>>(&format!("/models/{model}/rollout/history"))?)));
        let (status, history) = match polled {
            Ok(answer) => {
                unreachable = 0;
                answer
            }
            // The first poll fails at once (a wrong address, an unknown model); later ones wait
            // out a server restarting or a port-forward reconnecting.
            Err(e) if id.is_some() && unreachable < UNREACHABLE_POLLS => {
                unreachable += 1;
                if unreachable == 1 {
                    writeln!(lines, "{} cannot reach the server ({e:#}); retrying for {UNREACHABLE_POLLS} s", time(now_ms() as i64))?;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(e.context(format!("lost the server for {UNREACHABLE_POLLS} s while waiting on the rollout of {model}"))),
        };
        let Some(r) = &status.rollout else {
            bail!("no rollout for model {model}: start one with `modelship rollout start {model} --spec FILE --wait`");
        };
        let id = *id.get_or_insert(r.id);
        if r.id != id {
            bail!("rollout {id} of {model} was replaced by rollout {} (started by someone else); follow it with `modelship rollout wait {model}`", r.id);
        }
        let mine: Vec<&RolloutDecision> = history.iter().filter(|d| d.rollout == id).collect();
        if live {
            print!("\x1b[2J\x1b[H{}", render_status(&status, now_ms()));
            let recent: Vec<RolloutDecision> = mine[mine.len().saturating_sub(8)..].iter().map(|d| (*d).clone()).collect();
            print!("{}", render_history(&recent));
            std::io::stdout().flush()?;
        } else {
            for d in &mine[printed.min(mine.len())..] {
                writeln!(lines, "{} {}: {}", time(i64::try_from(d.decision.at).unwrap_or(i64::MAX)), describe_action(&d.decision.action), d.decision.reason)?;
            }
            let (key, line) = progress(model, r);
            if key != last_state || last_line.elapsed() >= Duration::from_secs(60) {
                writeln!(lines, "{} {line}", time(now_ms() as i64))?;
                (last_state, last_line) = (key, Instant::now());
            }
        }
        printed = mine.len();
        if r.phase.is_done() {
            if json_out {
                print_json(&status)?;
            }
            let promoted = r.phase == Phase::Promoted;
            writeln!(lines, "rollout {id} of {model} {}", phase(model, r))?;
            return Ok(if promoted { ExitCode::SUCCESS } else { ExitCode::from(EXIT_ROLLED_BACK) });
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            writeln!(lines, "stopped waiting after {}: rollout {id} of {model} is still {}", span(limit), phase(model, r))?;
            if json_out {
                print_json(&status)?;
            }
            return Ok(ExitCode::from(EXIT_TIMED_OUT));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One line of where a rollout is, and what of it counts as a change (the step, the phase and
/// each check's verdict, not values or reasons, which move every interval):
/// `rollout 1 of fraud 1 -> 2: step 1/2 weight 50% for 2s, progressing; error_rate pass,
/// latency inconclusive (12 latency samples, fewer than 20)`.
fn progress(model: &str, r: &RolloutState) -> (String, String) {
    let mut line = format!("rollout {} of {model} {} -> {}", r.id, r.stable, r.to);
    if let Some(step) = &r.current_step {
        line += &format!(": step {}/{} {}", r.step, r.steps, describe_step(step));
        if r.revision.is_some() && r.settled_ms.is_none() {
            line += " (waiting for every replica to apply it)";
        }
    }
    line += &format!(", {}", phase(model, r));
    let mut key = line.clone();
    if !r.checks.is_empty() {
        let checks: Vec<(String, String)> = r
            .checks
            .iter()
            .map(|c| {
                let (name, _, reason) = verdict(&c.result);
                let short = format!("{} {name}", c.check);
                // What holds or ends a step says why; a passing or proven check's interval, which
                // moves every interval, is for `rollout status`.
                let quiet = reason.is_empty() || matches!(c.result, Verdict::Pass { .. } | Verdict::Proven { .. });
                let long = if quiet { short.clone() } else { format!("{short} ({reason})") };
                (short, long)
            })
            .collect();
        key += &checks.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ");
        line += &format!("; {}", checks.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(", "));
    }
    (key, line)
}

fn show(status: &RolloutStatus, json_out: bool) -> anyhow::Result<()> {
    if json_out {
        print_json(status)
    } else {
        print!("{}", render_status(status, now_ms()));
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The status for people, as of `now` (for how long the step has run):
///
/// ```text
/// rollout 3 of fraud: 1 -> 2
/// phase     progressing
/// step      2/4: weight 25% for 5m (1m 20s held)
/// failures  0 in a row, 1 in all
/// CHECK       VERDICT              VALUE  REASON
/// error_rate  pass                0.0000
/// ```
fn render_status(status: &RolloutStatus, now: u64) -> String {
    let Some(r) = &status.rollout else {
        return format!("no rollout for model {}\n", status.model);
    };
    let mut out = format!("rollout {} of {}: {} -> {}\n", r.id, status.model, r.stable, r.to);
    out += &format!("phase     {}\n", phase(&status.model, r));
    if let Some(step) = &r.current_step {
        let running = match r.phase {
            // The hold counts from when every replica routes by the step (its clock restarts
            // then): before that no clock is shown, so it never runs backwards.
            Phase::Progressing if r.settled_ms.is_some() => {
                format!(" ({} held)", span(Duration::from_secs(now.saturating_sub(r.step_started_ms) / 1000)))
            }
            _ => String::new(),
        };
        out += &format!("step      {}/{}: {}{running}\n", r.step, r.steps, describe_step(step));
        if let (Some(revision), None) = (r.revision, r.settled_ms) {
            out += &format!("routing   revision {revision}, waiting for every replica to apply it (the step's window starts then)\n");
        }
    }
    if let Some(leader) = &r.leader {
        out += &format!("leader    {leader}\n");
    }
    out += &format!("failures  {} in a row, {} in all\n", r.consecutive_failures, r.total_failures);
    if !r.checks.is_empty() {
        let width = r.checks.iter().map(|c| c.check.len()).max().unwrap_or(0).max("CHECK".len());
        out += &format!("{:<width$}  {:<VERDICT_WIDTH$}  {:>10}  REASON\n", "CHECK", "VERDICT", "VALUE");
        for c in &r.checks {
            let (name, value, reason) = verdict(&c.result);
            let value = value.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
            let line = format!("{:<width$}  {name:<VERDICT_WIDTH$}  {value:>10}  {reason}", c.check);
            out += line.trim_end();
            out.push('\n');
        }
    }
    if !r.notifications.is_empty() {
        let mut rows = Table::new();
        rows.load_style(NOTHING).set_header(vec!["NOTIFIED", "EVENT", "SINK", "RESULT", "ATTEMPTS", "DETAIL", "BY"]);
        for n in &r.notifications {
            let at = time(i64::try_from(n.at_ms).unwrap_or(i64::MAX));
            rows.add_row(vec![at, n.kind.clone(), n.sink.clone(), n.result.clone(), n.attempts.to_string(), n.detail.clone(), n.replica.clone()]);
        }
        out += &format!("notifications (latest first)\n{rows}\n");
    }
    out
}

/// Wide enough for every verdict's name, `not_applicable` included.
const VERDICT_WIDTH: usize = 14;

/// A verdict's name, value and reason.
fn verdict(v: &Verdict) -> (&'static str, Option<f64>, &str) {
    match v {
        Verdict::Pass { value, reason } => ("pass", Some(*value), reason.as_deref().unwrap_or_default()),
        Verdict::Proven { value, reason } => ("proven", Some(*value), reason),
        Verdict::Fail { value, reason } => ("fail", Some(*value), reason),
        Verdict::Inconclusive { reason } => ("inconclusive", None, reason),
        Verdict::NotApplicable { reason } => ("not_applicable", None, reason),
    }
}

/// The phase in words, with what it waits for or why it ended.
fn phase(model: &str, r: &RolloutState) -> String {
    match &r.phase {
        Phase::Progressing => "progressing".to_owned(),
        Phase::AwaitingApproval => format!("awaiting approval (modelship rollout approve {model})"),
        Phase::AwaitingWebhook => "awaiting the webhook's answer".to_owned(),
        Phase::Paused { reason } => format!("paused: {reason} (modelship rollout resume {model})"),
        Phase::Promoted => format!("promoted to {} after {} step{}", r.to, r.steps, if r.steps == 1 { "" } else { "s" }),
        Phase::RolledBack { reason } => format!("rolled back at step {}/{}: {reason}", r.step, r.steps),
    }
}

/// `weight 25% for 5m`, `shadow 100% for 10m`, `header (x-canary) for 2m`, `approval`,
/// `webhook https://...`; a step held for no time has no `for`.
fn describe_step(step: &Step) -> String {
    let hold = |h: &Span| if h.0.is_zero() { String::new() } else { format!(" for {}", span(h.0)) };
    match step {
        Step::Shadow { percent, hold: h } => format!("shadow {}{}", percent.0, hold(h)),
        Step::Header { hold: h } => format!("header ({CANARY_HEADER}){}", hold(h)),
        Step::Weight { weight, hold: h } => format!("weight {}{}", weight.0, hold(h)),
        Step::Experiment { weight, hold: h, no_winner } => {
            let otherwise = serde_json::to_value(no_winner).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            format!("experiment {}{}, no winner: {otherwise}", weight.0, hold(h))
        }
        Step::Approve {} => "approval".to_owned(),
        Step::Webhook { url } => format!("webhook {url}"),
    }
}

fn span(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `route 25%, canary header`, `route 0%, shadow 100%`, `promote`, `call https://...`
fn describe_action(action: &Action) -> String {
    match action {
        Action::Route { weight, shadow, header } => {
            let mut parts = vec![format!("route {weight}")];
            if shadow.get() > 0 {
                parts.push(format!("shadow {shadow}"));
            }
            if *header {
                parts.push("canary header".to_owned());
            }
            parts.join(", ")
        }
        Action::Promote => "promote".to_owned(),
        Action::Rollback => "rollback".to_owned(),
        Action::Pause => "pause".to_owned(),
        Action::CallWebhook { url } => format!("call {url}"),
    }
}

fn render_history(history: &[RolloutDecision]) -> String {
    let mut rows = Table::new();
    rows.load_style(NOTHING).set_header(vec!["TIME", "ROLLOUT", "ACTION", "REASON"]);
    for d in history {
        let at = time(i64::try_from(d.decision.at).unwrap_or(i64::MAX));
        rows.add_row(vec![at, d.rollout.to_string(), describe_action(&d.decision.action), d.decision.reason.clone()]);
    }
    format!("{rows}\n")
}

#[cfg(test)]
mod tests {
    use modelship_protocol::admin::CheckResult;

    use super::*;

    fn state(phase: Phase, step: usize, current_step: Option<&str>, checks: Vec<(&str, Verdict)>) -> RolloutStatus {
        RolloutStatus {
            model: "fraud".to_owned(),
            rollout: Some(RolloutState {
                id: 3,
                to: "2".to_owned(),
                stable: "1".to_owned(),
                phase,
                step,
                steps: 4,
                current_step: current_step.map(|s| serde_json::from_str(s).unwrap()),
                started_ms: 1_000,
                step_started_ms: 1_000,
                consecutive_failures: 0,
                total_failures: 1,
                checks: checks.into_iter().map(|(check, result)| CheckResult { check: check.to_owned(), result }).collect(),
                interval_ms: 1000,
                revision: None,
                settled_ms: Some(1_000),
                leader: None,
                notifications: Vec::new(),
            }),
        }
    }

    fn reason(r: &str) -> String {
        r.to_owned()
    }

    /// A step whose routing is not yet applied everywhere shows no clock: the hold starts when it
    /// is, so a clock shown before would jump back.
    #[test]
    fn a_step_shows_its_clock_only_once_its_routing_is_applied() {
        let mut status = state(Phase::Progressing, 2, Some(r#"{"weight": {"weight": "25%", "hold": "5m"}}"#), vec![]);
        let r = status.rollout.as_mut().unwrap();
        (r.settled_ms, r.revision) = (None, Some(4));
        let text = render_status(&status, 10_000);
        assert!(text.contains("step      2/4: weight 25% for 5m\nrouting   revision 4, waiting"), "{text}");
        let r = status.rollout.as_mut().unwrap();
        (r.settled_ms, r.step_started_ms) = (Some(9_000), 9_000);
        assert!(render_status(&status, 10_000).contains("for 5m (1s held)"));
    }

    /// Each status as people read it, 81 s after its step started.
    #[test]
    fn statuses_read_as_sentences() {
        let none = RolloutStatus { model: "fraud".to_owned(), rollout: None };
        let cases: Vec<(RolloutStatus, &str)> = vec![
            (none, "no rollout for model fraud\n"),
            (
                state(
                    Phase::Progressing,
                    2,
                    Some(r#"{"weight": {"weight": "25%", "hold": "5m"}}"#),
                    vec![
                        ("error_rate", Verdict::Pass { value: 0.0012, reason: None }),
                        ("latency", Verdict::Inconclusive { reason: reason("12 latency samples, fewer than 100") }),
                        ("prometheus", Verdict::Fail { value: 3.0, reason: reason("3 is above 0") }),
                        ("agreement", Verdict::NotApplicable { reason: reason("only shadow steps compare answers") }),
                    ],
                ),
                "rollout 3 of fraud: 1 -> 2\n\
                 phase     progressing\n\
                 step      2/4: weight 25% for 5m (1m 21s held)\n\
                 failures  0 in a row, 1 in all\n\
                 CHECK       VERDICT              VALUE  REASON\n\
                 error_rate  pass                0.0012\n\
                 latency     inconclusive             -  12 latency samples, fewer than 100\n\
                 prometheus  fail                3.0000  3 is above 0\n\
                 agreement   not_applicable           -  only shadow steps compare answers\n",
            ),
            (
                state(Phase::Progressing, 1, Some(r#"{"shadow": {"percent": "100%", "hold": "10m"}}"#), vec![]),
                "rollout 3 of fraud: 1 -> 2\nphase     progressing\nstep      1/4: shadow 100% for 10m (1m 21s held)\nfailures  0 in a row, 1 in all\n",
            ),
            (
                state(Phase::Progressing, 1, Some(r#"{"header": {"hold": "2m"}}"#), vec![]),
                "rollout 3 of fraud: 1 -> 2\nphase     progressing\nstep      1/4: header (x-canary) for 2m (1m 21s held)\nfailures  0 in a row, 1 in all\n",
            ),
            (
                state(Phase::AwaitingApproval, 3, Some(r#"{"approve": {}}"#), vec![]),
                "rollout 3 of fraud: 1 -> 2\nphase     awaiting approval (modelship rollout approve fraud)\nstep      3/4: approval\nfailures  0 in a row, 1 in all\n",
            ),
            (
                state(Phase::AwaitingWebhook, 4, Some(r#"{"webhook": {"url": "https://gate.example/go"}}"#), vec![]),
                "rollout 3 of fraud: 1 -> 2\nphase     awaiting the webhook's answer\nstep      4/4: webhook https://gate.example/go\nfailures  0 in a row, 1 in all\n",
            ),
            (
                state(Phase::Paused { reason: reason("by an operator") }, 2, Some(r#"{"weight": {"weight": "100%", "hold": "0s"}}"#), vec![]),
                "rollout 3 of fraud: 1 -> 2\nphase     paused: by an operator (modelship rollout resume fraud)\nstep      2/4: weight 100%\nfailures  0 in a row, 1 in all\n",
            ),
            (
                state(Phase::Promoted, 4, None, vec![]),
                "rollout 3 of fraud: 1 -> 2\nphase     promoted to 2 after 4 steps\nfailures  0 in a row, 1 in all\n",
            ),
            (
                state(Phase::RolledBack { reason: reason("aborted: enough") }, 2, None, vec![("error_rate", Verdict::Pass { value: 0.0, reason: None })]),
                "rollout 3 of fraud: 1 -> 2\n\
                 phase     rolled back at step 2/4: aborted: enough\n\
                 failures  0 in a row, 1 in all\n\
                 CHECK       VERDICT              VALUE  REASON\n\
                 error_rate  pass                0.0000\n",
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(render_status(&status, 82_500), expected, "{status:?}");
        }
    }

    /// `rollout wait` prints a line when the step, the phase or a verdict changes, not when a
    /// value or a sample count moves.
    #[test]
    fn progress_lines_change_with_verdicts_not_values() {
        let at = |error_rate: Verdict, samples: u32| {
            let latency = Verdict::Inconclusive { reason: format!("{samples} latency samples, fewer than 100") };
            state(Phase::Progressing, 2, Some(r#"{"weight": {"weight": "25%", "hold": "5m"}}"#), vec![("error_rate", error_rate), ("latency", latency)])
        };
        let progress_of = |s: RolloutStatus| progress("fraud", s.rollout.as_ref().unwrap());
        let (key, line) = progress_of(at(Verdict::Pass { value: 0.001, reason: None }, 12));
        assert_eq!(line, "rollout 3 of fraud 1 -> 2: step 2/4 weight 25% for 5m, progressing; error_rate pass, latency inconclusive (12 latency samples, fewer than 100)");
        assert_eq!(progress_of(at(Verdict::Pass { value: 0.002, reason: None }, 40)).0, key);
        assert_ne!(progress_of(at(Verdict::Fail { value: 0.2, reason: reason("0.2 above stable") }, 40)).0, key);
        let (_, done) = progress_of(state(Phase::RolledBack { reason: reason("error_rate failed 3 times in a row") }, 2, None, vec![]));
        assert_eq!(done, "rollout 3 of fraud 1 -> 2, rolled back at step 2/4: error_rate failed 3 times in a row");
    }

    #[test]
    fn decisions_read_as_actions() {
        let route = |weight: u32, shadow: u32, header: bool| Action::Route {
            weight: modelship_router::BasisPoints::new(weight).unwrap(),
            shadow: modelship_router::BasisPoints::new(shadow).unwrap(),
            header,
        };
        let cases = [
            (route(1000, 0, true), "route 10%, canary header"),
            (route(0, 10_000, false), "route 0%, shadow 100%"),
            (route(0, 0, false), "route 0%"),
            (Action::Promote, "promote"),
            (Action::Rollback, "rollback"),
            (Action::Pause, "pause"),
            (Action::CallWebhook { url: "https://gate.example/go".to_owned() }, "call https://gate.example/go"),
        ];
        for (action, expected) in cases {
            assert_eq!(describe_action(&action), expected);
        }
        let history: Vec<RolloutDecision> = serde_json::from_str(
            r#"[{"rollout":1,"at":1796156088740,"action":{"action":"route","weight":1000,"shadow":0,"header":true},"reason":"rollout started; step 1 of 2","evidence":[]}]"#,
        )
        .unwrap();
        let text = render_history(&history);
        assert!(text.contains("2026-12-01T") && text.contains("route 10%, canary header") && text.contains("rollout started; step 1 of 2"), "{text}");
    }

    /// What the CLI sends is what the server reads: a spec file survives the trip.
    #[test]
    fn a_spec_file_reaches_the_server_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("canary.yaml");
        std::fs::write(
            &file,
            "rollout:\n  model: fraud\n  to: 2\n  canary: {weights: [5, 25, 100], every: 1m30s}\n  checks:\n    - error_rate: {}\n    - quality: {metric: auc, min_delta: -0.005}\n  failure: {min_samples: 20, deadline: 2h}\n  interval: 500ms\n",
        )
        .unwrap();
        let spec = read_spec(&file, None).unwrap();
        let sent = serde_json::to_string(&StartRequest { spec: spec.clone(), actor: Some("cli".to_owned()), force: false }).unwrap();
        let read: StartRequest = serde_json::from_str(&sent).unwrap();
        assert_eq!(read.spec, spec);
        assert_eq!(read.spec.resolve().unwrap().steps.len(), 3);
        std::fs::write(&file, "to: 2\ncanary: {weights: [5], evry: 1m}\n").unwrap();
        let err = format!("{:#}", read_spec(&file, None).unwrap_err());
        assert!(err.contains("is not a rollout spec") && err.contains("evry"), "{err}");
    }
}
