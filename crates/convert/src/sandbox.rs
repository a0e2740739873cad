//! Running the converter as a separate process, in a sandbox: bubblewrap (`bwrap`, Debian's
//! `bubblewrap` package) with every namespace unshared (no network: the sandbox's own empty
//! loopback), all capabilities dropped, a read-only view of the system libraries and of the
//! Python environment, the model file read-only, one writable scratch directory, a private
//! `/tmp`, and the environment cleared. `prlimit` (util-linux) bounds its address space, CPU
//! time, file sizes and core dumps; a wall clock kills it (and, through bwrap's
//! `--die-with-parent` and its PID namespace, everything it started).
//!
//! Without the sandbox (`--trust-pickle`) the converter runs as a plain child process under
//! the same limits: the model's code then runs with the user's rights.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::ConvertError;

/// Limits on one converter process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space (RLIMIT_AS).
    pub memory_bytes: u64,
    /// CPU time (RLIMIT_CPU).
    pub cpu_seconds: u64,
    /// Wall clock, then killed.
    pub wall: Duration,
    /// The largest file it may write (RLIMIT_FSIZE): the ONNX model and the result.
    pub file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 8 << 30, cpu_seconds: 900, wall: Duration::from_secs(900), file_bytes: 4 << 30 }
    }
}

/// How the converter is isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// bubblewrap at this path (found and tried).
    Bubblewrap { bwrap: PathBuf, version: String },
    /// None: `--trust-pickle`, where bubblewrap cannot run.
    Trusted,
    /// None, for a format that runs no code of its own (XGBoost, LightGBM), where bubblewrap
    /// cannot run.
    Unsandboxed,
}

impl Isolation {
    /// For records: `bubblewrap 0.8.0` or `none (--trust-pickle)`.
    pub fn describe(&self) -> String {
        match self {
            Isolation::Bubblewrap { version, .. } => format!("bubblewrap {version}"),
            Isolation::Trusted => "none (--trust-pickle)".to_owned(),
            Isolation::Unsandboxed => "none (bubblewrap unavailable; a data format)".to_owned(),
        }
    }
}

/// The command that installs the sandbox.
pub const INSTALL: &str = "sudo apt-get install bubblewrap";

/// Finds bubblewrap (`MODELSHIP_BWRAP`, else `bwrap` on the PATH) and checks it can make a
/// sandbox here (it cannot inside some containers, which forbid new namespaces).
pub fn probe(bwrap: Option<&Path>) -> Result<Isolation, ConvertError> {
    let bwrap = bwrap.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("bwrap"));
    let version = Command::new(&bwrap).arg("--version").output().map_err(|e| {
        ConvertError::NoSandbox(format!(
            "bubblewrap ({}) cannot be run: {e}. Install it ({INSTALL}), or pass --trust-pickle to convert without a sandbox (the pickle's code then runs with your rights)",
            bwrap.display()
        ))
    })?;
    let version = String::from_utf8_lossy(&version.stdout).trim().trim_start_matches("bubblewrap ").to_owned();
    let mut trial = Command::new(&bwrap);
    trial.args(base_args(is_root())).args(system_binds()).args(["--", "true"]);
    let out = trial.output().map_err(|e| ConvertError::NoSandbox(format!("bubblewrap cannot start: {e}")))?;
    if !out.status.success() {
        return Err(ConvertError::NoSandbox(format!(
            "bubblewrap cannot make a sandbox here ({}): allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1), or pass --trust-pickle to convert without a sandbox",
            crate::env::tail(&out.stderr)
        )));
    }
    Ok(Isolation::Bubblewrap { bwrap, version })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Namespaces, capabilities, the process's lifetime and the cleared environment.
pub fn base_args(root: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv"].iter().map(OsString::from).collect();
    if root {
        // bwrap keeps root's capabilities inside unless told; without them nothing can be remounted.
        args.extend(["--cap-drop", "ALL"].iter().map(OsString::from));
    }
    args
}

/// The system's libraries and programs, read-only; private /proc, /dev and /tmp.
pub fn system_binds() -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    for dir in ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"] {
        let path = Path::new(dir);
        match std::fs::read_link(path) {
            // Debian's merged /usr: /lib -> usr/lib.
            Ok(target) => args.extend([OsString::from("--symlink"), target.into_os_string(), OsString::from(dir)]),
            Err(_) if path.is_dir() => args.extend([OsString::from("--ro-bind"), OsString::from(dir), OsString::from(dir)]),
            Err(_) => {}
        }
    }
    for file in ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"] {
        if Path::new(file).exists() {
            args.extend([OsString::from("--ro-bind"), OsString::from(file), OsString::from(file)]);
        }
    }
    // /tmp in memory, bounded (memory a tmpfs holds is not the process's address space).
    args.extend(["--proc", "/proc", "--dev", "/dev", "--size", TMP_BYTES, "--tmpfs", "/tmp"].iter().map(OsString::from));
    args
}

/// The size of the sandbox's private /tmp (512 MiB).
const TMP_BYTES: &str = "536870912";

/// What one run sees: read-only paths (host path, path inside), the writable scratch directory.
#[derive(Debug, Clone)]
pub struct View {
    pub read_only: Vec<(PathBuf, PathBuf)>,
    pub scratch: PathBuf,
}

/// The scratch directory's path inside the sandbox.
pub const SCRATCH: &str = "/out";

