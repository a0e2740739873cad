#![no_main]

#[path = "../harness/feature_key.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
