//! `.modelship-generated`: the files each target wrote into an output directory, with their
//! SHA-256, so that regenerating removes what the previous generation wrote and this one no
//! longer writes (a canary's `virtualservice.yaml` after a switch to rolling), and nothing else.
//!
//! A file is removed only when the manifest lists it for the same target, no other target lists
//! it, and it is byte for byte what was written (its digest still matches): a file the user made
//! or edited since is kept, and the CLI says so. Several targets may share one directory
//! (`deploy/` is every target's default), so each line names its target. The digests are
//! computed by the caller; this module only decides.

use crate::Target;

pub const FILE: &str = ".modelship-generated";

/// One generated file: `TARGET sha256:HEX PATH` in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target: String,
    pub digest: String,
    pub path: String,
}

/// What to do with a file the previous generation of this target wrote and this one does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// Unchanged since it was written: remove it.
    Remove(String),
    /// Changed since (or the manifest's line is not a plain relative path): keep it, warn.
    KeepEdited(String),
}

/// `sha256:HEX` of a file's bytes, as the manifest and the image's content tag record it.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads a manifest; lines that are not `TARGET DIGEST PATH` are skipped (a hand-edited manifest
/// can only make fewer files removable, never more).
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let (target, digest, path) = (parts.next()?, parts.next()?, parts.next()?);
            digest.starts_with("sha256:").then(|| Entry { target: target.to_owned(), digest: digest.to_owned(), path: path.to_owned() })
        })
        .collect()
}

pub fn render(entries: &[Entry]) -> String {
    let mut text = String::from(
        "# Files `modelship deploy` wrote here: TARGET SHA256 PATH. A later generation of the same target removes\n\
         # those it no longer writes, unless they changed since. Do not edit.\n",
    );
    for e in entries {
        text.push_str(&format!("{} {} {}\n", e.target, e.digest, e.path));
    }
    text
}

/// The next manifest (the other targets' lines, then this generation's) and the previous
/// generation's files to remove or keep. `written` is this generation's (path, digest);
/// `on_disk(path)` the digest of the file as it is now, `None` when it is gone.
pub fn reconcile(previous: &[Entry], target: Target, written: &[(&str, String)], on_disk: impl Fn(&str) -> Option<String>) -> (Vec<Entry>, Vec<Stale>) {
    let name = target.cli_name();
    // Other targets keep their files, a file this generation rewrote with its new digest: a
    // file two targets write (the Dockerfile of `docker` and of `compose --apply`) stays as long
    // as either still writes it.
    let mut next: Vec<Entry> = previous
        .iter()
        .filter(|e| e.target != name)
        .map(|e| match written.iter().find(|(p, _)| *p == e.path) {
            Some((_, digest)) => Entry { digest: digest.clone(), ..e.clone() },
            None => e.clone(),
        })
        .collect();
    let others: Vec<&str> = next.iter().map(|e| e.path.as_str()).collect();
    let mut stale = Vec::new();
    for old in previous.iter().filter(|e| e.target == name) {
        if written.iter().any(|(p, _)| *p == old.path) || others.contains(&old.path.as_str()) {
            continue;
        }
        if !is_plain_relative(&old.path) {
            stale.push(Stale::KeepEdited(old.path.clone()));
            continue;
        }
        match on_disk(&old.path) {
            None => {}
            Some(digest) if digest == old.digest => stale.push(Stale::Remove(old.path.clone())),
            Some(_) => stale.push(Stale::KeepEdited(old.path.clone())),
        }
    }
    next.extend(written.iter().map(|(path, digest)| Entry { target: name.to_owned(), digest: digest.clone(), path: (*path).to_owned() }));
    (next, stale)
}

/// `a/b.yaml`, never `/etc/x`, `../x` or `a/../../x`: a manifest line cannot reach outside the
/// output directory.
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target: &str, digest: &str, path: &str) -> Entry {
        Entry { target: target.to_owned(), digest: format!("sha256:{digest}"), path: path.to_owned() }
    }

    #[test]
    fn the_manifest_reads_back_what_it_wrote_and_skips_other_lines() {
        let entries = vec![entry("k8s", "aa", "deployment.yaml"), entry("compose", "bb", "docker-compose.yml")];
        assert_eq!(parse(&render(&entries)), entries);
        assert_eq!(parse("garbage\nk8s md5:x a.yaml\nk8s sha256:cc my file.yaml\n"), [entry("k8s", "cc", "my file.yaml")]);
    }

    #[test]
    fn stale_files_are_removed_only_when_unchanged_and_this_targets_alone() {
        let previous = vec![
            entry("k8s", "v1", "virtualservice.yaml"),
            entry("k8s", "d1", "deployment-canary.yaml"),
            entry("k8s", "k1", "kustomization.yaml"),
            entry("k8s", "e1", "edited.yaml"),
            entry("k8s", "g1", "gone.yaml"),
            entry("k8s", "x1", "../outside.yaml"),
            entry("k8s", "s1", "shared.yaml"),
            entry("docker", "s2", "shared.yaml"),
            entry("docker", "f1", "Dockerfile"),
        ];
        let on_disk = |path: &str| match path {
            "virtualservice.yaml" => Some("sha256:v1".to_owned()),
            "deployment-canary.yaml" => Some("sha256:d1".to_owned()),
            "edited.yaml" => Some("sha256:changed".to_owned()),
            "../outside.yaml" => Some("sha256:x1".to_owned()),
            _ => None,
        };
        let written = [("kustomization.yaml", "sha256:k2".to_owned())];
        let (next, stale) = reconcile(&previous, Target::Kubernetes, &written, on_disk);
        assert_eq!(
            stale,
            [
                Stale::Remove("virtualservice.yaml".to_owned()),
                Stale::Remove("deployment-canary.yaml".to_owned()),
                Stale::KeepEdited("edited.yaml".to_owned()),
                Stale::KeepEdited("../outside.yaml".to_owned()),
            ]
        );
        assert_eq!(next, [entry("docker", "s2", "shared.yaml"), entry("docker", "f1", "Dockerfile"), entry("k8s", "k2", "kustomization.yaml")]);
    }

    #[test]
    fn a_file_two_targets_write_stays_while_either_writes_it() {
        let previous = vec![entry("docker", "f1", "Dockerfile"), entry("docker", "i1", ".dockerignore")];
        let written = [("Dockerfile", "sha256:f2".to_owned()), ("docker-compose.yml", "sha256:c1".to_owned())];
        let (next, stale) = reconcile(&previous, Target::Compose, &written, |_| Some("sha256:f1".to_owned()));
        assert!(stale.is_empty(), "{stale:?}");
        assert_eq!(
            next,
            [entry("docker", "f2", "Dockerfile"), entry("docker", "i1", ".dockerignore"), entry("compose", "f2", "Dockerfile"), entry("compose", "c1", "docker-compose.yml")]
        );
        // Compose without --apply writes no Dockerfile: the docker target's stays.
        let (after, stale) = reconcile(&next, Target::Compose, &[("docker-compose.yml", "sha256:c1".to_owned())], |_| Some("sha256:f2".to_owned()));
        assert!(stale.is_empty(), "{stale:?}");
        assert!(after.contains(&entry("docker", "f2", "Dockerfile")), "{after:?}");
    }

    #[test]
    fn the_first_generation_removes_nothing() {
        let (next, stale) = reconcile(&[], Target::Swarm, &[("stack.yml", "sha256:a".to_owned())], |_| unreachable!());
        assert!(stale.is_empty());
        assert_eq!(next, [entry("swarm", "a", "stack.yml")]);
    }
}
