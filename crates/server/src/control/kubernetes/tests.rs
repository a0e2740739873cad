//! The Kubernetes store against a mocked API server (`tower_test::mock`, as kube's own tests do):
//! every request the store sends is checked (method, path, query, body) and answered by hand.
//! No API server runs on these machines, so these requests are all the evidence there is.

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

use super::*;
use crate::control::tests::{record, revision};

type Server = mock::Handle<Request<Body>, Response<Body>>;
type Answer = mock::SendResponse<Response<Body>>;

const MAPS: &str = "/api/v1/namespaces/fleet/configmaps";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/fleet/leases";

fn store() -> (KubernetesStore, Server) {
    let (service, server) = mock::pair::<Request<Body>, Response<Body>>();
    (KubernetesStore::with_client(kube::Client::new(service, "default"), "fleet"), server)
}

/// The next request, which must be `method` on `uri` (path and query): its JSON body (`Null`
/// when empty) and where to answer it.
async fn expect(server: &mut Server, method: &str, uri: &str) -> (Value, Answer) {
    let (request, answer) = tokio::time::timeout(Duration::from_secs(5), server.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request within 5 s; expected {method} {uri}"))
        .expect("the client is gone");
    assert_eq!((request.method().as_str(), request.uri().to_string().as_str()), (method, uri));
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (body, answer)
}

/// No request arrives (the store answered without writing).
async fn quiet(server: &mut Server) {
    if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(100), server.next_request()).await {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

fn answer(to: Answer, code: u16, body: &Value) {
    to.send_response(Response::builder().status(code).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap());
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code, "reason": reason, "message": message})
}

fn configmap(name: &str, version: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "fleet", "resourceVersion": version}, "data": data})
}

fn json_of<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

fn lease_object(version: &str, holder: &str, renewed: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": object_name("lease", "fraud"), "namespace": "fleet", "resourceVersion": version},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10, "acquireTime": renewed, "renewTime": renewed, "leaseTransitions": transitions}
    })
}

/// A time as RFC 3339, as a MicroTime is written.
fn micro(t: Timestamp) -> String {
    t.to_string()
}

#[test]
fn object_names_are_dns_1123_and_keep_models_apart() {
    assert_eq!(object_name("traffic", "fraud"), format!("modelship-traffic-fraud-{}", hex::encode(&Sha256::digest(b"fraud")[..4])));
    assert_eq!(model_slug("fraud"), model_slug("fraud"), "deterministic");
    assert_eq!(model_slug("Fraud_v2.onnx").split('-').next(), Some("fraud"));
    assert!(model_slug("Fraud_v2.onnx").starts_with("fraud-v2-onnx-"));
    let names = ["fraud", "Fraud", "FRAUD", "fr.aud", "fr_aud", "fr-aud", "_fraud", "fraud_", "-", "_", &"x".repeat(200), &format!("{}y", "x".repeat(200))];
    let slugs: std::collections::BTreeSet<String> = names.iter().map(|n| model_slug(n)).collect();
    assert_eq!(slugs.len(), names.len(), "no two names share objects: {slugs:?}");
    let label = |s: &str| {
        s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-') && !s.ends_with('-')
    };
    for name in names {
        // DNS-1123 labels: valid object names and label values.
        assert!(label(&model_slug(name)), "{}", model_slug(name));
        for what in ["traffic", "rollout", "lease", "replicas", "evidence", "labels"] {
            assert!(label(&object_name(what, name)), "{}", object_name(what, name));
        }
    }
}

#[test]
fn logs_drop_their_oldest_entries_and_keep_the_newest() {
    let mut data: BTreeMap<String, String> = (1..=5).map(|n| (format!("e-{n}"), "x".repeat(10))).collect();
    data.insert("last".into(), "5".into());
    assert_eq!(trim(&mut data, "e-", 3, 1_000), 2);
    assert_eq!(data.keys().collect::<Vec<_>>(), ["e-3", "e-4", "e-5", "last"]);
    assert_eq!(trim(&mut data, "e-", 3, 26), 1, "bytes bound too: key and value count");
    assert_eq!(trim(&mut data, "e-", 3, 1), 1);
    assert_eq!(data.keys().collect::<Vec<_>>(), ["e-5", "last"], "the newest always stays");
    // Numbers, not strings: e-10 is newer than e-9.
    let mut data: BTreeMap<String, String> = [9, 10].map(|n| (format!("e-{n}"), String::new())).into();
    trim(&mut data, "e-", 1, 1_000);
    assert_eq!(data.keys().collect::<Vec<_>>(), ["e-10"]);
}

