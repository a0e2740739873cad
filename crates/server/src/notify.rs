//! Notifications of rollout events: every decision a replica commits (started, a step, paused,
//! resumed, promoted, rolled back), a step held past its time because the evidence is
//! inconclusive, a gate that refused, and a replica taking a rollout over, sent to the sinks the
//! configuration names: a generic webhook (JSON signed with HMAC-SHA256), a Slack-compatible
//! incoming webhook, or Alertmanager's API (so its routing, grouping and silences apply).
//!
//! - **Never in the rollout's way.** [`Notifier::notify`] only puts the event on each sink's
//!   bounded queue (full: dropped and counted); each sink has a task of its own that delivers,
//!   so a receiver that never answers delays neither the rollout nor the other sinks.
//! - **At most once per decision per sink in a fleet.** A decision is committed by exactly one
//!   replica (a compare-and-swap write to the control store); that replica, and only it, sends
//!   it. A takeover is told by the replica that took the lease.
//! - **Retries with backoff.** An attempt that gets no 2xx is tried again (`retries` times,
//!   the wait doubling from `backoff` up to 30 s); every attempt is bounded by `timeout`.
//! - **What was sent is visible.** Each replica keeps its latest deliveries per model and hands
//!   them to the fleet in its report; `modelship rollout status` shows them.
//!
//! What is sent is built by pure functions ([`request_for`], [`signature`]), tested by table.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelship_protocol::admin::NotificationRecord;
use modelship_rollout::engine::{Action, Decision};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Deliveries kept per model for the status.
const RECENT: usize = 20;
/// Events waiting per sink before new ones are dropped.
const QUEUE: usize = 256;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The header carrying the webhook body's signature.
pub const SIGNATURE_HEADER: &str = "x-modelship-signature";
/// The header carrying the time (Unix seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-modelship-timestamp";
/// The header carrying the event's delivery id, the same on every retry (for deduplication).
pub const DELIVERY_HEADER: &str = "x-modelship-delivery";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Step,
    Paused,
    Resumed,
    Promoted,
    RolledBack,
    InconclusiveHeld,
    GateRefused,
    LeaderChanged,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Started,
        EventKind::Step,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::Promoted,
        EventKind::RolledBack,
        EventKind::InconclusiveHeld,
        EventKind::GateRefused,
        EventKind::LeaderChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Step => "step",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::Promoted => "promoted",
            EventKind::RolledBack => "rolled_back",
            EventKind::InconclusiveHeld => "inconclusive_held",
            EventKind::GateRefused => "gate_refused",
            EventKind::LeaderChanged => "leader_changed",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// How urgent the event is: a rollback needs a person now, a hold or a refusal soon.
    pub fn severity(self) -> Severity {
        match self {
            EventKind::RolledBack => Severity::Critical,
            EventKind::Paused | EventKind::InconclusiveHeld | EventKind::GateRefused => Severity::Warning,
            EventKind::Started | EventKind::Step | EventKind::Resumed | EventKind::Promoted | EventKind::LeaderChanged => Severity::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        [Severity::Info, Severity::Warning, Severity::Critical].into_iter().find(|v| v.as_str() == s)
    }
}

/// One rollout event, as every sink is told it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// `MODEL:ROLLOUT:SEQ:KIND`: unique per event, the same for every sink and every retry.
    pub id: String,
    pub kind: EventKind,
    pub severity: Severity,
    pub model: String,
    pub rollout: Option<i64>,
    /// The version rolled out.
    pub to: Option<String>,
    /// The stable version it is compared with.
    pub stable: Option<String>,
    /// The step reached, from 1, and how many the plan has.
    pub step: Option<usize>,
    pub steps: Option<usize>,
    /// The decision's action, when the event is a decision.
    pub action: Option<Action>,
    pub reason: String,
    /// The checks' latest verdicts that led to the decision: `[{"check", "verdict", ...}]`.
    pub evidence: Vec<Value>,
    /// The replica that committed the event.
    pub replica: String,
    /// When it happened (ms since the epoch).
    pub at_ms: u64,
}

