//! Each gate judged from what was measured. Pure: the binary measures, these decide.

use modelship_rollout::stats;

use crate::contract::{Change, ChangeKind, Side};
use crate::limit::{Bound, Drop, LatencyBudget, Op};
use crate::measure::{Latency, Memory};
use crate::metric::{Metric, Task, Truth};
use crate::report::{Check, Gate, GateName, Limit, Unit, Verdict};

/// Quantile bins of the reference's predictions for the PSI, as the rollout's drift check uses.
pub const PSI_BINS: usize = 10;

/// The quality thresholds that do not apply to `task`, named with what would: checked before
/// anything runs, so a wrong flag is a usage error rather than a failed gate.
pub fn check_task(task: Task, bounds: &[Bound], drops: &[Drop]) -> Result<(), String> {
    let wrong: Vec<Metric> = bounds.iter().map(|b| b.metric).chain(drops.iter().map(|d| d.metric)).filter(|m| m.task() != task).collect();
    match wrong.first() {
        None => Ok(()),
        Some(m) => {
            let fitting: Vec<&str> = Metric::defaults(task).iter().map(|m| m.as_str()).collect();
            Err(format!("{m} is a {} metric and this model is judged as {task}: use {} (or --task {})", m.task(), fitting.join(", "), m.task()))
        }
    }
}

fn describe(metric: Metric) -> &'static str {
    match metric {
        Metric::Auc => "area under the ROC curve",
        Metric::Accuracy => "share of rows on the right side of 0.5",
        Metric::LogLoss => "mean cross-entropy of the probabilities",
        Metric::Rmse => "root mean squared error",
        Metric::Mae => "mean absolute error",
        Metric::R2 => "share of the variance explained",
    }
}

/// The metrics on the data: each threshold judged, the task's usual metrics reported beside them,
/// and with a reference model's predictions on the same rows, each `--max-drop` judged.
pub fn quality(predictions: &[f64], truth: &Truth, bounds: &[Bound], reference: Option<&[f64]>, drops: &[Drop]) -> Gate {
    let mut metrics: Vec<Metric> = Metric::defaults(truth.task()).to_vec();
    for m in bounds.iter().map(|b| b.metric).chain(drops.iter().map(|d| d.metric)) {
        if !metrics.contains(&m) {
            metrics.push(m);
        }
    }
    let mut checks = Vec::new();
    for metric in metrics {
        let value = metric.compute(predictions, truth);
        let limits: Vec<Option<Limit>> = {
            let named: Vec<Option<Limit>> = bounds.iter().filter(|b| b.metric == metric).map(|b| Some(Limit { op: b.op, value: b.value })).collect();
            if named.is_empty() { vec![None] } else { named }
        };
        for limit in limits {
            checks.push(match value {
                Some(v) => Check::judged(metric.as_str(), v, Unit::Number, limit, describe(metric)),
                None => Check::unmeasured(metric.as_str(), Unit::Number, limit, format!("cannot compute {metric} on these rows (every label the same class?)")),
            });
        }
    }
    for drop in drops {
        let id = format!("{}_drop", drop.metric);
        let limit = Some(Limit { op: Op::AtMost, value: drop.amount });
        let Some(reference) = reference else {
            checks.push(Check::unmeasured(id, Unit::Number, limit, "no reference model to compare with (--against)"));
            continue;
        };
        checks.push(match (drop.metric.compute(reference, truth), drop.metric.compute(predictions, truth)) {
            (Some(r), Some(c)) => {
                let regression = drop.regression(r, c);
                let how = if regression > 0.0 { format!("{regression:.4} worse") } else { format!("{:.4} better", -regression) };
                Check::judged(id, regression, Unit::Number, limit, format!("{} {c:.4} against the reference's {r:.4} on the same rows: {how}", drop.metric))
            }
            _ => Check::unmeasured(id, Unit::Number, limit, format!("cannot compute {} for both models on these rows", drop.metric)),
        });
    }
    Gate::new(GateName::Quality, checks)
}

