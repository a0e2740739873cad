//! The fuzz target's kept inputs (`fuzz/`), replayed through the same harness the fuzzer runs:
//! none may panic.

#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

#[path = "../../../fuzz/harness/rollout_spec.rs"]
mod rollout_spec;

#[test]
fn rollout_spec_inputs_resolve_and_run_without_panicking() {
    replay::replay(env!("CARGO_MANIFEST_DIR"), "rollout_spec", rollout_spec::run);
}