/// What the event is, from the decision's action: the first decision of a rollout is its
/// start, one after a resume command its resumption.
pub fn kind_of(decision: &Decision, first: bool, resumed: bool) -> EventKind {
    match &decision.action {
        _ if first => EventKind::Started,
        Action::Promote => EventKind::Promoted,
        Action::Rollback => EventKind::RolledBack,
        Action::Pause => EventKind::Paused,
        Action::Route { .. } | Action::CallWebhook { .. } if resumed => EventKind::Resumed,
        Action::Route { .. } | Action::CallWebhook { .. } => EventKind::Step,
    }
}

/// A secret value (an HMAC key, a Slack URL): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where a sink delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// The event as JSON, signed with HMAC-SHA256 when a secret is given.
    Webhook { url: String, secret: Option<Secret> },
    /// A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat...): its URL is the
    /// credential.
    Slack { url: Secret },
    /// Alertmanager's `POST /api/v2/alerts`, at its base URL.
    Alertmanager { url: String },
}

impl SinkKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Slack { .. } => "slack",
            SinkKind::Alertmanager { .. } => "alertmanager",
        }
    }
}

/// One configured sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    /// Unique among the sinks: the metrics' and the status's name for it.
    pub name: String,
    pub kind: SinkKind,
    /// The events it wants; empty: all of them.
    pub events: Vec<EventKind>,
    /// Events below this severity are not sent.
    pub min_severity: Severity,
    /// The bound on one attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    /// The first wait between attempts (doubled each time, at most 30 s).
    pub backoff: Duration,
}

impl SinkSettings {
    pub fn new(name: &str, kind: SinkKind) -> Self {
        SinkSettings {
            name: name.to_owned(),
            kind,
            events: Vec::new(),
            min_severity: Severity::Info,
            timeout: Duration::from_secs(5),
            retries: 5,
            backoff: Duration::from_millis(500),
        }
    }

    pub fn wants(&self, kind: EventKind) -> bool {
        kind.severity() >= self.min_severity && (self.events.is_empty() || self.events.contains(&kind))
    }
}

/// One HTTP request to a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// `sha256=HEX`: HMAC-SHA256 of `TIMESTAMP.BODY` under `secret`. The receiver recomputes it
/// (and refuses an old timestamp, so a captured request cannot be replayed).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex::encode(context.sign().as_ref()))
}

/// The request that tells `notice` to `sink`, at `now_secs` (Unix seconds).
pub fn request_for(sink: &SinkKind, notice: &Notice, now_secs: u64) -> Outgoing {
    let json_header = ("content-type", "application/json".to_owned());
    match sink {
        SinkKind::Webhook { url, secret } => {
            let body = serde_json::to_vec(notice).unwrap_or_default();
            let mut headers = vec![json_header, (DELIVERY_HEADER, notice.id.clone()), (TIMESTAMP_HEADER, now_secs.to_string())];
            if let Some(secret) = secret {
                headers.push((SIGNATURE_HEADER, signature(secret.0.as_bytes(), now_secs, &body)));
            }
            Outgoing { url: url.clone(), headers, body }
        }
        SinkKind::Slack { url } => {
            let body = json!({"text": headline(notice), "blocks": slack_blocks(notice)});
            Outgoing { url: url.0.clone(), headers: vec![json_header], body: body.to_string().into_bytes() }
        }
        SinkKind::Alertmanager { url } => {
            let mut labels = json!({
                "alertname": alert_name(notice.kind),
                "severity": notice.severity.as_str(),
                "model": notice.model,
                "event": notice.kind.as_str(),
                "source": "modelship",
            });
            for (key, value) in [("rollout", notice.rollout.map(|r| r.to_string())), ("version", notice.to.clone()), ("delivery", Some(notice.id.clone()))] {
                if let Some(value) = value {
                    labels[key] = Value::String(value);
                }
            }
            let starts = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(notice.at_ms));
            // An event, not a condition: it resolves by itself after an hour, and the delivery id
            // in its labels keeps two events of one rollout apart.
            let ends = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(notice.at_ms) + Duration::from_secs(3600));
            let body = json!([{
                "labels": labels,
                "annotations": {"summary": headline(notice), "description": notice.reason, "replica": notice.replica},
                "startsAt": starts.to_string(),
                "endsAt": ends.to_string(),
            }]);
            Outgoing { url: format!("{}/api/v2/alerts", url.trim_end_matches('/')), headers: vec![json_header], body: body.to_string().into_bytes() }
        }
    }
}