/// The contract's changes: breaking ones fail unless `allowed` says why they may pass (a new
/// major version); compatible ones pass. No change: one passing check that says so.
pub fn contract(changes: &[Change], summary: &str, allowed: Option<&str>) -> Gate {
    if changes.is_empty() {
        let same = Check { id: "signature".into(), value: None, unit: Unit::Number, limit: None, verdict: Verdict::Pass, detail: format!("unchanged: {summary}") };
        return Gate::new(GateName::Contract, vec![same]);
    }
    let checks = changes
        .iter()
        .map(|c| {
            let side = match c.side {
                Side::Input => "input",
                Side::Output => "output",
            };
            let id = if c.kind == ChangeKind::Prediction { "v1_predict".to_owned() } else { format!("{side}.{}", c.name) };
            let (verdict, detail) = match (c.breaking, allowed) {
                (false, _) => (Verdict::Pass, format!("{} (compatible)", c.detail)),
                (true, Some(why)) => (Verdict::Pass, format!("{} (breaking, allowed: {why})", c.detail)),
                (true, None) => (Verdict::Fail, format!("{} (breaking)", c.detail)),
            };
            Check { id, value: None, unit: Unit::Number, limit: None, verdict, detail }
        })
        .collect();
    Gate::new(GateName::Contract, checks)
}

/// p50 and p99 of each measured batch size, p99 judged against its budget.
pub fn latency(measured: &[Latency], budgets: &[LatencyBudget]) -> Gate {
    let mut checks = Vec::new();
    for l in measured {
        let rows = if l.batch == 1 { "1 row".to_owned() } else { format!("{} rows", l.batch) };
        let runs = format!("{} timed runs of {rows} on this machine", l.runs);
        checks.push(Check::judged(format!("p50_batch_{}", l.batch), l.p50_ms, Unit::Ms, None, runs));
        let budget = budgets.iter().find(|b| b.batch == l.batch).map(|b| Limit { op: Op::AtMost, value: b.max.as_secs_f64() * 1e3 });
        checks.push(Check::judged(format!("p99_batch_{}", l.batch), l.p99_ms, Unit::Ms, budget, format!("mean {:.3} ms, slowest {:.3} ms", l.mean_ms, l.max_ms)));
    }
    Gate::new(GateName::Latency, checks)
}

/// The memory measured, and what a Deployment of `workers` workers should request; judged
/// against `max` (bytes) when given.
pub fn resources(memory: &Memory, workers: usize, max: Option<u64>) -> Gate {
    let sizing = memory.size(workers);
    let mib = crate::limit::mebibytes;
    let workers_text = if sizing.workers == 1 { "1 worker".to_owned() } else { format!("{} workers", sizing.workers) };
    let checks = vec![
        Check::judged("memory_loaded", memory.loaded_bytes as f64, Unit::Bytes, None, "resident memory with ONNX Runtime and the model loaded once"),
        Check::judged("memory_per_worker", memory.per_worker_bytes as f64, Unit::Bytes, None, "what each further worker's session adds"),
        Check::judged("memory_working", memory.working_bytes as f64, Unit::Bytes, None, "the peak above that while running"),
        Check::judged(
            "memory_request",
            sizing.request_bytes as f64,
            Unit::Bytes,
            max.map(|m| Limit { op: Op::AtMost, value: m as f64 }),
            format!(
                "for {workers_text}, with the server's own {} MiB: resources.requests.memory {}, resources.limits.memory {}",
                crate::measure::SERVER_BYTES >> 20,
                mib(sizing.request_bytes),
                mib(sizing.limit_bytes)
            ),
        ),
    ];
    Gate::new(GateName::Resources, checks)
}