#[tokio::test]
async fn a_commit_creates_then_replaces_with_the_version_it_read() {
    let (store, mut server) = store();
    let name = object_name("traffic", "fraud");
    let slug = model_slug("fraud");
    let first = revision("fraud", 0);
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 404, &status(404, "NotFound", "configmaps not found"));
        let (body, to) = expect(&mut server, "POST", &format!("{MAPS}?&fieldManager=modelship")).await;
        let wanted = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "modelship", "modelship.io/model": slug}, "annotations": {"modelship.io/model": "fraud"}},
            "data": {"latest": "0", "revision-0": json_of(&first)}
        });
        assert_eq!(body, wanted);
        answer(to, 201, &configmap(&name, "41", body["data"].clone()));
    };
    let (committed, ()) = tokio::join!(store.commit(&first, None), server_side);
    committed.unwrap();

    // The next: a replace carrying resourceVersion 41, as read.
    let second = revision("fraud", 1);
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 200, &configmap(&name, "41", json!({"latest": "0", "revision-0": json_of(&first)})));
        let (body, to) = expect(&mut server, "PUT", &format!("{MAPS}/{name}?&fieldManager=modelship")).await;
        let wanted = configmap(&name, "41", json!({"latest": "1", "revision-0": json_of(&first), "revision-1": json_of(&second)}));
        assert_eq!(body, wanted);
        answer(to, 200, &configmap(&name, "42", body["data"].clone()));
    };
    let (committed, ()) = tokio::join!(store.commit(&second, None), server_side);
    committed.unwrap();

    // Not the next number: refused from the read, nothing written.
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 200, &configmap(&name, "42", json!({"latest": "1", "revision-0": json_of(&first), "revision-1": json_of(&second)})));
        quiet(&mut server).await;
    };
    let third = revision("fraud", 3);
    let (committed, ()) = tokio::join!(store.commit(&third, None), server_side);
    assert_eq!(committed, Err(StoreError::Conflict { wanted: 3, latest: Some(1) }));

    // Reads: the latest, the history oldest first.
    let server_side = async {
        for _ in 0..2 {
            let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
            answer(to, 200, &configmap(&name, "42", json!({"latest": "1", "revision-1": json_of(&second), "revision-0": json_of(&first)})));
        }
    };
    let (latest, history, ()) = tokio::join!(store.latest("fraud"), store.history("fraud"), server_side);
    assert_eq!(latest.unwrap(), Some(second.clone()));
    assert_eq!(history.unwrap(), [first, second]);
}

#[tokio::test]
async fn a_409_on_replace_is_a_conflict_naming_the_winner() {
    let (store, mut server) = store();
    let name = object_name("traffic", "fraud");
    let ours = revision("fraud", 1);
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 200, &configmap(&name, "41", json!({"latest": "0", "revision-0": json_of(&revision("fraud", 0))})));
        let (body, to) = expect(&mut server, "PUT", &format!("{MAPS}/{name}?&fieldManager=modelship")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        answer(to, 409, &status(409, "Conflict", "Operation cannot be fulfilled on configmaps: the object has been modified"));
        // The store reads again only to say which revision won.
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        let theirs = Revision { actor: "replica-2".into(), ..revision("fraud", 1) };
        answer(to, 200, &configmap(&name, "42", json!({"latest": "1", "revision-0": json_of(&revision("fraud", 0)), "revision-1": json_of(&theirs)})));
        quiet(&mut server).await;
    };
    let (committed, ()) = tokio::join!(store.commit(&ours, None), server_side);
    assert_eq!(committed, Err(StoreError::Conflict { wanted: 1, latest: Some(1) }));
}

#[tokio::test]
async fn the_history_is_bounded_in_its_configmap() {
    let (store, mut server) = store();
    let name = object_name("traffic", "fraud");
    let kept: serde_json::Map<String, Value> = (0..REVISIONS_KEPT as u64).map(|n| (format!("revision-{n}"), json!(json_of(&revision("fraud", n))))).collect();
    let next = revision("fraud", REVISIONS_KEPT as u64);
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        let mut data = kept.clone();
        data.insert("latest".into(), json!((REVISIONS_KEPT - 1).to_string()));
        answer(to, 200, &configmap(&name, "7", Value::Object(data)));
        let (body, to) = expect(&mut server, "PUT", &format!("{MAPS}/{name}?&fieldManager=modelship")).await;
        let data = body["data"].as_object().unwrap();
        assert_eq!(data.len(), REVISIONS_KEPT + 1, "{REVISIONS_KEPT} revisions and `latest`");
        assert!(!data.contains_key("revision-0"), "the oldest is dropped");
        assert_eq!(data[&format!("revision-{REVISIONS_KEPT}")], json!(json_of(&next)));
        answer(to, 200, &body);
    };
    let (committed, ()) = tokio::join!(store.commit(&next, None), server_side);
    committed.unwrap();
}