/// `ModelshipRolloutRolledBack`, ...: the Alertmanager alert name of an event.
pub fn alert_name(kind: EventKind) -> String {
    let camel: String = kind.as_str().split('_').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect();
    format!("ModelshipRollout{camel}")
}

/// One line for people: `fraud: rollout 3 of version 2 rolled back: error_rate: ...`.
pub fn headline(notice: &Notice) -> String {
    let what = match notice.kind {
        EventKind::Started => "started".to_owned(),
        EventKind::Step => format!("at step {} of {}", notice.step.unwrap_or(0), notice.steps.unwrap_or(0)),
        EventKind::Paused => "paused".to_owned(),
        EventKind::Resumed => "resumed".to_owned(),
        EventKind::Promoted => "promoted".to_owned(),
        EventKind::RolledBack => "rolled back".to_owned(),
        EventKind::InconclusiveHeld => format!("held at step {}: the evidence is inconclusive", notice.step.unwrap_or(0)),
        EventKind::GateRefused => "refused by a gate".to_owned(),
        EventKind::LeaderChanged => format!("taken over by replica {}", notice.replica),
    };
    let rollout = match (notice.rollout, &notice.to) {
        (Some(id), Some(to)) => format!("rollout {id} of version {to}"),
        (None, Some(to)) => format!("rollout of version {to}"),
        _ => "rollout".to_owned(),
    };
    let reason = if notice.reason.is_empty() { String::new() } else { format!(": {}", notice.reason) };
    format!("{}: {rollout} {what}{reason}", notice.model)
}

fn slack_blocks(notice: &Notice) -> Value {
    let icon = match notice.severity {
        Severity::Critical => ":rotating_light:",
        Severity::Warning => ":warning:",
        Severity::Info => ":information_source:",
    };
    let mut fields = vec![json!({"type": "mrkdwn", "text": format!("*Model*\n{}", notice.model)})];
    if let Some(to) = &notice.to {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Version*\n{to}")}));
    }
    if let Some(stable) = &notice.stable {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Stable*\n{stable}")}));
    }
    if let (Some(step), Some(steps)) = (notice.step, notice.steps) {
        fields.push(json!({"type": "mrkdwn", "text": format!("*Step*\n{step} of {steps}")}));
    }
    json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": format!("{icon} {}", headline(notice))}},
        {"type": "section", "fields": fields},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("{} · replica {} · {}", notice.kind.as_str(), notice.replica, notice.id)}]},
    ])
}

/// The sinks, each with its queue and its task, and the latest deliveries per model.
pub struct Notifier {
    replica: String,
    sinks: Vec<(SinkSettings, tokio::sync::mpsc::Sender<Notice>)>,
    recent: Arc<Mutex<BTreeMap<String, VecDeque<NotificationRecord>>>>,
    sent: prometheus::IntCounterVec,
}