/// The candidate's predictions against the reference's on the same rows: PSI over the
/// reference's quantile bins, judged against `max_psi`; the mean of each beside it.
pub fn distribution(reference: &[f64], candidate: &[f64], max_psi: f64) -> Gate {
    let limit = Some(Limit { op: Op::AtMost, value: max_psi });
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let psi = match stats::psi(reference, candidate, PSI_BINS) {
        Some(psi) => {
            let size = if psi < 0.1 { "stable" } else if psi < 0.25 { "a moderate shift" } else { "a large shift" };
            Check::judged("psi", psi, Unit::Number, limit, format!("population stability index over {PSI_BINS} quantile bins of the reference's predictions: {size}"))
        }
        None => Check::unmeasured("psi", Unit::Number, limit, "no predictions to compare"),
    };
    let means = Check::judged("mean_prediction", mean(candidate), Unit::Number, None, format!("the reference's: {:.4}", mean(reference)));
    Gate::new(GateName::Distribution, vec![psi, means])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn verdicts(gate: &Gate) -> Vec<(&str, Verdict)> {
        gate.checks.iter().map(|c| (c.id.as_str(), c.verdict)).collect()
    }

    #[test]
    fn quality_judges_thresholds_and_reports_the_rest() {
        let truth = Truth::Classes(vec![false, false, true, true]);
        let p = [0.1, 0.4, 0.35, 0.8];
        let bounds = [Bound::min("auc=0.7").unwrap(), Bound::max("log_loss=0.3").unwrap()];
        let gate = quality(&p, &truth, &bounds, None, &[]);
        assert_eq!(verdicts(&gate), [("auc", Verdict::Pass), ("accuracy", Verdict::Measured), ("log_loss", Verdict::Fail)]);
        assert_eq!(gate.verdict, Verdict::Fail);
        assert!((gate.checks[2].value.unwrap() - 0.472_287_953_809_176_15).abs() < 1e-12);
        // Against a reference on the same rows: AUC 1.0 there, 0.75 here.
        let reference = [0.1, 0.2, 0.8, 0.9];
        let drops = [Drop::parse("auc=0.3").unwrap(), Drop::parse("accuracy=0.1").unwrap()];
        let gate = quality(&p, &truth, &[], Some(&reference), &drops);
        assert_eq!(&verdicts(&gate)[3..], [("auc_drop", Verdict::Pass), ("accuracy_drop", Verdict::Fail)]);
        assert!(gate.checks[3].detail.contains("auc 0.7500 against the reference's 1.0000 on the same rows: 0.2500 worse"), "{:?}", gate.checks[3]);
        // Without a reference a drop cannot be judged: it fails.
        assert_eq!(verdicts(&quality(&p, &truth, &[], None, &drops[..1]))[3], ("auc_drop", Verdict::Fail));
        // One class only: AUC has no value; with a floor on it, that fails.
        let one_class = Truth::Classes(vec![true; 4]);
        let gate = quality(&p, &one_class, &bounds[..1], None, &[]);
        assert_eq!((gate.checks[0].value, gate.checks[0].verdict), (None, Verdict::Fail));
    }

    #[test]
    fn regression_quality_and_task_checks() {
        let truth = Truth::Values(vec![3.0, -0.5, 2.0, 7.0]);
        let gate = quality(&[2.5, 0.0, 2.0, 8.0], &truth, &[Bound::min("r2=0.9").unwrap()], None, &[]);
        assert_eq!(verdicts(&gate), [("rmse", Verdict::Measured), ("mae", Verdict::Measured), ("r2", Verdict::Pass)]);
        assert_eq!(check_task(Task::Regression, &[Bound::min("r2=0.9").unwrap()], &[]), Ok(()));
        let err = check_task(Task::Regression, &[Bound::min("auc=0.9").unwrap()], &[]).unwrap_err();
        assert!(err.contains("auc is a classification metric") && err.contains("use rmse, mae, r2"), "{err}");
    }

    #[test]
    fn contract_fails_on_breaking_changes_unless_allowed() {
        let renamed = Change { side: Side::Input, name: "input".into(), kind: ChangeKind::Renamed, breaking: true, detail: "input 'input' renamed 'features'".into() };
        let added = Change { side: Side::Output, name: "x".into(), kind: ChangeKind::Added, breaking: false, detail: "output 'x' added".into() };
        let gate = contract(&[renamed.clone(), added.clone()], "", None);
        assert_eq!(verdicts(&gate), [("input.input", Verdict::Fail), ("output.x", Verdict::Pass)]);
        assert!(gate.checks[0].detail.ends_with("(breaking)") && gate.checks[1].detail.ends_with("(compatible)"));
        let gate = contract(&[renamed], "", Some("2.0.0 is a new major version over 1.4.0"));
        assert_eq!(gate.verdict, Verdict::Pass);
        assert!(gate.checks[0].detail.contains("breaking, allowed: 2.0.0 is a new major"), "{:?}", gate.checks[0]);
        let same = contract(&[], "1 input, 2 outputs", None);
        assert_eq!((verdicts(&same), same.checks[0].value, same.checks[0].detail.as_str()), (vec![("signature", Verdict::Pass)], None, "unchanged: 1 input, 2 outputs"));
    }

    #[test]
    fn latency_budgets_judge_their_batch() {
        let one = Latency { batch: 1, runs: 100, p50_ms: 0.2, p99_ms: 0.9, mean_ms: 0.25, max_ms: 1.2 };
        let many = Latency { batch: 32, runs: 100, p50_ms: 2.0, p99_ms: 45.0, mean_ms: 3.0, max_ms: 50.0 };
        let budgets = [LatencyBudget { batch: 1, max: Duration::from_millis(1) }, LatencyBudget { batch: 32, max: Duration::from_millis(40) }];
        let gate = latency(&[one, many], &budgets);
        assert_eq!(
            verdicts(&gate),
            [("p50_batch_1", Verdict::Measured), ("p99_batch_1", Verdict::Pass), ("p50_batch_32", Verdict::Measured), ("p99_batch_32", Verdict::Fail)]
        );
        assert_eq!(gate.checks[3].limit_text(), "<= 40.000 ms");
        assert_eq!((gate.checks[2].detail.as_str(), gate.checks[3].detail.as_str()), ("100 timed runs of 32 rows on this machine", "mean 3.000 ms, slowest 50.000 ms"));
    }

    #[test]
    fn resources_size_a_deployment() {
        let memory = Memory { loaded_bytes: 40 << 20, per_worker_bytes: 5 << 20, working_bytes: 1 << 20 };
        let gate = resources(&memory, 2, None);
        assert_eq!(gate.verdict, Verdict::Measured);
        assert_eq!(gate.checks[3].detail, "for 2 workers, with the server's own 16 MiB: resources.requests.memory 63Mi, resources.limits.memory 95Mi");
        assert_eq!(resources(&memory, 2, Some(62 << 20)).verdict, Verdict::Fail);
        assert_eq!(resources(&memory, 1, Some(64 << 20)).verdict, Verdict::Pass);
    }

    #[test]
    fn distribution_judges_the_psi() {
        let expected: Vec<f64> = (0..20).map(|i| 0.05 * f64::from(i)).collect();
        let shifted: Vec<f64> = expected.iter().map(|x| x + 0.2).collect();
        let same = distribution(&expected, &expected, 0.1);
        assert_eq!((same.verdict, same.checks[0].value), (Verdict::Pass, Some(0.0)));
        let moved = distribution(&expected, &shifted, 0.1);
        assert_eq!(moved.verdict, Verdict::Fail);
        assert!(moved.checks[0].detail.ends_with("a large shift"), "{:?}", moved.checks[0]);
        assert_eq!(moved.checks[1].detail, "the reference's: 0.4750");
    }
}
