//! `modelship deploy swarm --apply` on a single-node swarm (`docker swarm init --advertise-addr
//! 127.0.0.1`, left at the end with its `docker_gwbridge` removed): three replicas turn healthy,
//! a rolling image update under load fails no request, a killed replica's task is replaced, and,
//! with the stack's Redis as the fleet control store (`control_store`), a canary set through one
//! replica's admin API splits the whole stack's traffic, and a rollout started through one
//! replica promotes the candidate on all three.
//!
//! The stack runs with `swarm.endpoint_mode: dnsrr` and unpublished ports, and the load comes
//! from clients on the stack's own network (a service of the Debian test image, bash over
//! `/dev/tcp`): these machines' kernel has no IPVS, so Swarm's virtual IPs and routing mesh
//! (the default `vip` mode, which the golden files cover and `docker stack config` checks)
//! accept connections and never answer. What has not run here: the routing mesh itself.

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::docker::{IMAGE, REDIS_IMAGE, TOOLS_IMAGE, docker, engine, image, registry_with_two_versions, sh, wait_for};
use crate::support::{command, free_port};

const STACK: &str = "msswarm";
const SERVICE: &str = "msswarm_msswarm";

/// The swarm this test made (left when dropped), or the one it found (kept).
struct Swarm {
    owned: bool,
}

