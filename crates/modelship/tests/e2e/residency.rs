//! Many models, few in memory: `modelship serve` of fifty models with at most ten loaded.

use std::path::Path;

use crate::support::{Server, fraud_body, model};

/// This process's resident memory, in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

/// Fifty model files, m00.onnx to m49.onnx, in `dir`.
fn fifty(dir: &Path) -> Vec<String> {
    (0..50)
        .map(|i| {
            let path = dir.join(format!("m{i:02}.onnx"));
            std::fs::copy(model("fraud"), &path).unwrap();
            path.display().to_string()
        })
        .collect()
}

/// Fifty models, a bound of ten: every request, to every model in random order, is answered;
/// never more than ten are loaded; evictions and loads on demand are counted; and an unloaded
/// model's runtime sessions are let go, not only its slot: the server holds ten sessions, one
/// that keeps all fifty holds fifty. Resident memory is printed, not asserted: how much of what
/// is freed glibc gives back to the system depends on fragmentation, not on the server
/// (BENCHMARKS.md, "Many models, few in memory").
#[test]
fn fifty_models_with_ten_loaded_all_answer_in_random_order() {
    let dir = tempfile::tempdir().unwrap();
    let files = fifty(dir.path());
    let mut args: Vec<&str> = files.iter().map(String::as_str).collect();
    args.extend(["--workers", "1", "--max-loaded-models", "10"]);
    let bounded = Server::start(&args);
    let loaded = |s: &Server| s.metric("modelship_models_loaded ", &[]).unwrap();
    assert_eq!(loaded(&bounded), 10.0, "every model answered once at startup; forty rest");
    // A fixed shuffle (xorshift), twice through all fifty.
    let mut order: Vec<usize> = (0..50).chain(0..50).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let expected = bounded.post("/v2/models/m00/infer", &fraud_body(2)).text;
    for i in order {
        let r = bounded.post(&format!("/v2/models/m{i:02}/infer"), &fraud_body(2));
        assert_eq!(r.status, 200, "m{i:02}: {}", r.text);
        assert_eq!(r.text.replace(&format!("m{i:02}"), "m00"), expected, "m{i:02} answers as the file does");
        assert!(loaded(&bounded) <= 10.0, "more than ten models loaded");
    }
    let sum = |s: &Server, metric: &str, label: &str| {
        s.get("/metrics").text.lines().filter(|l| l.starts_with(metric) && l.contains(label)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>()
    };
    let (evictions, lazy) = (sum(&bounded, "modelship_model_evictions_total", ""), sum(&bounded, "modelship_model_lazy_loads_total", r#"result="loaded""#));
    assert!(lazy >= 40.0 && evictions >= lazy, "evictions {evictions}, loads on demand {lazy}");
    assert_eq!(sum(&bounded, "modelship_model_lazy_loads_total", r#"result="failed""#), 0.0);
    // Sessions go when the last worker of an unloaded pool exits, just after the unload.
    let sessions = |s: &Server| s.metric("modelship_sessions_in_memory ", &[]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while sessions(&bounded) > 10.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sessions(&bounded), 10.0, "one session (one worker) for each of the ten loaded models, none kept for the unloaded ones");
    let bounded_rss = rss(bounded.pid());

    // The same fifty, all kept loaded.
    let mut args: Vec<&str> = files.iter().map(String::as_str).collect();
    args.extend(["--workers", "1"]);
    let unbounded = Server::start(&args);
    assert_eq!(loaded(&unbounded), 50.0);
    assert_eq!(sessions(&unbounded), 50.0);
    let unbounded_rss = rss(unbounded.pid());
    eprintln!(
        "resident memory: {:.1} MiB with ten of fifty loaded after {lazy} loads on demand, {:.1} MiB with all fifty",
        bounded_rss as f64 / 1048576.0,
        unbounded_rss as f64 / 1048576.0
    );
}
