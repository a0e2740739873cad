//! Where the registry lives, for every command that uses it.

use std::path::PathBuf;

use crate::config::Env;

/// `--registry`, else `MODELSHIP_REGISTRY`, else `$XDG_DATA_HOME/modelship/registry`, else
/// `~/.local/share/modelship/registry`.
pub fn registry_root(flag: Option<PathBuf>, env: &dyn Env) -> PathBuf {
    flag.or_else(|| env.get("MODELSHIP_REGISTRY").map(PathBuf::from))
        .or_else(|| env.get("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("modelship/registry")))
        .or_else(|| env.get("HOME").map(|h| PathBuf::from(h).join(".local/share/modelship/registry")))
        .unwrap_or_else(|| PathBuf::from(".modelship/registry"))
}

/// `$MODELSHIP_STATE_DIR`, else `$XDG_STATE_HOME/modelship`, else `~/.local/state/modelship`:
/// traffic history, the admin token.
pub fn state_dir(env: &dyn Env) -> PathBuf {
    env.get("MODELSHIP_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| env.get("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("modelship")))
        .or_else(|| env.get("HOME").map(|h| PathBuf::from(h).join(".local/state/modelship")))
        .unwrap_or_else(|| PathBuf::from(".modelship/state"))
}