impl Swarm {
    fn join() -> Swarm {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state == "active" {
            eprintln!("swarm: this engine is already in a swarm; using it and leaving it as it was");
            return Swarm { owned: false };
        }
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        Swarm { owned: true }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["stack", "rm", STACK]).output();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && !containers(&[]).is_empty() {
            thread::sleep(Duration::from_millis(500));
        }
        if self.owned {
            let _ = Command::new("docker").args(["swarm", "leave", "--force"]).output();
            // Leaving keeps the bridge the swarm made; remove it so the engine is as it was.
            for _ in 0..20 {
                let out = Command::new("docker").args(["network", "rm", "docker_gwbridge"]).output();
                let gone = Command::new("docker").args(["network", "inspect", "docker_gwbridge"]).output().is_ok_and(|o| !o.status.success());
                if gone || out.is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The server's containers (`docker ps` filters, e.g. `health=healthy`).
fn containers(filters: &[&str]) -> Vec<String> {
    let mut args = vec!["ps".to_owned(), "-q".to_owned(), "--filter".to_owned(), format!("label=com.docker.swarm.service.name={SERVICE}")];
    for f in filters {
        args.extend(["--filter".to_owned(), (*f).to_owned()]);
    }
    let out = Command::new("docker").args(&args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

fn healthy() -> Vec<String> {
    containers(&["health=healthy"])
}

#[test]
fn swarm_rolls_an_image_update_under_load_replaces_a_killed_replica_and_splits_traffic() {
    let Some(_engine) = engine("swarm_rolls_an_image_update_under_load_replaces_a_killed_replica_and_splits_traffic") else { return };
    image();
    let swarm = Swarm::join();
    let dir = tempfile::tempdir().unwrap();
    registry_with_two_versions(dir.path());
    let (http, grpc, admin) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("deploy.yaml"),
        format!(
            "name: {STACK}\nmodel: {{registry: fraud@production, registry_dir: registry}}\nimage: {{name: modelship-e2e, tag: test}}\n\
             replicas: 3\nports: {{http: {http}, grpc: {grpc}, admin: {admin}, publish: false}}\nswarm: {{endpoint_mode: dnsrr}}\n\
             feature_store: {{service: true, image: '{REDIS_IMAGE}'}}\ncontrol_store: redis://redis:6379/1\n\
             strategy: {{parallelism: 1, delay: 2s, order: start-first, failure_action: rollback, monitor: 5s}}\n\
             restart: {{condition: on-failure, delay: 1s, max_attempts: 5, window: 30s}}\n\
             healthcheck: {{interval: 1s, timeout: 2s, start_period: 20s, retries: 3}}\ndrain: {{delay: 3s, grace: 10s}}\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    sh(command().current_dir(dir.path()).args(["deploy", "swarm", "--file", "deploy.yaml", "--out", "out", "--apply", "--no-build", "--image", IMAGE]));
    wait_for("3 healthy replicas", Duration::from_secs(120), || healthy().len() == 3);
    eprintln!("swarm: 3 replicas healthy {:.1} s after `deploy swarm --apply` began", started.elapsed().as_secs_f64());

    // A rolling update of the image (start-first, one at a time) under load.
    docker(&["tag", IMAGE, "modelship-e2e:test-2"]);
    let load = NetLoad::start(http, 4);
    wait_for("the load flowing", Duration::from_secs(60), || load.answered() >= 20);
    let update_started = Instant::now();
    docker(&["service", "update", "--detach", "--no-resolve-image", "--image", "modelship-e2e:test-2", SERVICE]);
    wait_for("the rolling update to complete", Duration::from_secs(180), || {
        let state = docker(&["service", "inspect", "--format", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}", SERVICE]);
        assert!(!state.contains("rollback") && state != "paused", "the update failed: {state}\n{}", docker(&["service", "ps", "--no-trunc", SERVICE]));
        state == "completed"
    });
    let update_seconds = update_started.elapsed().as_secs_f64();
    wait_for("3 healthy replicas on the new image", Duration::from_secs(60), || {
        let ids = healthy();
        ids.len() == 3 && ids.iter().all(|id| docker(&["inspect", "--format", "{{.Config.Image}}", id]).starts_with("modelship-e2e:test-2"))
    });
    thread::sleep(Duration::from_secs(1));
    let (ok, failed, _) = load.finish();
    assert!(failed.is_empty(), "rolling update: {} failed of {}: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(5)]);
    eprintln!("swarm: rolling image update of 3 replicas in {update_seconds:.1} s under load: {ok} requests, 0 failed");

    // A killed replica's task is replaced.
    let before = healthy();
    docker(&["kill", &before[0]]);
    wait_for("the killed replica replaced", Duration::from_secs(90), || {
        let now = healthy();
        now.len() == 3 && !now.contains(&before[0])
    });

    // A canary set once, through one replica: the fleet store carries it to all three.
    let admin_url = format!("http://127.0.0.1:{admin}");
    let replicas = healthy();
    let through = |id: &str, args: &[&str]| {
        let mut all = vec!["exec", id, "/usr/local/bin/modelship"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--admin", &admin_url]);
        docker(&all)
    };
    through(&replicas[0], &["traffic", "set", "fraud", "--candidate", "2", "--weight", "50%", "--reason", "canary"]);
    for id in &replicas {
        wait_for("the canary on every replica", Duration::from_secs(10), || {
            let status: serde_json::Value = serde_json::from_str(&through(id, &["traffic", "status", "fraud", "--output", "json"])).unwrap();
            status["traffic"]["candidate"]["version"] == "2"
        });
    }
    let load = NetLoad::start(http, 4);
    wait_for("both versions answering", Duration::from_secs(30), || load.seen("1") && load.seen("2"));
    through(&replicas[1], &["traffic", "abort", "fraud", "--reason", "now a rollout"]);
    let (_, failed, versions) = load.finish();
    assert!(failed.is_empty(), "canary: {failed:?}");

    // A rollout started through replica 2, led by whichever replica holds the lease, judged on
    // every replica's evidence, promotes version 2 on all three.
    let load = NetLoad::start(http, 4);
    let spec = "to: '2'\nsteps:\n  - weight: {weight: 50%, hold: 2s}\nchecks: [{error_rate: {}}]\nfailure: {min_samples: 10, deadline: 3m}\ninterval: 500ms\n";
    // The image has no shell and a read-only root: the spec goes in on standard input.
    let mut start = Command::new("docker")
        .args(["exec", "-i", &replicas[1], "/usr/local/bin/modelship", "rollout", "start", "fraud", "--spec", "-", "--admin", &admin_url])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(spec);
    assert!(start.status.success(), "rollout start: {}", String::from_utf8_lossy(&start.stderr));
    start.stdout.clear();
    wait_for("the rollout promoted", Duration::from_secs(90), || {
        let status: serde_json::Value = serde_json::from_str(&through(&replicas[2], &["rollout", "status", "fraud", "--output", "json"])).unwrap();
        assert_ne!(status["phase"]["phase"], "rolled_back", "{status}");
        status["phase"]["phase"] == "promoted"
    });
    let (_, failed, _) = load.finish();
    assert!(failed.is_empty(), "during the rollout: {failed:?}");
    let load = NetLoad::start(http, 4);
    wait_for("the load flowing", Duration::from_secs(60), || load.answered() >= 20);
    let (ok, failed, after) = load.finish();
    assert!(failed.is_empty(), "after promotion: {failed:?}");
    assert_eq!(after.keys().collect::<Vec<_>>(), ["2"], "every replica serves the promoted version ({ok} requests)");
    eprintln!("swarm: a canary set once through the fleet store {versions:?}; a rollout promoted: {after:?}");

    // `--down` removes the stack's services, containers, network and per-slot volumes.
    let down = sh(command().current_dir(dir.path()).args(["deploy", "swarm", "--file", "deploy.yaml", "--down"]));
    assert!(down.starts_with(&format!("took down the Swarm stack {STACK}: 2 service(s)")), "{down}");
    let filter = format!("label=com.docker.stack.namespace={STACK}");
    for listing in [&["ps", "-aq"][..], &["network", "ls", "-q"], &["volume", "ls", "-q"], &["service", "ls", "-q"]] {
        assert_eq!(docker(&[listing, &["--filter", &filter][..]].concat()), "", "--down left docker {listing:?}");
    }
    assert_eq!(docker(&["volume", "ls", "-q", "--filter", &format!("name={STACK}-")]), "", "the replica slots' state volumes");
    let again = sh(command().current_dir(dir.path()).args(["deploy", "swarm", "--file", "deploy.yaml", "--down"]));
    assert!(again.starts_with(&format!("nothing to take down: no container, network or volume of the Swarm stack {STACK}")), "{again}");
    let owned = swarm.owned;
    drop(swarm);
    if owned {
        assert_eq!(docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]), "inactive");
        let bridge = Command::new("docker").args(["network", "inspect", "docker_gwbridge"]).output().unwrap();
        assert!(!bridge.status.success(), "docker_gwbridge is left behind");
    }
}

/// Runs a command with `input` on its standard input.
trait WithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl WithStdin for Command {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// Clients on the stack's network: a service of the test image running `clients` bash loops
/// that POST a row to `/v1/predict` on the server's service name (one connection per request,
/// so DNS round robin spreads them) and write one line per request: the status and the
/// `x-model-version` header, or `connect-failed`.
struct NetLoad {
    dir: tempfile::TempDir,
    service: String,
}

const LOAD_SCRIPT: &str = r#"
body='{"features": [[0.1, 1.2, -0.3, 0.4, 2.5, -1.6, 0.7, 0.8, -0.9, 1.0, 0.1, 0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, 1.0, -1.1, 0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, 0.9, 1.0]]}'
client() {
  while [ ! -e /out/stop ]; do
    if exec 3<>"/dev/tcp/$HOST/$PORT"; then
      printf 'POST /v1/predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' "$HOST" "${#body}" "$body" >&3
      response=$(timeout 10 cat <&3 | tr -d '\r')
      exec 3>&-
      status=$(printf '%s\n' "$response" | head -n 1 | cut -d ' ' -f 2)
      version=$(printf '%s\n' "$response" | grep -i '^x-model-version:' | cut -d ' ' -f 2)
      echo "${status:-no-answer} ${version:--}" >> "/out/results-$1"
    else
      echo "connect-failed -" >> "/out/results-$1"
    fi
    sleep 0.01
  done
}
for i in $(seq "$CLIENTS"); do client "$i" & done
wait
"#;

impl Drop for NetLoad {
    fn drop(&mut self) {
        // Also when the test fails midway: the stack's network cannot go while this runs.
        let _ = Command::new("docker").args(["service", "rm", &self.service]).output();
    }
}

impl NetLoad {
    fn start(port: u16, clients: usize) -> NetLoad {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("load.sh"), LOAD_SCRIPT).unwrap();
        let service = format!("{STACK}-load-{}", free_port());
        docker(&[
            "service", "create", "--detach", "--quiet", "--name", &service, "--restart-condition", "none",
            "--network", &format!("{STACK}_default"),
            "--mount", &format!("type=bind,src={},dst=/out", dir.path().display()),
            "--env", &format!("HOST={STACK}"), "--env", &format!("PORT={port}"), "--env", &format!("CLIENTS={clients}"),
            TOOLS_IMAGE, "bash", "/out/load.sh",
        ]);
        NetLoad { dir, service }
    }

    fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("results-")) {
                lines.extend(std::fs::read_to_string(&path).unwrap_or_default().lines().map(str::to_owned));
            }
        }
        lines
    }

    fn answered(&self) -> usize {
        self.lines().iter().filter(|l| l.starts_with("200 ")).count()
    }

    fn seen(&self, version: &str) -> bool {
        self.lines().iter().any(|l| l == &format!("200 {version}"))
    }

    /// Stops the clients; returns (successes, failures, versions seen).
    fn finish(self) -> (usize, Vec<String>, BTreeMap<String, usize>) {
        std::fs::write(self.dir.path().join("stop"), b"").unwrap();
        wait_for("the load clients to stop", Duration::from_secs(30), || {
            docker(&["service", "ps", "--format", "{{.CurrentState}}", &self.service]).starts_with("Complete")
        });
        let (mut ok, mut failed, mut versions) = (0, Vec::new(), BTreeMap::new());
        for line in self.lines() {
            match line.split_once(' ') {
                Some(("200", version)) => {
                    ok += 1;
                    *versions.entry(version.to_owned()).or_default() += 1;
                }
                _ => failed.push(line),
            }
        }
        (ok, failed, versions)
    }
}
