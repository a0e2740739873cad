//! The book (docs/) as a test: every `bash` block of the README, the NEPSE example's README
//! (examples/nepse/), the tutorial and the guides runs
//! as written, on this machine's real components, and `mdbook build` passes with every internal
//! link and anchor resolving. The convention is the book's contributing page
//! (docs/src/contributing.md):
//!
//! - a block whose info string is `bash` runs; `bash,background` starts a server that stays up
//!   until the end of its page (ready when it prints the `{"event":"ready",...}` line);
//!   `bash,norun` is shown, never run (the page says in words why); other languages never run;
//! - a page is one bash process (`set -eo pipefail`), its blocks in order, so `cd`, variables and
//!   files carry over; the pages of one chapter (the README, `tutorial/`, `guides/`) share a fresh
//!   working directory holding links to the repository's `examples/` and `testdata/`, and each
//!   run has a fresh `HOME` (so the default registry, state directory and admin token are its own);
//! - a line `# => TEXT` after a one-line command checks that the command's standard output
//!   contains TEXT.
//!
//! The servers listen on the documented ports (8000, 8001, 8081), so the pages run one after the
//! other inside one test, and a failure names the page, the block and the Markdown line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pulldown_cmark::{CodeBlockKind, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use crate::support::root;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Run,
    Background,
    NoRun,
}

#[derive(Debug, Clone)]
struct Block {
    /// 1-based, counting every `bash` block of the page.
    index: usize,
    /// The Markdown line of the block's first command line.
    line: usize,
    kind: Kind,
    text: String,
}

/// The `bash` blocks of a Markdown text. Attributes follow the language after a comma (mdBook's
/// `rust,ignore` form) or a space.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<(usize, Kind, String)> = None;
    for (event, range) in Parser::new_ext(markdown, Options::all()).into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                let mut words = info.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty());
                if words.next() != Some("bash") {
                    continue;
                }
                let attrs: Vec<&str> = words.collect();
                let kind = if attrs.contains(&"norun") {
                    Kind::NoRun
                } else if attrs.contains(&"background") {
                    Kind::Background
                } else {
                    Kind::Run
                };
                let line = markdown[..range.start].matches('\n').count() + 2;
                current = Some((line, kind, String::new()));
            }
            Event::Text(text) => {
                if let Some((_, _, body)) = current.as_mut() {
                    body.push_str(&text);
                }
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some((line, kind, text)) = current.take() {
                    out.push(Block { index: out.len() + 1, line, kind, text });
                }
            }
            _ => {}
        }
    }
    out
}

/// Single-quoted for bash.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