impl Notifier {
    /// Starts one delivery task per sink under `tasks`; the metrics go to `registry`.
    pub fn start(sinks: Vec<SinkSettings>, replica: &str, registry: &prometheus::Registry, tasks: &crate::serve::Tasks) -> Result<Arc<Notifier>, String> {
        let sent = prometheus::IntCounterVec::new(
            prometheus::Opts::new("modelship_notifications_total", "Rollout events told to each sink, by kind and result (sent, failed, dropped)"),
            &["sink", "kind", "result"],
        )
        .map_err(|e| e.to_string())?;
        let attempts = prometheus::IntCounterVec::new(
            prometheus::Opts::new("modelship_notification_attempts_total", "Delivery attempts to each sink, by outcome (ok, error, timeout)"),
            &["sink", "kind", "result"],
        )
        .map_err(|e| e.to_string())?;
        registry.register(Box::new(sent.clone())).map_err(|e| e.to_string())?;
        registry.register(Box::new(attempts.clone())).map_err(|e| e.to_string())?;
        let recent: Arc<Mutex<BTreeMap<String, VecDeque<NotificationRecord>>>> = Arc::default();
        let mut handles = Vec::new();
        for sink in sinks {
            // Every series from 0, so a first failure is an increase Prometheus sees.
            for kind in EventKind::ALL {
                for result in ["sent", "failed", "dropped"] {
                    let _ = sent.with_label_values(&[&sink.name, kind.as_str(), result]);
                }
            }
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
            let worker = Worker { sink: sink.clone(), replica: replica.to_owned(), recent: Arc::clone(&recent), sent: sent.clone(), attempts: attempts.clone() };
            tasks.spawn("notifications", move |stop| worker.run(rx, stop));
            handles.push((sink, tx));
        }
        Ok(Arc::new(Notifier { replica: replica.to_owned(), sinks: handles, recent, sent }))
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Hands `notice` to every sink that wants it; never waits.
    pub fn notify(&self, notice: Notice) {
        for (sink, queue) in &self.sinks {
            if !sink.wants(notice.kind) {
                continue;
            }
            let record = record_of(&notice, sink, &self.replica);
            // Pending before it is queued: the sink's task may record its outcome at once.
            remember(&self.recent, &notice.model, NotificationRecord { result: "pending".to_owned(), ..record.clone() });
            match queue.try_send(notice.clone()) {
                Ok(()) => {}
                Err(_) => {
                    self.sent.with_label_values(&[&sink.name, notice.kind.as_str(), "dropped"]).inc();
                    tracing::warn!(sink = %sink.name, model = %notice.model, event = notice.kind.as_str(), "notification dropped: the sink's queue is full (it is not answering)");
                    remember(&self.recent, &notice.model, NotificationRecord { result: "dropped".to_owned(), detail: "queue full".to_owned(), ..record });
                }
            }
        }
    }

    /// The latest deliveries for `model`, newest first.
    pub fn recent(&self, model: &str) -> Vec<NotificationRecord> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).get(model).map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }
}

fn record_of(notice: &Notice, sink: &SinkSettings, replica: &str) -> NotificationRecord {
    NotificationRecord {
        id: notice.id.clone(),
        kind: notice.kind.as_str().to_owned(),
        severity: notice.severity.as_str().to_owned(),
        sink: sink.name.clone(),
        result: String::new(),
        attempts: 0,
        at_ms: notice.at_ms,
        detail: String::new(),
        replica: replica.to_owned(),
    }
}

/// Records a delivery's state, replacing the earlier state of the same event and sink.
fn remember(recent: &Mutex<BTreeMap<String, VecDeque<NotificationRecord>>>, model: &str, record: NotificationRecord) {
    let mut recent = recent.lock().unwrap_or_else(|p| p.into_inner());
    let list = recent.entry(model.to_owned()).or_default();
    list.retain(|r| !(r.id == record.id && r.sink == record.sink));
    list.push_front(record);
    list.truncate(RECENT);
}

/// One sink's deliveries, one event at a time, in order.
struct Worker {
    sink: SinkSettings,
    replica: String,
    recent: Arc<Mutex<BTreeMap<String, VecDeque<NotificationRecord>>>>,
    sent: prometheus::IntCounterVec,
    attempts: prometheus::IntCounterVec,
}

impl Worker {
    async fn run(self, mut queue: tokio::sync::mpsc::Receiver<Notice>, stop: tokio_util::sync::CancellationToken) {
        while let Some(notice) = queue.recv().await {
            self.deliver(&notice, &stop).await;
        }
    }