/// The watch: a change, then a 410 Gone in the stream (the version fell out of the watch cache):
/// the store lists again, yields the revision it missed, and watches on from the list's version;
/// a watch the server ends is resumed from the last version seen (here a bookmark's).
#[tokio::test]
async fn the_watch_yields_changes_and_lists_again_after_410_gone() {
    let (store, mut server) = store();
    let name = object_name("traffic", "fraud");
    let list_uri = format!("{MAPS}?&fieldSelector=metadata.name%3D{name}");
    let watch_uri = |version: &str| format!("{MAPS}?&watch=true&timeoutSeconds=290&fieldSelector=metadata.name%3D{name}&allowWatchBookmarks=true&resourceVersion={version}");
    let list = |version: &str, latest: u64| {
        json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": version}, "items": [configmap(&name, "90", json!({"latest": latest.to_string()}))]})
    };
    let lines = |events: &[Value]| events.iter().map(|e| format!("{e}\n")).collect::<String>();

    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &list_uri).await;
        answer(to, 200, &list("100", 3));
        let (_, to) = expect(&mut server, "GET", &watch_uri("100")).await;
        let events = [
            json!({"type": "MODIFIED", "object": configmap(&name, "101", json!({"latest": "4"}))}),
            json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 101 (150)")}),
        ];
        to.send_response(Response::new(Body::from(lines(&events).into_bytes())));
    };
    let (changes, ()) = tokio::join!(store.changes("fraud"), server_side);
    let mut changes = changes.unwrap();
    assert_eq!(changes.next().await, Some(4), "the committed revision, pushed");

    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &list_uri).await;
        answer(to, 200, &list("150", 6));
    };
    let (relisted, ()) = tokio::join!(changes.next(), server_side);
    assert_eq!(relisted, Some(6), "the revision committed while the watch was lost, from the list");

    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &watch_uri("150")).await;
        let events = [
            json!({"type": "MODIFIED", "object": configmap(&name, "151", json!({"latest": "6"}))}),
            json!({"type": "BOOKMARK", "object": {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "160"}}}),
        ];
        to.send_response(Response::new(Body::from(lines(&events).into_bytes())));
        // The server ended that watch: resumed from the bookmark.
        let (_, to) = expect(&mut server, "GET", &watch_uri("160")).await;
        to.send_response(Response::new(Body::from(lines(&[json!({"type": "MODIFIED", "object": configmap(&name, "161", json!({"latest": "7"}))})]).into_bytes())));
    };
    let (next, ()) = tokio::join!(changes.next(), server_side);
    assert_eq!(next, Some(7), "revision 6 is not yielded twice");

    // Any other failure ends the stream (the follower subscribes again and re-reads meanwhile).
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &watch_uri("161")).await;
        answer(to, 403, &status(403, "Forbidden", "configmaps is forbidden: cannot watch"));
    };
    let (next, ()) = tokio::join!(changes.next(), server_side);
    assert_eq!(next, None);
}

/// A 410 answering the watch request itself (not an event in its stream) lists again too.
#[tokio::test]
async fn a_watch_refused_with_410_lists_again() {
    let (store, mut server) = store();
    let name = object_name("traffic", "fraud");
    let list_uri = format!("{MAPS}?&fieldSelector=metadata.name%3D{name}");
    let watch_uri = |version: &str| format!("{MAPS}?&watch=true&timeoutSeconds=290&fieldSelector=metadata.name%3D{name}&allowWatchBookmarks=true&resourceVersion={version}");
    let empty = |version: &str| json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": version}, "items": []});
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &list_uri).await;
        answer(to, 200, &empty("5"));
        let (_, to) = expect(&mut server, "GET", &watch_uri("5")).await;
        // The first watch ends at once, with nothing.
        to.send_response(Response::new(Body::empty()));
    };
    let (changes, ()) = tokio::join!(store.changes("fraud"), server_side);
    let mut changes = changes.unwrap();
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &watch_uri("5")).await;
        answer(to, 410, &status(410, "Expired", "too old resource version"));
        let (_, to) = expect(&mut server, "GET", &list_uri).await;
        answer(to, 200, &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": "9"}, "items": [configmap(&name, "8", json!({"latest": "0"}))]}));
    };
    let (next, ()) = tokio::join!(changes.next(), server_side);
    assert_eq!(next, Some(0), "the model's first revision, committed meanwhile");
}

