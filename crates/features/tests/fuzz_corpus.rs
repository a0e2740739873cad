//! The fuzz target's kept inputs (`fuzz/`), replayed through the same harness the fuzzer runs:
//! none may panic.

#[path = "../../../fuzz/harness/replay.rs"]
mod replay;

#[path = "../../../fuzz/harness/feature_key.rs"]
mod feature_key;

#[test]
fn feature_key_inputs_parse_and_assemble_without_panicking() {
    replay::replay(env!("CARGO_MANIFEST_DIR"), "feature_key", feature_key::run);
}
