//! The simulator's claims, from fixed seeds: the always-valid checks keep their false-alarm
//! bound when looked at every second, catch every bad candidate, and an experiment declares the
//! right winner. The full tables (1,000 runs per cell) are in BENCHMARKS.md, from
//! `cargo run --release -p modelship-rollout --example simulate`; this runs fewer.

#[path = "../examples/simulate.rs"]
#[allow(dead_code)]
mod simulate;

use simulate::{SCENARIOS, Stats, experiment, race, row};

#[test]
fn an_aa_rollout_read_every_second_never_rolls_back_and_every_bad_one_is_caught() {
    let (_, same, _) = SCENARIOS[0];
    let aa = row(same, Stats::Sequential, 1, 1, 40);
    assert_eq!(aa.rolled_back, 0.0, "A/A rolled back in {:.1} % of runs", aa.rolled_back * 100.0);
    for (name, candidate, bad) in &SCENARIOS[1..] {
        assert!(bad);
        let caught = row(*candidate, Stats::Sequential, 30, 3, 20);
        eprintln!("{name}: caught in {:.0} % of runs, median {:?} requests", caught.rolled_back * 100.0, caught.requests);
        assert_eq!(caught.rolled_back, 1.0, "{name}");
    }
}

#[test]
fn the_error_rate_check_is_as_fast_as_a_matched_msprt() {
    let runs = 400;
    let races: Vec<_> = (0..runs).map(|seed| race(seed * 31 + 7, 20_000, (0.01, 0.03))).collect();
    let mut ours: Vec<u64> = races.iter().filter_map(|r| r[0]).collect();
    assert_eq!(ours.len(), runs as usize, "every run detected");
    ours.sort_unstable();
    let median = ours[ours.len() / 2];
    eprintln!("1 % → 3 % at a 50 % split: median {median} requests per arm");
    assert!(median <= 1_100, "median {median}");
    let false_alarms = (0..runs).filter(|seed| race(seed * 31 + 11, 20_000, (0.01, 0.01))[0].is_some()).count();
    assert!(false_alarms as f64 <= 0.01 * runs as f64, "{false_alarms} of {runs} A/A runs concluded");
}

#[test]
fn an_experiment_declares_the_right_winner_and_no_winner_between_equals() {
    let runs = 200;
    let better: Vec<i8> = (0..runs).map(|seed| experiment(seed * 13 + 5, 20_000, (0.10, 0.12))).collect();
    let right = better.iter().filter(|r| **r == 1).count();
    let wrong = better.iter().filter(|r| **r == -1).count();
    assert!(right as f64 >= 0.95 * runs as f64 && wrong as f64 <= 0.01 * runs as f64, "right {right}, wrong {wrong} of {runs}");
    let same = (0..runs).filter(|seed| experiment(seed * 13 + 5, 20_000, (0.10, 0.10)) != 0).count();
    assert!(same as f64 <= 0.01 * runs as f64, "a winner between equals in {same} of {runs}");
}