const PRELUDE: &str = r#"set -Eeo pipefail
__docs_pids=()
__docs_stop() {
  local pid i
  for pid in "${__docs_pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${__docs_pids[@]}"; do
    for i in $(seq 1 150); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap __docs_stop EXIT
trap '__docs_rc=$?; echo "__DOCS_FAIL__ $__docs_block $LINENO $__docs_rc" >&2' ERR
__docs_expect() {
  if [[ "$1" != *"$2"* ]]; then
    printf '__DOCS_EXPECT__ expected the output to contain: %s\n' "$2" >&2
    return 1
  fi
}
__docs_background() {
  local n=$1 script=$2 i
  setsid bash "$script" > "$__docs_logs/bg-$n.out" 2> "$__docs_logs/bg-$n.err" &
  __docs_pids+=("$!")
  echo "$!" >> "$__docs_logs/pids"
  for i in $(seq 1 1200); do
    if grep -q '"event":"ready"' "$__docs_logs/bg-$n.out"; then
      grep '"event":"ready"' "$__docs_logs/bg-$n.out"
      return 0
    fi
    if ! kill -0 "$!" 2>/dev/null; then
      echo "__DOCS_BACKGROUND__ the server exited before it was ready:" >&2
      cat "$__docs_logs/bg-$n.err" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "__DOCS_BACKGROUND__ no ready line after 120 s:" >&2
  cat "$__docs_logs/bg-$n.err" >&2
  return 1
}
"#;

/// The bash script of a page, and for each of its lines the (block, Markdown line) it came from.
fn script(blocks: &[Block], logs: &Path) -> (String, BTreeMap<usize, (usize, usize)>) {
    let mut text = String::from(PRELUDE);
    writeln!(text, "__docs_logs={}", quote(&logs.to_string_lossy())).unwrap();
    let mut map = BTreeMap::new();
    let mut lineno = text.matches('\n').count();
    for block in blocks {
        match block.kind {
            Kind::NoRun => continue,
            Kind::Background => {
                let file = logs.join(format!("bg-{}.sh", block.index));
                std::fs::write(&file, &block.text).unwrap();
                writeln!(text, "__docs_block={}; __docs_background {} {}", block.index, block.index, quote(&file.to_string_lossy())).unwrap();
                lineno += 1;
                map.insert(lineno, (block.index, block.line));
            }
            Kind::Run => {
                writeln!(text, "__docs_block={}", block.index).unwrap();
                lineno += 1;
                let lines: Vec<&str> = block.text.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    let next_is_expect = lines.get(i + 1).is_some_and(|l| l.trim_start().starts_with("# => "));
                    let emitted = if let Some(expected) = line.trim_start().strip_prefix("# => ") {
                        format!("__docs_expect \"$__docs_out\" {}", quote(expected.trim_end()))
                    } else if next_is_expect {
                        format!("__docs_out=$({line}); printf '%s\\n' \"$__docs_out\"")
                    } else {
                        (*line).to_owned()
                    };
                    text.push_str(&emitted);
                    text.push('\n');
                    lineno += 1;
                    map.insert(lineno, (block.index, block.line + i));
                }
            }
        }
    }
    (text, map)
}

/// One page's outcome.
struct Outcome {
    page: String,
    error: Option<String>,
    seconds: f64,
}

/// Runs one page's blocks in `work` and says what failed, naming the page, block and line.
fn run_page(page: &str, markdown: &str, work: &Path, home: &Path, logs: &Path) -> Outcome {
    let started = Instant::now();
    let blocks = blocks(markdown);
    std::fs::create_dir_all(logs).unwrap();
    let (text, map) = script(&blocks, logs);
    let file = logs.join("page.sh");
    std::fs::write(&file, &text).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_modelship"));
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    // Its own process group: a page that runs past its time is killed with every child.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.arg(&file).current_dir(work).stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("MODELSHIP_") || key.starts_with("MODEL_") || key.starts_with("XDG_") || key.starts_with("AWS_") || key == "CONFIG_PATH" || key == "VIRTUAL_ENV" {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", home).env("PATH", path).env("ORT_DYLIB_PATH", ort_library()).env("NO_COLOR", "1");
    let out = std::fs::File::create(logs.join("output.txt")).unwrap();
    let mut child = cmd.stdout(out.try_clone().unwrap()).stderr(out).spawn().expect("bash");
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever a killed page left running.
    for pid in std::fs::read_to_string(logs.join("pids")).unwrap_or_default().lines() {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
    }
    let output = std::fs::read_to_string(logs.join("output.txt")).unwrap_or_default();
    let error = match status {
        Some(status) if status.success() => None,
        status => {
            let failed = output.lines().rev().find_map(|l| {
                let mut w = l.strip_prefix("__DOCS_FAIL__ ")?.split_whitespace();
                let (_block, line, rc) = (w.next()?, w.next()?.parse::<usize>().ok()?, w.next()?);
                Some((line, rc.to_owned()))
            });
            let at = match failed.and_then(|(line, rc)| map.range(..=line).next_back().map(|(_, &(b, l))| (b, l, rc))) {
                Some((block, line, rc)) => format!("{page}: block {block}, line {line} failed (exit {rc})"),
                None if status.is_none() => format!("{page}: did not finish within 900 s"),
                None => format!("{page}: failed ({status:?})"),
            };
            let tail: Vec<&str> = output.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            Some(format!("{at}\n--- last lines of its output ({}):\n{}", logs.join("output.txt").display(), tail.join("\n")))
        }
    };
    Outcome { page: page.to_owned(), error, seconds: started.elapsed().as_secs_f64() }
}