#[tokio::test]
async fn a_lease_held_by_another_replica_is_not_mine_and_fences_my_writes() {
    let (store, mut server) = store();
    let lease = object_name("lease", "fraud");
    let held = lease_object("55", "replica-b", &micro(Timestamp::now()), 2);
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &held);
        quiet(&mut server).await;
    };
    let (answered, ()) = tokio::join!(store.lease("fraud", "replica-a", Duration::from_secs(10)), server_side);
    assert_eq!(answered.unwrap(), Lease { holder: "replica-b".into(), mine: false }, "no write: b's lease has not expired");

    // replica-a's control loop writes anyway (it has not seen the answer): refused, and the
    // rollout ConfigMap is not even read.
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &held);
        quiet(&mut server).await;
    };
    let next = record(1, 1, false);
    let (written, ()) = tokio::join!(store.save_rollout(&next, Write::Update { leader: Some("replica-a") }, &[]), server_side);
    assert_eq!(written, Err(StoreError::NotLeader { holder: "replica-b".into() }));

    // An expired lease names nobody: its old holder's writes are refused too.
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &lease_object("56", "replica-b", "2020-01-01T00:00:00.000000Z", 2));
        quiet(&mut server).await;
    };
    let (written, ()) = tokio::join!(store.save_rollout(&next, Write::Update { leader: Some("replica-b") }, &[]), server_side);
    assert_eq!(written, Err(StoreError::NotLeader { holder: "nobody".into() }));

    // The loop's routing commit is fenced the same way: the traffic ConfigMap is not read.
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &held);
        quiet(&mut server).await;
    };
    let step = revision("fraud", 4);
    let (committed, ()) = tokio::join!(store.commit(&step, Some("replica-a")), server_side);
    assert_eq!(committed, Err(StoreError::NotLeader { holder: "replica-b".into() }));
}

