//! Replays a fuzz target's kept inputs through its harness in an ordinary `cargo test`: the
//! minimised corpus (`fuzz/corpus/<target>/`, which must not be empty) and the inputs that once
//! failed (`fuzz/regressions/<target>/`). Included by each owning crate's `tests/fuzz_corpus.rs`.

use std::path::{Path, PathBuf};

/// Runs `run` on every kept input of `target`; `manifest_dir` is the including crate's
/// `CARGO_MANIFEST_DIR` (a crate under `crates/`).
pub fn replay(manifest_dir: &str, target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(manifest_dir).join("../../fuzz");
    let corpus = files(&fuzz.join("corpus").join(target));
    assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty or missing");
    let mut inputs = [corpus, files(&fuzz.join("regressions").join(target))].concat();
    inputs.sort();
    for path in inputs {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panic!("{target}: input {} panics", path.display());
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries.map(|e| e.expect("a readable directory entry").path()).filter(|p| p.is_file()).collect()
}
