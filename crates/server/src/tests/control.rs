//! The traffic writer and the rollout loop, in process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use modelship_protocol::admin::{RolloutCommand, RolloutStatus};
use modelship_rollout::engine::Phase;
use modelship_router::{BasisPoints, Candidate, Change, TrafficTable};

use crate::model::Served;
use crate::rollouts::{FleetConfig, Rollouts};
use crate::state::{AppState, Limits};
use crate::testing::{FakeBackend, load, spec};
use crate::traffic::Traffic;

/// A server with versions 1 (stable) and 2 (candidate at 0 %, reachable by header) loaded, and
/// its traffic writer with `keep_warm`.
pub(super) fn two_versions(dir: &std::path::Path, keep_warm: Duration) -> (AppState, Arc<Traffic>) {
    let state = AppState::new(Limits::default());
    let backend = Arc::new(FakeBackend::default());
    let one = load(&backend, "scale=1", &spec("fraud", "1", 1, 64), &state.metrics);
    let two = load(&backend, "scale=1", &spec("fraud", "2", 1, 64), &state.metrics);
    let mut table = TrafficTable::new("1".to_owned());
    table.candidate = Some(Candidate { version: "2".to_owned(), weight: BasisPoints::ZERO });
    let served = Served { table, revision: 0, versions: [("1".to_owned(), one), ("2".to_owned(), two)].into() };
    state.models.publish("fraud", served);
    state.health.mark_started();
    let store = Arc::new(crate::control::Embedded::open(&dir.join("traffic.db")).unwrap());
    let backend: Arc<dyn modelship_inference::Backend> = backend;
    let traffic = Arc::new(Traffic::new(None, "fraud".to_owned(), backend, spec("fraud", "1", 1, 64), store, keep_warm));
    (state, traffic)
}

/// A keep-warm expiry that comes due after a newer change leaves that change in force: it
/// unloads only what no revision routes to, and writes only over the table it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_warm_expiry_never_undoes_a_newer_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (state, traffic) = two_versions(dir.path(), Duration::from_millis(150));
    traffic.resume(&state).await.unwrap();
    // Revision 1: 2 is stable, 1 stays warm and its expiry is due in 150 ms.
    traffic.change(&state, Change::Switch { version: "2".to_owned() }, "test", "switch").await.unwrap();
    // Revision 2, before the expiry: 1 is a 10 % candidate again.
    let newer = traffic
        .change(&state, Change::Canary { version: "1".to_owned(), weight: BasisPoints::new(1000).unwrap() }, "test", "canary")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let served = state.models.served("fraud").unwrap();
    assert_eq!(served.revision, newer.revision);
    assert_eq!(served.table.candidate, newer.traffic.candidate, "the newer revision is in force");
    assert!(served.versions.contains_key("1"), "the expiry did not unload what the newer revision routes to");

    // Revision 3 drops the candidate: now nothing routes to 1 and its expiry unloads it, at the
    // same revision (only what is kept loaded changed).
    let last = traffic.change(&state, Change::Abort, "test", "abort").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let served = state.models.served("fraud").unwrap();
    assert_eq!(served.revision, last.revision);
    assert!(!served.versions.contains_key("1") && served.versions.contains_key("2"), "{:?}", served.versions.keys().collect::<Vec<_>>());
}

/// An alias follower that read the alias before a promotion moved it (it still names the old
/// version) must not switch the fleet back: the routing changed since its read, so it commits
/// nothing and decides again at its next poll. Only a read taken at the revision in force
/// switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_alias_read_never_switches_the_routing_back() {
    let dir = tempfile::tempdir().unwrap();
    let (state, traffic) = two_versions(dir.path(), Duration::from_secs(60));
    traffic.resume(&state).await.unwrap();
    // The follower's read: revision in force, then the alias (naming 1, as stable is).
    let (_, seen) = state.models.routing("fraud").unwrap();
    // Meanwhile a promotion makes 2 stable.
    let promoted = traffic.change(&state, Change::Switch { version: "2".to_owned() }, "rollout", "promoted").await.unwrap();
    // The follower acts on its stale read: nothing is committed.
    assert_eq!(traffic.switch_to(&state, "1", seen, "registry", "fraud@production moved to 1").await.unwrap(), None);
    let (table, revision) = state.models.routing("fraud").unwrap();
    assert_eq!((table.stable.as_str(), revision), ("2", promoted.revision), "the promotion stays in force");
    // A read taken at the revision in force (a real move of the alias) switches.
    let moved = traffic.switch_to(&state, "1", promoted.revision, "registry", "fraud@production moved to 1").await.unwrap();
    assert_eq!(moved.map(|r| (r.revision, r.traffic.stable)), Some((promoted.revision + 1, "1".to_owned())));
}