/// The holder's write: the lease checked, then the rollout ConfigMap replaced with the version
/// read (the fence), the record and its decisions in one write; a 409 there is stale.
#[tokio::test]
async fn the_leaders_rollout_write_carries_the_version_it_read() {
    let (store, mut server) = store();
    let (lease, name) = (object_name("lease", "fraud"), object_name("rollout", "fraud"));
    let decision = Decision { at: 5, action: modelship_rollout::engine::Action::Pause, reason: "hold".into(), evidence: vec![] };
    let stored = configmap(&name, "70", json!({"record": json_of(&record(1, 0, false)), "decisions-1": "[]"}));
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &lease_object("55", "replica-a", &micro(Timestamp::now()), 0));
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 200, &stored);
        let (body, to) = expect(&mut server, "PUT", &format!("{MAPS}/{name}?&fieldManager=modelship")).await;
        let wanted = configmap(&name, "70", json!({"record": json_of(&record(1, 1, false)), "decisions-1": json_of(std::slice::from_ref(&decision))}));
        assert_eq!(body, wanted);
        answer(to, 200, &body);
    };
    let next = record(1, 1, false);
    let (written, ()) = tokio::join!(store.save_rollout(&next, Write::Update { leader: Some("replica-a") }, std::slice::from_ref(&decision)), server_side);
    written.unwrap();

    // Another replica (an operator's command) replaced it between this read and this write.
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 200, &configmap(&name, "71", json!({"record": json_of(&record(1, 1, false))})));
        let (body, to) = expect(&mut server, "PUT", &format!("{MAPS}/{name}?&fieldManager=modelship")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "71");
        answer(to, 409, &status(409, "Conflict", "the object has been modified"));
    };
    let next = record(1, 2, false);
    let (written, ()) = tokio::join!(store.save_rollout(&next, Write::Update { leader: None }, &[]), server_side);
    assert!(matches!(written, Err(StoreError::Stale(_))), "{written:?}");

    // The shared rule still holds: a second rollout while one is in progress is refused unwritten.
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 200, &configmap(&name, "72", json!({"record": json_of(&record(1, 2, false))})));
        quiet(&mut server).await;
    };
    let second = record(2, 0, false);
    let (written, ()) = tokio::join!(store.save_rollout(&second, Write::Create, &[]), server_side);
    assert!(written.unwrap_err().to_string().contains("already has a rollout in progress (rollout 1)"));
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_one_more_transition() {
    let (store, mut server) = store();
    let lease = object_name("lease", "fraud");
    let before = Timestamp::now();
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        // b renewed last in 2020, for 10 s.
        answer(to, 200, &lease_object("55", "replica-b", "2020-01-01T00:00:00.000000Z", 3));
        let (body, to) = expect(&mut server, "PUT", &format!("{LEASES}/{lease}?&fieldManager=modelship")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "55", "a compare and swap on the Lease read");
        let spec = &body["spec"];
        assert_eq!((&spec["holderIdentity"], &spec["leaseDurationSeconds"], &spec["leaseTransitions"]), (&json!("replica-a"), &json!(10), &json!(4)));
        assert_eq!(spec["acquireTime"], spec["renewTime"]);
        let acquired: Timestamp = spec["acquireTime"].as_str().unwrap().parse().unwrap();
        assert!(acquired >= before.checked_sub(SignedDuration::from_millis(1)).unwrap() && acquired <= Timestamp::now(), "{acquired}");
        answer(to, 200, &body);
        body
    };
    let (taken, taken_over) = tokio::join!(store.lease("fraud", "replica-a", Duration::from_secs(10)), server_side);
    assert_eq!(taken.unwrap(), Lease { holder: "replica-a".into(), mine: true });

    // Renewed by its holder: a new renewTime, the same acquireTime and transitions.
    let mut renewed = taken_over.clone();
    renewed["metadata"]["resourceVersion"] = json!("56");
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &renewed);
        let (body, to) = expect(&mut server, "PUT", &format!("{LEASES}/{lease}?&fieldManager=modelship")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "56");
        assert_eq!((&body["spec"]["leaseTransitions"], &body["spec"]["acquireTime"]), (&json!(4), &taken_over["spec"]["acquireTime"]));
        assert_ne!(body["spec"]["renewTime"], taken_over["spec"]["renewTime"]);
        answer(to, 200, &body);
    };
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (kept, ()) = tokio::join!(store.lease("fraud", "replica-a", Duration::from_secs(10)), server_side);
    assert!(kept.unwrap().mine);

    // Two replicas take an expired lease at once: the one whose replace lands second gets 409,
    // reads again, and follows the winner.
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &lease_object("60", "replica-b", "2020-01-01T00:00:00.000000Z", 4));
        let (_, to) = expect(&mut server, "PUT", &format!("{LEASES}/{lease}?&fieldManager=modelship")).await;
        answer(to, 409, &status(409, "Conflict", "the object has been modified"));
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &lease_object("61", "replica-c", &micro(Timestamp::now()), 5));
    };
    let (lost, ()) = tokio::join!(store.lease("fraud", "replica-a", Duration::from_secs(10)), server_side);
    assert_eq!(lost.unwrap(), Lease { holder: "replica-c".into(), mine: false });
}

#[tokio::test]
async fn a_first_lease_is_created_and_released_by_its_holder_only() {
    let (store, mut server) = store();
    let lease = object_name("lease", "fraud");
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 404, &status(404, "NotFound", "leases not found"));
        let (body, to) = expect(&mut server, "POST", &format!("{LEASES}?&fieldManager=modelship")).await;
        assert_eq!(body["metadata"]["name"], json!(lease));
        let spec = &body["spec"];
        // 1.5 s rounds up: the Lease counts whole seconds.
        assert_eq!((&spec["holderIdentity"], &spec["leaseDurationSeconds"], &spec["leaseTransitions"]), (&json!("replica-a"), &json!(2), &json!(0)));
        answer(to, 201, &body);
    };
    let (taken, ()) = tokio::join!(store.lease("fraud", "replica-a", Duration::from_millis(1500)), server_side);
    assert!(taken.unwrap().mine);

    let held = lease_object("80", "replica-a", &micro(Timestamp::now()), 0);
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &held);
        quiet(&mut server).await;
    };
    let (released, ()) = tokio::join!(store.release("fraud", "replica-b"), server_side);
    released.unwrap();
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{LEASES}/{lease}")).await;
        answer(to, 200, &held);
        let (body, to) = expect(&mut server, "PUT", &format!("{LEASES}/{lease}?&fieldManager=modelship")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "80");
        assert_eq!(body["spec"].get("holderIdentity"), None, "given up: free at once");
        answer(to, 200, &body);
    };
    let (released, ()) = tokio::join!(store.release("fraud", "replica-a"), server_side);
    released.unwrap();
}