fn ort_library() -> PathBuf {
    let lib = root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().into_iter().flatten().filter_map(Result::ok).find_map(|python| {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        std::fs::read_dir(&capi).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so.")))
    });
    found.unwrap_or_else(|| panic!("no ONNX Runtime under {}: run scripts/setup.sh", lib.display()))
}

/// The book's pages in SUMMARY.md order.
fn summary_pages(src: &Path) -> Vec<String> {
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    let mut pages = Vec::new();
    for event in Parser::new(&summary) {
        if let Event::Start(Tag::Link { dest_url, .. }) = event
            && !dest_url.is_empty()
        {
            pages.push(dest_url.to_string());
        }
    }
    pages
}

/// The pages whose blocks run, in order, each with its chapter (its working directory): the
/// README, then the book's tutorial and guides as SUMMARY.md orders them.
fn runnable_pages(docs: &Path, readme: &Path) -> Vec<(String, String, PathBuf)> {
    let mut pages = vec![
        ("README.md".to_owned(), "readme".to_owned(), readme.to_path_buf()),
        // The guides' own path, a pickled XGBoost model from training to Compose.
        ("examples/nepse/README.md".to_owned(), "nepse".to_owned(), root().join("examples/nepse/README.md")),
    ];
    for page in summary_pages(&docs.join("src")) {
        if let Some((chapter, _)) = page.split_once('/')
            && (chapter == "tutorial" || chapter == "guides")
        {
            pages.push((format!("docs/src/{page}"), chapter.to_owned(), docs.join("src").join(&page)));
        }
    }
    pages
}

/// The images a description names by default, which these machines cannot pull, and the
/// stand-ins `scripts/docker-test-images.sh` builds from Debian's packages. Each missing one is
/// tagged with the default's name, so the pages' `--apply` commands run as written.
const STAND_INS: &[(&str, &str)] = &[
    ("debian:bookworm-slim", "modelship-test/bookworm:12"),
    ("redis:7.4-bookworm", "modelship-test/redis:7"),
    ("prom/prometheus:v2.53.4", "modelship-test/prometheus:2"),
];