/// The full bwrap argument list for `program args` seeing `view` (pure but for the system
/// directories that exist).
pub fn bwrap_args(view: &View, program: &Path, args: &[OsString], root: bool) -> Vec<OsString> {
    let mut out = base_args(root);
    out.extend(system_binds());
    for (host, inside) in &view.read_only {
        out.extend([OsString::from("--ro-bind"), host.clone().into_os_string(), inside.clone().into_os_string()]);
    }
    out.extend([OsString::from("--bind"), view.scratch.clone().into_os_string(), OsString::from(SCRATCH)]);
    for (key, value) in child_env() {
        out.extend([OsString::from("--setenv"), OsString::from(key), OsString::from(value)]);
    }
    out.extend([OsString::from("--chdir"), OsString::from(SCRATCH), OsString::from("--")]);
    out.push(program.as_os_str().to_owned());
    out.extend(args.iter().cloned());
    out
}

/// The converter's environment: nothing inherited; one thread for every numeric library.
fn child_env() -> [(&'static str, &'static str); 8] {
    [
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("OMP_NUM_THREADS", "1"),
        ("OPENBLAS_NUM_THREADS", "1"),
        ("MKL_NUM_THREADS", "1"),
        ("MALLOC_ARENA_MAX", "2"),
        ("PYTHONHASHSEED", "0"),
    ]
}

/// What a run left: its exit code (None when killed), its standard output and error (bounded).
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub pid: u32,
}

/// Runs `program args` under `isolation`, seeing `view`, within `limits`.
pub fn run(isolation: &Isolation, view: &View, program: &Path, args: &[OsString], limits: &Limits) -> Result<Ran, ConvertError> {
    let mut command = Command::new("prlimit");
    command.args([
        format!("--as={}", limits.memory_bytes),
        format!("--cpu={}", limits.cpu_seconds),
        format!("--fsize={}", limits.file_bytes),
        "--core=0".to_owned(),
        "--".to_owned(),
    ]);
    match isolation {
        Isolation::Bubblewrap { bwrap, .. } => {
            command.arg(bwrap).args(bwrap_args(view, program, args, is_root()));
        }
        Isolation::Trusted | Isolation::Unsandboxed => {
            // Paths as the sandbox would show them are real paths here.
            command.arg(program).args(args).current_dir(&view.scratch).env_clear();
            for (key, value) in child_env() {
                command.env(key, value);
            }
        }
    }
    let stdout_path = view.scratch.with_extension("stdout");
    let stderr_path = view.scratch.with_extension("stderr");
    let stdout = std::fs::File::create(&stdout_path).map_err(|e| ConvertError::Io(format!("cannot create {}: {e}", stdout_path.display())))?;
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| ConvertError::Io(format!("cannot create {}: {e}", stderr_path.display())))?;
    use std::os::unix::process::CommandExt as _;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0);
    let mut child = command.spawn().map_err(|e| ConvertError::Io(format!("cannot start the converter (prlimit from util-linux is needed): {e}")))?;
    let pid = child.id();
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= limits.wall => {
                timed_out = true;
                // The whole process group: the converter and anything it started.
                let _ = Command::new("kill").args(["-KILL", &format!("-{pid}")]).status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = Command::new("kill").args(["-KILL", &format!("-{pid}")]).status();
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&stdout_path);
                let _ = std::fs::remove_file(&stderr_path);
                return Err(ConvertError::Io(format!("waiting for the converter: {e}")));
            }
        }
    };
    // The last MiB of each: the error is at the end of a chatty run.
    let read = |path: &Path| -> Vec<u8> {
        use std::io::{Seek as _, SeekFrom};
        let mut buf = Vec::new();
        if let Ok(mut f) = std::fs::File::open(path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(1 << 20)));
            let _ = f.take(1 << 20).read_to_end(&mut buf);
        }
        let _ = std::fs::remove_file(path);
        buf
    };
    Ok(Ran { code: status.and_then(|s| s.code()), stdout: read(&stdout_path), stderr: read(&stderr_path), timed_out, pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_drops_everything_and_binds_only_what_it_names() {
        let view = View {
            read_only: vec![(PathBuf::from("/home/u/model.pkl"), PathBuf::from("/in/model")), (PathBuf::from("/opt/env"), PathBuf::from("/opt/env"))],
            scratch: PathBuf::from("/home/u/.cache/modelship/convert/tmp/x"),
        };
        let args: Vec<String> = bwrap_args(&view, Path::new("/opt/env/bin/python"), &[OsString::from("-I")], true)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "--unshare-all --die-with-parent --new-session --clearenv --cap-drop ALL",
            "--ro-bind /home/u/model.pkl /in/model",
            "--ro-bind /opt/env /opt/env",
            "--bind /home/u/.cache/modelship/convert/tmp/x /out",
            "--size 536870912 --tmpfs /tmp",
            "--setenv OMP_NUM_THREADS 1",
            "--chdir /out -- /opt/env/bin/python -I",
        ] {
            assert!(joined.contains(want), "{want} not in {joined}");
        }
        // Nothing of the home directory but what was named, and one writable bind.
        assert_eq!(args.iter().filter(|a| *a == "--bind").count(), 1);
        assert!(!args.iter().any(|a| a == "--share-net" || a == "/" ));
        let unprivileged = bwrap_args(&view, Path::new("/x"), &[], false);
        assert!(!unprivileged.iter().any(|a| a == "--cap-drop"));
    }
}