    async fn deliver(&self, notice: &Notice, stop: &tokio_util::sync::CancellationToken) {
        let kind = notice.kind.as_str();
        let mut record = record_of(notice, &self.sink, &self.replica);
        let mut wait = self.sink.backoff.min(MAX_BACKOFF);
        for attempt in 1..=self.sink.retries.saturating_add(1) {
            // Signed afresh at each attempt: the timestamp is when it was sent.
            let request = request_for(&self.sink.kind, notice, now_ms() / 1000);
            let timeout = self.sink.timeout;
            let outcome = tokio::task::spawn_blocking(move || send(&request, timeout)).await.unwrap_or_else(|_| Err(("error", "the delivery task failed".to_owned())));
            record.attempts = attempt;
            match outcome {
                Ok(status) => {
                    self.attempts.with_label_values(&[&self.sink.name, kind, "ok"]).inc();
                    self.sent.with_label_values(&[&self.sink.name, kind, "sent"]).inc();
                    record.result = "sent".to_owned();
                    record.detail = format!("HTTP {status}");
                    tracing::info!(sink = %self.sink.name, model = %notice.model, event = kind, delivery = %notice.id, attempts = attempt, "notification sent");
                    remember(&self.recent, &notice.model, record);
                    return;
                }
                Err((outcome, detail)) => {
                    self.attempts.with_label_values(&[&self.sink.name, kind, outcome]).inc();
                    record.detail = detail;
                }
            }
            if attempt <= self.sink.retries {
                record.result = "pending".to_owned();
                remember(&self.recent, &notice.model, record.clone());
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => break,
                }
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
        self.sent.with_label_values(&[&self.sink.name, kind, "failed"]).inc();
        tracing::warn!(
            sink = %self.sink.name, model = %notice.model, event = kind, delivery = %notice.id, attempts = record.attempts, detail = %record.detail,
            "notification not delivered: every attempt failed"
        );
        record.result = "failed".to_owned();
        remember(&self.recent, &notice.model, record);
    }
}

/// One attempt: the status of a 2xx answer, else the outcome's kind and a detail that never
/// holds the URL (a Slack URL is a credential).
fn send(request: &Outgoing, timeout: Duration) -> Result<u16, (&'static str, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into();
    let mut post = agent.post(&request.url);
    for (name, value) in &request.headers {
        post = post.header(*name, value);
    }
    match post.send(&request.body[..]) {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => Err(("error", format!("HTTP {}", r.status().as_u16()))),
        Err(ureq::Error::Timeout(_)) => Err(("timeout", format!("no answer within {}", humantime::format_duration(timeout)))),
        Err(e) => Err(("error", describe_error(&e))),
    }
}

/// A transport error in words, without the URL it was for.
fn describe_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("connection failed: {}", io.kind()),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::ConnectionFailed => "connection failed".to_owned(),
        ureq::Error::Tls(_) => "TLS failed".to_owned(),
        _ => "request failed".to_owned(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelship_router::BasisPoints;

    fn notice(kind: EventKind) -> Notice {
        Notice {
            id: format!("fraud:3:7:{}", kind.as_str()),
            kind,
            severity: kind.severity(),
            model: "fraud".into(),
            rollout: Some(3),
            to: Some("2".into()),
            stable: Some("1".into()),
            step: Some(2),
            steps: Some(4),
            action: None,
            reason: "error_rate: candidate 0.31 vs stable 0.01".into(),
            evidence: vec![],
            replica: "r1".into(),
            at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn kinds_and_severities_by_table() {
        let route = Action::Route { weight: BasisPoints::new(1000).unwrap(), shadow: BasisPoints::new(0).unwrap(), header: false };
        let d = |action: Action| Decision { at: 0, action, reason: String::new(), evidence: vec![] };
        for (decision, first, resumed, kind, severity) in [
            (d(route.clone()), true, false, EventKind::Started, Severity::Info),
            (d(route.clone()), false, false, EventKind::Step, Severity::Info),
            (d(route.clone()), false, true, EventKind::Resumed, Severity::Info),
            (d(Action::CallWebhook { url: "http://gate".into() }), false, false, EventKind::Step, Severity::Info),
            (d(Action::Pause), false, false, EventKind::Paused, Severity::Warning),
            (d(Action::Promote), false, false, EventKind::Promoted, Severity::Info),
            (d(Action::Rollback), false, false, EventKind::RolledBack, Severity::Critical),
        ] {
            let k = kind_of(&decision, first, resumed);
            assert_eq!(k, kind, "{decision:?}");
            assert_eq!(k.severity(), severity);
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(alert_name(EventKind::RolledBack), "ModelshipRolloutRolledBack");
        assert_eq!(alert_name(EventKind::InconclusiveHeld), "ModelshipRolloutInconclusiveHeld");
    }

    #[test]
    fn a_sink_takes_the_events_it_asked_for_at_its_severity() {
        let mut sink = SinkSettings::new("ops", SinkKind::Alertmanager { url: "http://am".into() });
        assert!(EventKind::ALL.iter().all(|k| sink.wants(*k)));
        sink.min_severity = Severity::Warning;
        let wanted: Vec<EventKind> = EventKind::ALL.into_iter().filter(|k| sink.wants(*k)).collect();
        assert_eq!(wanted, [EventKind::Paused, EventKind::RolledBack, EventKind::InconclusiveHeld, EventKind::GateRefused]);
        sink.events = vec![EventKind::RolledBack, EventKind::Promoted];
        let wanted: Vec<EventKind> = EventKind::ALL.into_iter().filter(|k| sink.wants(*k)).collect();
        assert_eq!(wanted, [EventKind::RolledBack]);
    }

    #[test]
    fn the_webhook_is_signed_over_timestamp_and_body() {
        let sink = SinkKind::Webhook { url: "http://hooks/x".into(), secret: Some(Secret("s3cret".into())) };
        let out = request_for(&sink, &notice(EventKind::RolledBack), 1_700_000_123);
        let header = |name: &str| out.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        assert_eq!(header(TIMESTAMP_HEADER).as_deref(), Some("1700000123"));
        assert_eq!(header(DELIVERY_HEADER).as_deref(), Some("fraud:3:7:rolled_back"));
        // The value a receiver computes with any HMAC library: checked against RFC 4231's
        // construction through a second implementation below.
        let expected = signature(b"s3cret", 1_700_000_123, &out.body);
        assert_eq!(header(SIGNATURE_HEADER), Some(expected.clone()));
        assert!(expected.starts_with("sha256=") && expected.len() == 7 + 64);
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(hex::encode(ring::hmac::sign(&key, b"what do ya want for nothing?").as_ref()), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // A different body or time gives a different signature.
        assert_ne!(signature(b"s3cret", 1_700_000_124, &out.body), expected);
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["kind"], "rolled_back");
        assert_eq!(body["severity"], "critical");
        assert_eq!(body["model"], "fraud");
        // Without a secret: no signature header.
        let plain = request_for(&SinkKind::Webhook { url: "http://hooks/x".into(), secret: None }, &notice(EventKind::Step), 1);
        assert!(plain.headers.iter().all(|(n, _)| *n != SIGNATURE_HEADER));
    }

    #[test]
    fn slack_and_alertmanager_bodies() {
        let slack = request_for(&SinkKind::Slack { url: Secret("https://hooks.slack.com/services/T/B/X".into()) }, &notice(EventKind::RolledBack), 1);
        let body: Value = serde_json::from_slice(&slack.body).unwrap();
        assert_eq!(body["text"], "fraud: rollout 3 of version 2 rolled back: error_rate: candidate 0.31 vs stable 0.01");
        assert!(body["blocks"][0]["text"]["text"].as_str().unwrap().starts_with(":rotating_light: "));
        let am = request_for(&SinkKind::Alertmanager { url: "http://am:9093/".into() }, &notice(EventKind::InconclusiveHeld), 1);
        assert_eq!(am.url, "http://am:9093/api/v2/alerts");
        let body: Value = serde_json::from_slice(&am.body).unwrap();
        let alert = &body[0];
        assert_eq!(alert["labels"]["alertname"], "ModelshipRolloutInconclusiveHeld");
        assert_eq!(alert["labels"]["severity"], "warning");
        assert_eq!(alert["labels"]["rollout"], "3");
        assert_eq!(alert["labels"]["delivery"], "fraud:3:7:inconclusive_held");
        assert_eq!(alert["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(alert["endsAt"], "2023-11-14T23:13:20.000Z");
    }

    #[test]
    fn secrets_are_not_printed() {
        let sink = SinkKind::Slack { url: Secret("https://hooks.slack.com/services/T/B/X".into()) };
        assert!(!format!("{sink:?}").contains("hooks.slack.com"));
    }
}
