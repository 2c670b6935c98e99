//! `cluebridge bench`: a short run at a fixed rate reports what it
//! measured, as text and as JSON; a bad `--dir` is refused by name.

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .arg("bench")
        .args(args)
        .env("CLUEBRIDGE_LOG", "error")
        .output()
        .expect("run cluebridge bench")
}

#[test]
fn a_fixed_rate_run_reports_its_figures_as_json() {
    let tmp = tempfile::tempdir().expect("tmp");
    let json = tmp.path().join("figures.json");
    let out = bench(&[
        "--in-process",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--rate",
        "100",
        "--submitters",
        "4",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("submit latency ms: p50"), "{stdout}");
    assert!(stdout.contains("end-to-end latency ms: p50"), "{stdout}");
    let figures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let number = |path: &[&str]| {
        path.iter()
            .fold(&figures, |v, k| &v[*k])
            .as_f64()
            .unwrap_or_else(|| panic!("{path:?} missing in {figures}"))
    };
    // 100 msg/s for 1 s: about 100 accepted, none refused, and about as
    // many received in the window (a few are in flight at either end).
    let accepted = number(&["accepted"]);
    assert!((50.0..=110.0).contains(&accepted), "{figures}");
    let received = number(&["received"]);
    assert!(
        (accepted - 10.0..=accepted + 5.0).contains(&received),
        "{figures}"
    );
    assert_eq!(number(&["submit_errors"]), 0.0, "{figures}");
    let (p50, p99, max) = (
        number(&["latency_ms", "p50"]),
        number(&["latency_ms", "p99"]),
        number(&["latency_ms", "max"]),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{figures}");
    // A submit is answered before its message reaches the application.
    let (submit_p50, submit_max) = (
        number(&["submit_latency_ms", "p50"]),
        number(&["submit_latency_ms", "max"]),
    );
    assert!(0.0 < submit_p50 && submit_p50 <= submit_max, "{figures}");
    assert!(submit_p50 <= p50, "{figures}");
}

#[test]
fn a_directory_without_a_federation_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("nothing-here");
    let out = bench(&[
        "--dir",
        dir.to_str().expect("utf-8 path"),
        "--duration",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing-here") && stderr.contains("holds no development federation"),
        "{stderr}"
    );
}

#[test]
fn a_backlog_run_reports_every_figure_and_the_counts_match() {
    let tmp = tempfile::tempdir().expect("tmp");
    let json = tmp.path().join("backlog.json");
    let out = bench(&[
        "--backlog",
        "2000",
        "--submitters",
        "16",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("restart after SIGKILL"), "{stdout}");
    let figures: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let number = |path: &[&str]| {
        path.iter()
            .fold(&figures, |v, k| &v[*k])
            .as_f64()
            .unwrap_or_else(|| panic!("{path:?} missing in {figures}"))
    };
    // Every message accepted and queued, as the Admin call, the metrics and
    // the restarted node all count them.
    assert_eq!(number(&["backlog"]), 2000.0, "{figures}");
    assert_eq!(number(&["fill", "accepted"]), 2000.0, "{figures}");
    assert_eq!(number(&["fill", "submit_errors"]), 0.0, "{figures}");
    assert_eq!(number(&["queued"]), 2000.0, "{figures}");
    assert_eq!(number(&["metrics_outbox_messages"]), 2000.0, "{figures}");
    assert_eq!(number(&["restart", "queued"]), 2000.0, "{figures}");
    // Every other figure is there and positive (no timing bounds: machines
    // differ).
    for path in [
        &["fill", "seconds"][..],
        &["fill", "per_s"],
        &["memory_after_fill", "rss_bytes"],
        &["memory", "rss_bytes"],
        &["memory", "peak_rss_bytes"],
        &["disk", "total", "allocated_bytes"],
        &["disk", "total", "apparent_bytes"],
        &["disk", "allocated_per_message"],
        &["disk", "apparent_per_message"],
        &["metrics_scrape_ms", "median"],
        &["metrics_scrape_ms", "max"],
        &["metrics_scrape_bytes"],
        &["queues_ms", "median"],
        &["queues_ms", "max"],
        &["restart", "to_health_ms"],
        &["restart", "to_queues_ms"],
        &["restart", "memory_at_serving", "rss_bytes"],
        &["restart", "memory", "rss_bytes"],
        &["restart", "memory", "peak_rss_bytes"],
        &["restart", "disk_total", "allocated_bytes"],
    ] {
        assert!(number(path) > 0.0, "{path:?} in {figures}");
    }
    for area in ["journal", "envelopes", "index"] {
        assert!(
            number(&["disk", "areas", area, "apparent_bytes"]) > 0.0,
            "{area} in {figures}"
        );
    }
    assert!(
        number(&["metrics_scrape_ms", "median"]) <= number(&["metrics_scrape_ms", "max"]),
        "{figures}"
    );
}
