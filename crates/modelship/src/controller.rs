//! `modelship controller`: one rollout driven through an Istio VirtualService or a Gateway API
//! HTTPRoute on a cluster, judged by PromQL over the pods' metrics (feature `kubernetes`; the
//! loop itself is `modelship_server::mesh::controller`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::cli::OutputFormat;

pub const CONTROLLER_HELP: &str = "\
Runs one rollout on a cluster whose mesh splits the traffic: every interval it asks Prometheus the \
spec's checks (PromQL over the pods' metrics, e.g. modelship_requests_total by version and code), \
hands the values to the same rollout engine as `modelship rollout`, and patches the route when the \
step changes: the weighted rule's weights, the x-canary rule's target, the mirror. A rollback sets \
the candidate's weight to 0; a promotion sends everything to the candidate's Service or subset \
(then make that version the stable Deployment's and route back). Every decision is recorded in \
the control store with a lease, so a restarted controller resumes at its step and two never both \
act. It exits 0 when the rollout promotes, 2 when it rolls back, 1 on an error.

Precision: Istio route weights are whole percents, so a spec with a step of 2.5 % is refused for \
Istio; Gateway API weights are written out of 10,000, exact to the basis point.

The route object comes from `modelship deploy k8s` (kubernetes.mesh: istio or gateway); backends \
default to its names: subsets stable/canary, or Services NAME and NAME-canary.

Examples:
  modelship controller fraud --spec rollout.yaml --stable v1.2.0 --mesh istio \\
      --route fraud \\
      --namespace ml-serving --control-store kubernetes://ml-serving
  modelship controller fraud --spec - --stable v1.2.0 --mesh gateway \\
      --route fraud --namespace ml-serving < rollout.yaml
  # after a restart
  modelship controller fraud --resume --mesh istio --route fraud \\
      --namespace ml-serving

A spec for controller mode (every check a prometheus query):
  to: v1.3.0
  canary: {weights: [5, 25, 50, 100], every: 5m}
  checks:
    - prometheus:
        url: http://prometheus.monitoring:9090
        query: 'sum(rate(modelship_requests_total{model=\"{{model}}\",
                  version=\"{{candidate}}\", code=~\"5..\"}[2m]))
                / sum(rate(modelship_requests_total{model=\"{{model}}\",
                  version=\"{{candidate}}\"}[2m]))'
        max: 0.01
  interval: 30s";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MeshArg {
    /// An Istio VirtualService (networking.istio.io/v1), split between DestinationRule subsets
    Istio,
    /// A Gateway API HTTPRoute (gateway.networking.k8s.io/v1), split between Services
    Gateway,
}

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// The model (its name in the metrics' `model` label and in the control store)
    pub model: String,
    /// The rollout spec (YAML or JSON; `-` reads standard input); its `to` is the candidate
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    pub spec: Option<PathBuf>,
    /// Resume the model's rollout in progress instead of starting one
    #[arg(long, conflicts_with_all = ["spec", "stable"])]
    pub resume: bool,
    /// Start even when the last rollout took the same candidate from the same stable version and
    /// has ended (without it, that rollout's outcome is reported again and nothing starts)
    #[arg(long, conflicts_with = "resume")]
    pub again: bool,
    /// The stable version (what the checks' {{stable}} names)
    #[arg(long, value_name = "VERSION", required_unless_present = "resume")]
    pub stable: Option<String>,
    /// Which API splits the traffic
    #[arg(long, value_enum)]
    pub mesh: MeshArg,
    /// The VirtualService or HTTPRoute to patch
    #[arg(long, value_name = "NAME")]
    pub route: String,
    /// Its namespace
    #[arg(long, value_name = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The stable backend: an Istio subset [default: stable], or a Service [default: ROUTE]
    #[arg(long, value_name = "NAME")]
    pub stable_backend: Option<String>,
    /// The candidate's backend: an Istio subset [default: canary], or a Service [default: ROUTE-canary]
    #[arg(long, value_name = "NAME")]
    pub canary_backend: Option<String>,
    /// The header whose rule reaches the candidate
    #[arg(long, value_name = "NAME", default_value = "x-canary")]
    pub header: String,
    /// Where state, decisions and the lease live: embedded (this machine), redis://..., kubernetes[://NAMESPACE]
    #[arg(long, value_name = "STORE", default_value = "kubernetes")]
    pub control_store: String,
    /// This controller's name in the lease [default: $POD_NAME, else HOST-PID]
    #[arg(long, value_name = "NAME")]
    pub holder: Option<String>,
    /// Seconds the lease lasts without renewal
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub lease_ttl: u64,
    /// Progress lines for people, or one JSON object per event for scripts
    #[arg(long, value_enum, default_value = "table")]
    pub output: OutputFormat,
}

pub fn main(args: ControllerArgs) -> ExitCode {
    #[cfg(feature = "kubernetes")]
    return crate::run_command_with_code(run(args));
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = args;
        eprintln!("error: `modelship controller` needs a modelship built with the cargo feature `kubernetes` (cargo build -p modelship --features kubernetes)");
        ExitCode::FAILURE
    }
}

/// The backends' defaults, as `modelship deploy k8s` names them.
#[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
fn backends(args: &ControllerArgs) -> (String, String) {
    match args.mesh {
        MeshArg::Istio => (
            args.stable_backend.clone().unwrap_or_else(|| "stable".to_owned()),
            args.canary_backend.clone().unwrap_or_else(|| "canary".to_owned()),
        ),
        MeshArg::Gateway => (
            args.stable_backend.clone().unwrap_or_else(|| args.route.clone()),
            args.canary_backend.clone().unwrap_or_else(|| format!("{}-canary", args.route)),
        ),
    }
}