/// The model table's compare and swap: a writer holding a stale snapshot loses.
#[test]
fn a_stale_table_write_loses() {
    let dir = tempfile::tempdir().unwrap();
    let (state, _) = two_versions(dir.path(), Duration::ZERO);
    let stale = state.models.served("fraud").unwrap();
    let newer = Served { table: stale.table.clone(), revision: 7, versions: stale.versions.clone() };
    state.models.publish("fraud", newer);
    let stale_write = Served { table: TrafficTable::new("1".to_owned()), revision: stale.revision, versions: stale.versions.clone() };
    assert!(!state.models.publish_if("fraud", &stale, stale_write));
    assert_eq!(state.models.served("fraud").unwrap().revision, 7);
}

/// A webhook gate that never answers holds the rollout, not the admin API: status answers at
/// once and an abort goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_a_webhook_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let (state, traffic) = two_versions(dir.path(), Duration::from_secs(60));
    traffic.resume(&state).await.unwrap();
    // Accepts, reads nothing, answers nothing.
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/gate", hang.local_addr().unwrap());
    let (asked_tx, asked) = std::sync::mpsc::channel();
    let _held = std::thread::spawn(move || {
        // Holds the webhook's connection, silent, well past the checks below, then lets go so the
        // call ends (its late answer must be ignored: the rollout was aborted meanwhile).
        let conn = hang.incoming().next();
        let _ = asked_tx.send(());
        std::thread::sleep(Duration::from_secs(3));
        drop(conn);
    });
    let rollouts = Arc::new(Rollouts::new(Arc::clone(&traffic), FleetConfig::single("test")));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(Arc::clone(&rollouts).run(state.clone(), stop.clone()));
    tokio::spawn(crate::fleet::run(state.clone(), Arc::clone(&traffic), Arc::clone(&rollouts), None));
    let yaml: serde_json::Value =
        serde_yaml_ng::from_str(&format!("to: '2'\nsteps:\n  - webhook: {{url: '{url}'}}\n  - weight: {{weight: 100%, hold: 0s}}\ninterval: 100ms\n")).unwrap();
    let spec: modelship_rollout::spec::RolloutSpec = serde_json::from_value(yaml).unwrap();
    let phase = |status: &RolloutStatus| status.rollout.as_ref().map(|r| r.phase.clone());
    let started = rollouts.start(&state, spec, "test", false).await.unwrap();
    assert_eq!(phase(&started), Some(Phase::AwaitingWebhook), "{started:?}");
    tokio::task::spawn_blocking(move || asked.recv_timeout(Duration::from_secs(10))).await.unwrap().expect("the leader asks the webhook");

    let t = Instant::now();
    assert_eq!(phase(&rollouts.status(&state).await), Some(Phase::AwaitingWebhook));
    let aborted = tokio::time::timeout(Duration::from_secs(1), rollouts.command(&state, RolloutCommand::Abort, "stuck gate")).await;
    let aborted = aborted.expect("abort answers within 1 s while the webhook hangs").unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(phase(&aborted), Some(Phase::RolledBack { reason: "aborted: stuck gate".to_owned() }), "{aborted:?}");
    assert_eq!(aborted.rollout.as_ref().and_then(|r| r.current_step.as_ref()), None, "a finished rollout has no current step");
    assert_eq!(state.models.served("fraud").unwrap().table.candidate, None);
    stop.cancel();
}

