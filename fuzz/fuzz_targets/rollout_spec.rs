#![no_main]

#[path = "../harness/rollout_spec.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