#[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
fn lease_ttl(args: &ControllerArgs) -> anyhow::Result<Duration> {
    if !(3..=300).contains(&args.lease_ttl) {
        anyhow::bail!("--lease-ttl {} is out of range: give 3 to 300 seconds", args.lease_ttl);
    }
    Ok(Duration::from_secs(args.lease_ttl))
}

#[cfg(feature = "kubernetes")]
async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;

    use modelship_server::mesh::controller::{Controller, RouteTarget};
    use modelship_server::mesh::{Backends, Mesh};

    let ttl = lease_ttl(&args)?;
    let (stable_backend, canary_backend) = backends(&args);
    let target = RouteTarget {
        mesh: match args.mesh {
            MeshArg::Istio => Mesh::Istio,
            MeshArg::Gateway => Mesh::Gateway,
        },
        namespace: args.namespace.clone(),
        name: args.route.clone(),
        backends: Backends { stable: stable_backend, canary: canary_backend, header: args.header.clone() },
    };
    let start = match (&args.spec, &args.stable) {
        (Some(path), Some(stable)) => {
            let spec = crate::rollout::read_spec(path, None)?;
            let plan = spec.resolve().map_err(|problems| anyhow::anyhow!("invalid rollout spec: {}", problems.join("; ")))?;
            Some((plan, stable.clone()))
        }
        _ => None,
    };
    let state_dir = crate::registry_config::state_dir(&crate::config::ProcessEnv);
    let store = modelship_server::control::open(&args.control_store, &state_dir.join("controller.db")).map_err(|e| anyhow::anyhow!(e))?;
    let holder = args.holder.clone().or_else(|| std::env::var("POD_NAME").ok()).unwrap_or_else(crate::config::default_replica);
    let controller = Controller::connect(target, Arc::clone(&store), &args.model, &holder, ttl).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    let printer = Printer { json: args.output == OutputFormat::Json };
    let record = controller.run(start, args.again, &printer, stop).await?;
    Ok(match record.rollout.phase {
        modelship_rollout::engine::Phase::Promoted => ExitCode::SUCCESS,
        modelship_rollout::engine::Phase::RolledBack { .. } => ExitCode::from(2),
        _ => {
            eprintln!("stopped with rollout {} of {} at step {}; run again with --resume to go on", record.id, record.model, record.rollout.step + 1);
            ExitCode::FAILURE
        }
    })
}

/// Progress lines (or JSON lines) on standard output.
#[cfg(feature = "kubernetes")]
struct Printer {
    json: bool,
}

#[cfg(feature = "kubernetes")]
impl modelship_server::mesh::controller::Progress for Printer {
    fn decided(&self, record: &modelship_server::control::StoredRollout, decisions: &[modelship_rollout::engine::Decision]) {
        for d in decisions {
            if self.json {
                println!("{}", serde_json::json!({"event": "decision", "rollout": record.id, "model": record.model, "decision": d}));
            } else {
                println!("{} rollout {} of {}: {:?}: {}", humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(d.at)), record.id, record.model, d.action, d.reason);
            }
        }
    }

    fn patched(&self, record: &modelship_server::control::StoredRollout, split: modelship_server::mesh::Split) {
        if self.json {
            println!(
                "{}",
                serde_json::json!({"event": "patched", "rollout": record.id, "model": record.model, "weight_bp": split.weight.get(), "shadow_bp": split.shadow.get(), "header": split.header})
            );
        } else {
            println!(
                "rollout {} of {}: route set to {:.2}% candidate, {:.2}% mirrored, canary header {}",
                record.id,
                record.model,
                f64::from(split.weight.get()) / 100.0,
                f64::from(split.shadow.get()) / 100.0,
                if split.header { "to the candidate" } else { "to stable" }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn parse(args: &[&str]) -> Result<ControllerArgs, clap::Error> {
        Cli::try_parse_from([&["modelship-controller"], args].concat()).map(|c| c.args)
    }

    #[test]
    fn backends_default_to_the_generated_names_and_flags_are_checked() {
        let istio = parse(&["fraud", "--spec", "r.yaml", "--stable", "1", "--mesh", "istio", "--route", "fraud"]).unwrap();
        assert_eq!(backends(&istio), ("stable".to_owned(), "canary".to_owned()));
        let gateway = parse(&["fraud", "--spec", "r.yaml", "--stable", "1", "--mesh", "gateway", "--route", "fraud"]).unwrap();
        assert_eq!(backends(&gateway), ("fraud".to_owned(), "fraud-canary".to_owned()));
        let named = parse(&["fraud", "--resume", "--mesh", "gateway", "--route", "fraud", "--stable-backend", "blue", "--canary-backend", "green"]).unwrap();
        assert_eq!(backends(&named), ("blue".to_owned(), "green".to_owned()));
        assert!(parse(&["fraud", "--mesh", "istio", "--route", "fraud"]).is_err(), "a spec and a stable version, or --resume");
        assert!(parse(&["fraud", "--resume", "--spec", "r.yaml", "--mesh", "istio", "--route", "fraud"]).is_err());
        let short = parse(&["fraud", "--resume", "--mesh", "istio", "--route", "fraud", "--lease-ttl", "1"]).unwrap();
        assert!(lease_ttl(&short).unwrap_err().to_string().contains("3 to 300"));
    }
}