/// A ConfigMap API in memory for tests whose requests are too many to answer one by one (20
/// replicas' logs): GET, create, replace (refused with 409 unless it carries the version
/// stored), DELETE and LIST by label selector, answering as the API server does. Serves until
/// `requests` have been answered.
async fn serve_configmaps(server: &mut Server, maps: &mut BTreeMap<String, Value>, requests: usize) {
    let mut version = 100;
    for _ in 0..requests {
        let (request, to) = tokio::time::timeout(Duration::from_secs(5), server.next_request()).await.expect("a request within 5 s").expect("the client is gone");
        let (method, uri) = (request.method().as_str().to_owned(), request.uri().clone());
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let path = uri.path().to_owned();
        let name = path.strip_prefix(&format!("{MAPS}/")).map(str::to_owned);
        version += 1;
        match (method.as_str(), name) {
            ("GET", Some(name)) => match maps.get(&name) {
                Some(map) => answer(to, 200, map),
                None => answer(to, 404, &status(404, "NotFound", "configmaps not found")),
            },
            ("GET", None) => {
                let selector = uri.query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("labelSelector="))).expect("a LIST by label");
                let selector = selector.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/");
                let wanted: Vec<(&str, &str)> = selector.split(',').map(|p| p.split_once('=').unwrap()).collect();
                let items: Vec<&Value> = maps.values().filter(|m| wanted.iter().all(|(k, v)| m["metadata"]["labels"][*k] == *v)).collect();
                answer(to, 200, &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": version.to_string()}, "items": items}));
            }
            ("POST", None) => {
                let mut map = body;
                let name = map["metadata"]["name"].as_str().unwrap().to_owned();
                if maps.contains_key(&name) {
                    answer(to, 409, &status(409, "AlreadyExists", "configmaps already exists"));
                    continue;
                }
                map["metadata"]["resourceVersion"] = json!(version.to_string());
                answer(to, 201, &map);
                maps.insert(name, map);
            }
            ("PUT", Some(name)) => {
                let mut map = body;
                if maps.get(&name).map(|m| &m["metadata"]["resourceVersion"]) != Some(&map["metadata"]["resourceVersion"]) {
                    answer(to, 409, &status(409, "Conflict", "the object has been modified"));
                    continue;
                }
                map["metadata"]["resourceVersion"] = json!(version.to_string());
                answer(to, 200, &map);
                maps.insert(name, map);
            }
            ("DELETE", Some(name)) => {
                let wanted = &body["preconditions"]["resourceVersion"];
                match maps.get(&name) {
                    Some(m) if wanted.is_null() || &m["metadata"]["resourceVersion"] == wanted => {
                        answer(to, 200, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}));
                        maps.remove(&name);
                    }
                    Some(_) => answer(to, 409, &status(409, "Conflict", "precondition failed")),
                    None => answer(to, 404, &status(404, "NotFound", "configmaps not found")),
                }
            }
            (method, _) => panic!("unexpected request {method} {uri}"),
        }
    }
}

/// Evidence: each replica appends to its own log (created with the labels the leader lists
/// by), and the leader reads every log on from its own cursor.
#[tokio::test]
async fn each_replica_appends_evidence_to_its_own_log() {
    let (store, mut server) = store();
    let evidence = |replica: &str, n: u64| Evidence { rollout: 1, revision: n, replica: replica.into(), window: Default::default() };
    let name = evidence_object("fraud", "a");
    assert_ne!(name, evidence_object("fraud", "b"));
    assert_ne!(name, evidence_object("churn", "a"));
    assert!(name.len() <= 63 && name.starts_with("modelship-evidence-"), "{name}");
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 404, &status(404, "NotFound", "configmaps not found"));
        let (body, to) = expect(&mut server, "POST", &format!("{MAPS}?&fieldManager=modelship")).await;
        assert_eq!(body["metadata"]["labels"]["modelship.io/log"], "evidence");
        assert_eq!(body["metadata"]["labels"]["modelship.io/model"], model_slug("fraud"));
        assert_eq!((&body["data"]["last"], &body["data"]["e-1"], &body["data"]["replica"]), (&json!("1"), &json!(json_of(&evidence("a", 1))), &json!("a")));
        answer(to, 201, &body);
    };
    let first = evidence("a", 1);
    let (pushed, ()) = tokio::join!(store.push_evidence("fraud", &first), server_side);
    pushed.unwrap();

    // The leader: no cursor reads nothing and takes each log's end; then only what came after.
    let list = format!("{MAPS}?&labelSelector=modelship.io%2Fmodel%3D{}%2Cmodelship.io%2Flog%3Devidence", model_slug("fraud"));
    let log = |name: &str, replica: &str, entries: &[u64]| {
        let mut data = json!({"last": entries.last().unwrap().to_string(), "replica": replica, "written_ms": now_ms().to_string()});
        for n in entries {
            data[format!("e-{n}")] = json!(json_of(&evidence(replica, *n)));
        }
        let mut map = configmap(name, "7", data);
        map["metadata"]["labels"] = json!({"modelship.io/model": model_slug("fraud"), "modelship.io/log": "evidence"});
        map
    };
    let (a, b) = (evidence_object("fraud", "a"), evidence_object("fraud", "b"));
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &list).await;
        answer(to, 200, &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": [log(&a, "a", &[1, 2])]}));
    };
    let (start, ()) = tokio::join!(store.evidence("fraud", None), server_side);
    let (none, cursor) = start.unwrap();
    assert!(none.is_empty());
    assert_eq!(serde_json::from_str::<Value>(cursor.as_deref().unwrap()).unwrap(), json!({a.clone(): 2}));
    // a appended 3 and 4 (1 and 2 were dropped from its log); b started since: all of b's is new.
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &list).await;
        answer(to, 200, &json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {}, "items": [log(&a, "a", &[3, 4]), log(&b, "b", &[1])]}));
    };
    let (read, ()) = tokio::join!(store.evidence("fraud", cursor.as_deref()), server_side);
    let (found, cursor) = read.unwrap();
    let mut found: Vec<(String, u64)> = found.into_iter().map(|e| (e.replica, e.revision)).collect();
    found.sort();
    assert_eq!(found, [("a".to_owned(), 3), ("a".to_owned(), 4), ("b".to_owned(), 1)]);
    assert_eq!(serde_json::from_str::<Value>(cursor.as_deref().unwrap()).unwrap(), json!({a: 4, b: 1}));
}

