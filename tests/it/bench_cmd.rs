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