fn stand_in_images() {
    let has = |image: &str| Command::new("docker").args(["image", "inspect", image]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    for (default, stand_in) in STAND_INS {
        if has(default) {
            continue;
        }
        assert!(has(stand_in), "neither {default} nor its stand-in {stand_in} is on the Docker engine: run scripts/setup.sh --test (it runs scripts/docker-test-images.sh)");
        let tagged = Command::new("docker").args(["tag", stand_in, default]).status().unwrap();
        assert!(tagged.success(), "docker tag {stand_in} {default}");
        eprintln!("docs: {default} is the stand-in {stand_in} (no image can be pulled here)");
    }
}

/// Runs the pages (those whose name contains `only`, when given); returns every outcome.
fn run_docs(docs: &Path, readme: &Path, only: Option<&str>) -> Vec<Outcome> {
    let scratch = tempfile::tempdir().unwrap();
    let home = scratch.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // The conversion environments are the ones every test shares (created from PyPI once per
    // machine): `modelship convert setup` on a page then finds its environment ready.
    let convert = home.join(".cache/modelship/convert");
    std::fs::create_dir_all(&convert).unwrap();
    std::fs::create_dir_all(crate::convert::shared_envs()).unwrap();
    std::os::unix::fs::symlink(crate::convert::shared_envs(), convert.join("envs")).unwrap();
    let mut outcomes = Vec::new();
    for (n, (page, chapter, file)) in runnable_pages(docs, readme).into_iter().enumerate() {
        if only.is_some_and(|o| !page.contains(o)) {
            continue;
        }
        let work = scratch.path().join("work").join(&chapter);
        if !work.exists() {
            std::fs::create_dir_all(&work).unwrap();
            for dir in ["examples", "testdata"] {
                std::os::unix::fs::symlink(root().join(dir), work.join(dir)).unwrap();
            }
        }
        let logs = scratch.path().join("logs").join(format!("{n:02}-{}", page.replace('/', "_")));
        let markdown = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = run_page(&page, &markdown, &work, &home, &logs);
        eprintln!("docs: {page}: {} in {:.1} s", if outcome.error.is_some() { "FAILED" } else { "ok" }, outcome.seconds);
        let failed = outcome.error.is_some();
        outcomes.push(outcome);
        if failed {
            // The later pages of a chapter build on this one.
            break;
        }
    }
    // Keep the logs of a failed run for a look.
    if outcomes.iter().any(|o| o.error.is_some()) {
        let kept = scratch.keep();
        eprintln!("docs: logs kept in {}", kept.display());
    }
    outcomes
}

fn docs_root() -> PathBuf {
    root().join("docs")
}

/// Serial by construction: one test runs every page, since the pages use the documented ports.
#[test]
fn docs_command_blocks_run_as_written() {
    let only = std::env::var("MODELSHIP_DOCS_PAGE").ok();
    // The deploy pages build and run containers, on the ports the Docker tests use too.
    let engine = crate::docker::engine("docs_command_blocks_run_as_written");
    assert!(engine.is_some(), "the docs' deploy pages need a Docker engine");
    stand_in_images();
    let outcomes = run_docs(&docs_root(), &root().join("README.md"), only.as_deref());
    // A deploy page that failed half-way leaves no container on the documented ports behind.
    let _ = Command::new(env!("CARGO_BIN_EXE_modelship")).args(["deploy", "compose", "--down", "--name", "fraud"]).output();
    assert!(!outcomes.is_empty(), "no page ran");
    let failures: Vec<String> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    let summary: Vec<String> = outcomes.iter().map(|o| format!("{} ({:.1} s)", o.page, o.seconds)).collect();
    assert!(failures.is_empty(), "{}\n(pages run: {})", failures.join("\n\n"), summary.join(", "));
}

/// The check has teeth: in a copy of the docs with one documented flag misspelt, the page that
/// uses it fails, named with its block and line.
#[test]
fn docs_check_fails_on_a_misspelt_flag_naming_page_block_and_line() {
    let copy = tempfile::tempdir().unwrap();
    let docs = copy.path().join("docs");
    copy_dir(&docs_root(), &docs);
    let page = "tutorial/registry.md";
    let file = docs.join("src").join(page);
    let text = std::fs::read_to_string(&file).unwrap();
    let (flag, wrong) = ("--metric", "--metirc");
    let at = text.find(flag).unwrap_or_else(|| panic!("{page} no longer uses {flag}: pick another flag"));
    let line = text[..at].matches('\n').count() + 1;
    let block = blocks(&text).iter().rfind(|b| b.line <= line).unwrap().index;
    std::fs::write(&file, text.replacen(flag, wrong, 1)).unwrap();
    let outcomes = run_docs(&docs, &root().join("README.md"), Some(page));
    let error = outcomes.iter().find_map(|o| o.error.clone()).expect("the misspelt flag went unnoticed");
    let expected = format!("docs/src/{page}: block {block}, line {line} failed");
    assert!(error.contains(&expected), "expected `{expected}` in:\n{error}");
    assert!(error.contains(wrong), "clap's message names the flag:\n{error}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_name() == "book" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// mdBook's heading ids: lowercase letters, digits, `_` and `-`, whitespace as `-`; a repeated
/// id gets `-1`, `-2`...
fn heading_ids(markdown: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(markdown, Options::all()) {
        match event {
            Event::Start(Tag::Heading { level, id, .. }) => {
                let _ = level == HeadingLevel::H1;
                if let Some(id) = id {
                    ids.insert(id.to_string());
                    heading = None;
                } else {
                    heading = Some(String::new());
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(h) = heading.take() {
                    let base: String = h
                        .trim()
                        .chars()
                        .filter_map(|c| {
                            if c.is_alphanumeric() || c == '_' || c == '-' {
                                Some(c.to_ascii_lowercase())
                            } else if c.is_whitespace() {
                                Some('-')
                            } else {
                                None
                            }
                        })
                        .collect();
                    let n = counts.entry(base.clone()).or_insert(0);
                    ids.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
                    *n += 1;
                }
            }
            _ => {}
        }
    }
    ids
}

/// Every link of every page that is not http(s) or mailto: the file exists inside docs/src, and
/// its `#anchor` is a heading there. External links are not checked (no network here).
fn check_links(src: &Path) -> Vec<String> {
    let mut pages = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    let src = src.canonicalize().unwrap();
    let mut problems = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let name = page.strip_prefix(&src).unwrap_or(page).display().to_string();
        for (event, range) in Parser::new_ext(&text, Options::all()).into_offset_iter() {
            let Event::Start(Tag::Link { dest_url, .. }) = event else { continue };
            let line = text[..range.start].matches('\n').count() + 1;
            let dest = dest_url.to_string();
            if dest.starts_with("http://") || dest.starts_with("https://") || dest.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match dest.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (dest.as_str(), None),
            };
            let target = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            let Ok(target) = target.canonicalize() else {
                problems.push(format!("{name}:{line}: link to {dest}: no such file"));
                continue;
            };
            if !target.starts_with(&src) {
                problems.push(format!("{name}:{line}: link to {dest} leaves docs/src (mdBook would not copy it)"));
                continue;
            }
            if let Some(anchor) = anchor {
                if target.extension().is_none_or(|e| e != "md") {
                    problems.push(format!("{name}:{line}: anchor on a file that is not a page: {dest}"));
                } else if !heading_ids(&std::fs::read_to_string(&target).unwrap()).contains(anchor) {
                    problems.push(format!("{name}:{line}: link to {dest}: no heading with id '{anchor}'"));
                }
            }
        }
    }
    problems
}

#[test]
fn the_book_builds_and_its_links_resolve() {
    let docs = docs_root();
    let problems = check_links(&docs.join("src"));
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
    // Every SUMMARY entry is a page.
    for page in summary_pages(&docs.join("src")) {
        assert!(docs.join("src").join(&page).is_file(), "SUMMARY.md lists {page}, which does not exist");
    }
    // The errors table is ARCHITECTURE.md's, which a unit test checks against the code.
    let between = |text: &str| -> String {
        let start = text.find("<!-- errors:begin -->").expect("errors:begin marker");
        let end = text.find("<!-- errors:end -->").expect("errors:end marker");
        text[start..end].to_owned()
    };
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let errors = std::fs::read_to_string(docs.join("src/reference/errors.md")).unwrap();
    assert_eq!(between(&errors), between(&architecture), "docs/src/reference/errors.md's table differs from ARCHITECTURE.md's");

    let mdbook = root().join(".cache/tools/bin/mdbook");
    if !mdbook.exists() {
        assert!(std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_none(), "{} is missing: run scripts/setup.sh --test", mdbook.display());
        eprintln!("skipping `mdbook build`: {} is missing (scripts/setup.sh --test installs it)", mdbook.display());
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let built = Command::new(&mdbook).arg("build").arg(&docs).arg("--dest-dir").arg(out.path()).output().unwrap();
    assert!(built.status.success(), "mdbook build failed:\n{}{}", String::from_utf8_lossy(&built.stdout), String::from_utf8_lossy(&built.stderr));
    let log = String::from_utf8_lossy(&built.stderr);
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "mdbook build warned:\n{log}");
    for page in summary_pages(&docs.join("src")) {
        let html = out.path().join(page.replace(".md", ".html"));
        assert!(html.is_file(), "mdbook wrote no {}", html.display());
    }
}