/// The guides' 20 replicas, each pushing windows of ~60 KB (the size of a busy replica's
/// thinned window) three times between two of the leader's reads: every window reaches the
/// leader, none dropped, in one LIST; the log of a replica silent for an hour is deleted.
#[tokio::test]
async fn twenty_replicas_evidence_reaches_the_leader_whole() {
    let (store, mut server) = store();
    let mut maps = BTreeMap::new();
    // A window as large as a busy replica's: its external values padded to ~60 KB.
    let window = |n: u64| {
        let mut w = modelship_rollout::check::Window { compared: n, agreed: n, ..Default::default() };
        w.external = (0..2_000).map(|i| (format!("padding-{i:05}"), i as f64 + 0.123_456_789)).collect();
        w
    };
    let evidence = |replica: usize, n: u64| Evidence { rollout: 1, revision: 3, replica: format!("replica-{replica}"), window: window(n) };
    assert!(json_of(&evidence(1, 1)).len() > 55_000);
    // A replica gone an hour ago left its log.
    let gone = evidence_object("fraud", "replica-gone");
    let mut old = configmap(&gone, "5", json!({"last": "1", "replica": "replica-gone", "written_ms": (now_ms() - 7_200_000).to_string(), "e-1": json_of(&evidence(99, 1))}));
    old["metadata"]["labels"] = json!({"modelship.io/model": model_slug("fraud"), "modelship.io/log": "evidence"});
    maps.insert(gone.clone(), old);

    let leader = async {
        let (_, cursor) = store.evidence("fraud", None).await.unwrap();
        for round in 1..=3 {
            for replica in 1..=20 {
                store.push_evidence("fraud", &evidence(replica, round)).await.unwrap();
            }
        }
        let read = store.evidence("fraud", cursor.as_deref()).await.unwrap();
        let after = store.evidence("fraud", read.1.as_deref()).await.unwrap();
        (read, after)
    };
    // The first LIST deletes the silent log; 20 × 3 pushes of a GET and a write each; two LISTs.
    let ((read, after), ()) = tokio::join!(leader, serve_configmaps(&mut server, &mut maps, 1 + 1 + 20 * 3 * 2 + 2));
    let (found, cursor) = read;
    assert_eq!(found.len(), 60, "every window of every replica");
    let compared: u64 = found.iter().map(|e| e.window.compared).sum();
    assert_eq!(compared, 20 * (1 + 2 + 3));
    let replicas: std::collections::BTreeSet<&str> = found.iter().map(|e| e.replica.as_str()).collect();
    assert_eq!(replicas.len(), 20);
    assert!(!maps.contains_key(&gone), "the silent replica's log is deleted");
    assert_eq!(maps.len(), 20, "one log per replica");
    for map in maps.values() {
        let size: usize = map["data"].as_object().unwrap().iter().map(|(k, v)| k.len() + v.as_str().unwrap().len()).sum();
        assert!(size <= EVIDENCE_BYTES + 200, "a replica's log stays within its bound: {size}");
    }
    assert_eq!(serde_json::from_str::<BTreeMap<String, u64>>(cursor.as_deref().unwrap()).unwrap().values().copied().collect::<Vec<_>>(), vec![3; 20]);
    assert!(after.0.is_empty(), "nothing is read twice");
}