/// The admin API answers with the shared types, and an unknown rollout command is a route that
/// does not exist (listing the ones that do), whether or not a rollout is in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_in_its_shared_types() {
    use modelship_protocol::admin::{RolloutDecision, TrafficStatus};
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let (served, traffic) = two_versions(dir.path(), Duration::from_secs(60));
    let state = AppState::with_credentials(Limits::default(), crate::auth::Credentials::new(Some(TOKEN), &[]));
    state.models.publish("fraud", served.models.served("fraud").unwrap());
    state.health.mark_started();
    traffic.resume(&state).await.unwrap();
    let rollouts = Arc::new(Rollouts::new(Arc::clone(&traffic), FleetConfig::single("test")));
    let backend: Arc<dyn modelship_inference::Backend> = Arc::new(FakeBackend::default());
    let pool = crate::pool::PoolConfig::new(1, 4);
    let repository = Arc::new(crate::repository::Repository::new(None, backend, pool, Default::default(), vec!["fraud".to_owned()]));
    let admin = crate::admin::AdminState::new(state.clone(), traffic, rollouts, repository);
    let call = |method: &'static str, path: &str, body: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("/admin/v1/models/fraud{path}"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let app = crate::admin::app(admin.clone());
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            (status, axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap())
        }
    };
    let read = |(status, body): (http::StatusCode, axum::body::Bytes)| {
        assert_eq!(status, http::StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        body
    };

    let status: TrafficStatus = serde_json::from_slice(&read(call("GET", "/traffic", "").await)).unwrap();
    assert_eq!((status.revision, status.traffic.stable.as_str(), status.loaded_versions.len()), (0, "1", 2));
    let none: RolloutStatus = serde_json::from_slice(&read(call("GET", "/rollout", "").await)).unwrap();
    assert_eq!(none, RolloutStatus { model: "fraud".to_owned(), rollout: None });

    let unknown = |body: &axum::body::Bytes| String::from_utf8_lossy(body).contains("use approve, pause, resume or abort");
    let (code, body) = call("POST", "/rollout/promote", "").await;
    assert_eq!(code, http::StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));
    assert!(unknown(&body), "{}", String::from_utf8_lossy(&body));
    let (code, body) = call("POST", "/rollout/abort", "").await;
    assert_eq!(code, http::StatusCode::CONFLICT, "no rollout to abort: {}", String::from_utf8_lossy(&body));

    let spec = r#"{"spec": {"to": "2", "steps": [{"weight": {"weight": "10%", "hold": "1m"}}, {"approve": {}}]}}"#;
    let started: RolloutStatus = serde_json::from_slice(&read(call("POST", "/rollout", spec).await)).unwrap();
    let r = started.rollout.unwrap();
    assert_eq!((r.id, r.step, r.steps, r.phase), (1, 1, 2, Phase::Progressing));
    let (code, body) = call("POST", "/rollout/bogus", "").await;
    assert_eq!(code, http::StatusCode::NOT_FOUND);
    assert!(unknown(&body), "{}", String::from_utf8_lossy(&body));

    let aborted: RolloutStatus = serde_json::from_slice(&read(call("POST", "/rollout/abort", r#"{"reason": "enough"}"#).await)).unwrap();
    let r = aborted.rollout.unwrap();
    assert_eq!((r.phase, r.current_step), (Phase::RolledBack { reason: "aborted: enough".to_owned() }, None));
    let history: Vec<RolloutDecision> = serde_json::from_slice(&read(call("GET", "/rollout/history", "").await)).unwrap();
    assert_eq!(history.iter().map(|d| d.decision.reason.as_str()).collect::<Vec<_>>(), ["rollout started; step 1 of 2", "aborted: enough"]);

    // Every model served, what it holds loaded and its rollout.
    let request = http::Request::builder().uri("/admin/v1/models").header("authorization", format!("Bearer {TOKEN}")).body(axum::body::Body::empty()).unwrap();
    let response = crate::admin::app(admin.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let served: modelship_protocol::admin::ServedModels = serde_json::from_slice(&read((status, body))).unwrap();
    let [fraud] = served.models.as_slice() else { panic!("one model: {served:?}") };
    assert_eq!(
        (fraud.name.as_str(), fraud.state.as_str(), fraud.stable.as_deref(), fraud.configured, fraud.rollout.as_deref()),
        ("fraud", "READY", Some("1"), true, Some("rolled_back"))
    );
    assert_eq!(fraud.versions.iter().map(|v| (v.version.as_str(), v.model_bytes)).collect::<Vec<_>>(), [("1", 7)], "scale=1 is 7 bytes; 2 went with the rollback");
}

const TOKEN: &str = "control-token-0123456789";

/// A start refused because its version cannot be routed to leaves no rollout behind: nothing in
/// the store, routing unchanged, and the next start goes ahead with no abort in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_leaves_no_rollout_behind() {
    let spec = |to: &str| -> modelship_rollout::spec::RolloutSpec {
        serde_json::from_value(serde_json::json!({"to": to, "steps": [{"weight": {"weight": "10%", "hold": "1m"}}, {"approve": {}}]})).unwrap()
    };
    for (registry, status, says) in [
        (false, http::StatusCode::CONFLICT, "this server serves a file"),
        (true, http::StatusCode::NOT_FOUND, "no model named 'fraud'"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (state, traffic) = two_versions(dir.path(), Duration::from_secs(60));
        let traffic = if registry {
            let config = modelship_registry::RegistryConfig { root: dir.path().join("registry"), artifacts: None };
            let registry = Arc::new(modelship_registry::Registry::open(&config).unwrap());
            Arc::new(Traffic::new(Some(registry), "fraud".to_owned(), Arc::clone(&traffic.backend), traffic.spec.clone(), Arc::clone(&traffic.store), traffic.keep_warm))
        } else {
            traffic
        };
        traffic.resume(&state).await.unwrap();
        let revision = state.models.served("fraud").unwrap().revision;
        let rollouts = Arc::new(Rollouts::new(Arc::clone(&traffic), FleetConfig::single("test")));

        let refused = rollouts.start(&state, spec("9"), "test", false).await.unwrap_err();
        assert_eq!(refused.status_and_code().0, status, "registry {registry}: {refused}");
        assert!(refused.to_string().contains(says), "registry {registry}: {refused}");
        assert_eq!(traffic.store.rollout("fraud").await.unwrap(), None, "registry {registry}: no record");
        assert_eq!(rollouts.status(&state).await.rollout, None);
        assert_eq!(state.models.served("fraud").unwrap().revision, revision, "routing unchanged");

        let started = rollouts.start(&state, spec("2"), "test", false).await.unwrap().rollout.unwrap();
        assert_eq!((started.id, started.phase), (1, Phase::Progressing), "registry {registry}");
    }
}

/// A server following `fraud@production` moves the alias with each promotion it makes, as a
/// compare and set from the stable version in force: an alias someone else moved meanwhile is
/// never undone, and the promotion is refused with the routing unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_moves_the_alias_only_from_where_the_server_left_it() {
    let dir = tempfile::tempdir().unwrap();
    let (state, traffic) = two_versions(dir.path(), Duration::from_secs(60));
    let config = modelship_registry::RegistryConfig { root: dir.path().join("registry"), artifacts: None };
    let registry = Arc::new(modelship_registry::Registry::open(&config).unwrap());
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/models");
    for (file, version) in [("logistic_regression", "1"), ("mlp", "2"), ("random_forest", "3")] {
        let request = modelship_registry::PushRequest { name: "fraud".into(), version: version.into(), ..Default::default() };
        registry.push(request, &models.join(format!("{file}.onnx")), &modelship_registry::NoProgress).await.unwrap();
    }
    registry.set_alias("fraud", "production", "1", "test").await.unwrap();
    let traffic = Arc::new(
        Traffic::new(Some(Arc::clone(&registry)), "fraud".into(), Arc::clone(&traffic.backend), traffic.spec.clone(), Arc::clone(&traffic.store), traffic.keep_warm)
            .with_source(crate::traffic::Source::registry(&modelship_registry::ModelRef::Alias("fraud".into(), "production".into()))),
    );
    traffic.resume(&state).await.unwrap();

    // Someone moves the alias to 3 before this server noticed: its promotion of 2 is refused.
    registry.set_alias("fraud", "production", "3", "ci").await.unwrap();
    let refused = traffic.change(&state, Change::Promote, "admin", "looks good").await.unwrap_err();
    assert!(refused.to_string().contains("fraud@production names 3, not 1: it was moved meanwhile"), "{refused}");
    assert_eq!(refused.status_and_code().0, http::StatusCode::CONFLICT);
    assert_eq!(registry.alias_target("fraud", "production").await.unwrap().as_deref(), Some("3"), "never undone");
    let served = state.models.served("fraud").unwrap();
    assert_eq!((served.table.stable.as_str(), served.revision), ("1", 0), "the routing is unchanged");

    // From where the server left it, the promotion moves the alias, recorded with its actor.
    registry.set_alias("fraud", "production", "1", "ci").await.unwrap();
    traffic.change(&state, Change::Promote, "admin", "looks good").await.unwrap();
    assert_eq!(registry.alias_target("fraud", "production").await.unwrap().as_deref(), Some("2"));
    let last = registry.history("fraud").await.unwrap().pop().unwrap();
    assert_eq!((last.version.as_deref(), last.previous.as_deref(), last.actor.as_str()), (Some("2"), Some("1"), "admin: looks good"));
}