#[tokio::test]
async fn labels_are_handed_on_in_batches() {
    let (store, mut server) = store();
    let name = object_name("labels", "fraud");
    let batch = vec![("r1".to_owned(), crate::control::Feedback::Label(true)), ("r2".to_owned(), crate::control::Feedback::Reward(0.5))];
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 404, &status(404, "NotFound", "configmaps not found"));
        let (body, to) = expect(&mut server, "POST", &format!("{MAPS}?&fieldManager=modelship")).await;
        assert_eq!(body["data"], json!({"last": "1", "l-1": json_of(&batch)}));
        answer(to, 201, &body);
    };
    let (pushed, ()) = tokio::join!(store.push_labels("fraud", &batch), server_side);
    pushed.unwrap();
    let (nothing, ()) = tokio::join!(store.push_labels("fraud", &[]), quiet(&mut server));
    nothing.unwrap();
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 200, &configmap(&name, "2", json!({"last": "1", "l-1": json_of(&batch)})));
    };
    let (read, ()) = tokio::join!(store.labels("fraud", Some("0")), server_side);
    assert_eq!(read.unwrap(), (batch, Some("1".to_owned())));
}

#[tokio::test]
async fn replicas_are_the_ones_heard_from_lately() {
    let (store, mut server) = store();
    let name = object_name("replicas", "fraud");
    let report = |replica: &str, revision| ReplicaReport { replica: replica.into(), revision, failed: None, admin: None, notifications: Vec::new() };
    let heard = |report: ReplicaReport, ago_ms: u64| json_of(&Heard { at_ms: now_ms() - ago_ms, report });
    let key_a = format!("r-{}", hex::encode(&Sha256::digest(b"a")[..8]));
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        // b was heard from 2 hours ago: forgotten with this write.
        answer(to, 200, &configmap(&name, "9", json!({"r-old": heard(report("b", 1), 7_200_000), "r-c": heard(report("c", 1), 10_000)})));
        let (body, to) = expect(&mut server, "PUT", &format!("{MAPS}/{name}?&fieldManager=modelship")).await;
        let data = body["data"].as_object().unwrap();
        let keys: std::collections::BTreeSet<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(keys, [key_a.as_str(), "r-c"].into());
        let written: Heard = serde_json::from_str(data[&key_a].as_str().unwrap()).unwrap();
        assert_eq!(written.report, report("a", 2));
        assert!(now_ms() - written.at_ms < 1_000);
        answer(to, 200, &body);
    };
    let mine = report("a", 2);
    let (reported, ()) = tokio::join!(store.report("fraud", &mine), server_side);
    reported.unwrap();
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 200, &configmap(&name, "10", json!({"r-a": heard(report("a", 2), 500), "r-c": heard(report("c", 1), 10_000), "r-d": heard(report("d", 2), 0)})));
    };
    let (live, ()) = tokio::join!(store.replicas("fraud", Duration::from_secs(3)), server_side);
    assert_eq!(live.unwrap(), [report("a", 2), report("d", 2)]);
}

/// An API server that does not answer, or refuses: unavailable within the bound, not a hang.
#[tokio::test(start_paused = true)]
async fn a_silent_or_refusing_api_server_is_unavailable() {
    let (store, mut server) = store();
    let name = object_name("traffic", "fraud");
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(to);
    };
    let (latest, ()) = tokio::join!(store.latest("fraud"), server_side);
    let e = latest.unwrap_err();
    assert_eq!(e, StoreError::Unavailable { store: "kubernetes", reason: "no answer within 2 s".into() });
    let server_side = async {
        let (_, to) = expect(&mut server, "GET", &format!("{MAPS}/{name}")).await;
        answer(to, 403, &status(403, "Forbidden", "configmaps \"x\" is forbidden: User \"system:serviceaccount:fleet:fraud\" cannot get resource \"configmaps\""));
    };
    let (latest, ()) = tokio::join!(store.latest("fraud"), server_side);
    let e = latest.unwrap_err().to_string();
    assert!(e.contains("the control store (kubernetes) cannot be reached: the API server answered 403 Forbidden: configmaps \"x\" is forbidden"), "{e}");
}
