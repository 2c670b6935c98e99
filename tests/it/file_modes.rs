//! File modes: a node refuses keys open to other users and configuration
//! others may write, naming the file and the `chmod` to run; the data
//! directory and everything in it are private whatever the umask.

use crate::harness::*;
use cluebridge::config::NodeConfig;
use cluebridge::model::MessageKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

fn load_error(node_file: &Path) -> String {
    NodeConfig::load(node_file)
        .expect_err("refused for its file modes")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_keys_and_config_open_to_others() {
    let fed = TestFederation::start_with(|_| {}, &[]).await;
    let node_file = fed.dev.node_file(DISCIPLINE);
    let key = fed.dev.dir.join("keys/discipline.ed25519");
    let tls_key = fed.dev.dir.join("certs/discipline-key.pem");
    // As made: loads.
    NodeConfig::load(&node_file).expect("generated files have private modes");

    chmod(&key, 0o644);
    assert_eq!(
        load_error(&node_file),
        format!(
            "{n}: signing_key: {k} is readable by others (mode 0644); a private key must be \
             readable by its owner only: run `chmod 600 {k}` (and make the node's user its owner)",
            n = node_file.display(),
            k = key.display()
        )
    );
    chmod(&key, 0o600);

    chmod(&tls_key, 0o620);
    assert_eq!(
        load_error(&node_file),
        format!(
            "{n}: tls_key: {k} is writable by its group (mode 0620); a private key must be \
             readable by its owner only: run `chmod 600 {k}` (and make the node's user its owner)",
            n = node_file.display(),
            k = tls_key.display()
        )
    );
    chmod(&tls_key, 0o600);

    chmod(&node_file, 0o666);
    assert_eq!(
        load_error(&node_file),
        format!(
            "{n}: {n} is writable by others (mode 0666); whoever can change it can change what \
             the node trusts: run `chmod go-w {n}`",
            n = node_file.display()
        )
    );
    chmod(&node_file, 0o644);

    let trust_list = fed.dev.dir.join("federation.toml");
    chmod(&trust_list, 0o664);
    assert_eq!(
        load_error(&node_file),
        format!(
            "{n}: federation: {f} is writable by its group (mode 0664); whoever can change it \
             can change what the node trusts: run `chmod go-w {f}`",
            n = node_file.display(),
            f = trust_list.display()
        )
    );
    chmod(&trust_list, 0o644);

    // The real `serve` refuses to start, with the same message.
    chmod(&key, 0o604);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["serve", "--config"])
        .arg(&node_file)
        .output()
        .await
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is readable by others (mode 0604)",
            key.display()
        )) && stderr.contains(&format!("run `chmod 600 {}`", key.display())),
        "{stderr}"
    );
    assert!(
        !fed.dev.dir.join("data/discipline").exists(),
        "nothing made"
    );
}

/// Every path below `dir`, `dir` included.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Paths below `dir` whose mode is not 0700 (directories) or 0600 (files).
fn open_paths(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|p| mode(p) != if p.is_dir() { 0o700 } else { 0o600 })
        .map(|p| format!("{} {:04o}", p.display(), mode(&p)))
        .collect()
}

/// Runs `cluebridge serve` for discipline under umask 022, submits a
/// message once it answers, stops it with SIGTERM; returns its stderr.
async fn serve_once_under_umask_022(fed: &TestFederation, id: &str) -> String {
    let child = tokio::process::Command::new("sh")
        .args(["-c", "umask 022; exec \"$0\" serve --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_cluebridge"))
        .arg(fed.dev.node_file(DISCIPLINE))
        .env("CLUEBRIDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = fed.client(DISCIPLINE);
        match client
            .submit(submit_request(
                id,
                MessageKind::ClueTransfer,
                SECURITY,
                b"evidence",
            ))
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("submit: {s}"),
        }
    }
    let pid = child.id().expect("pid").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("stops after SIGTERM")
        .expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_whatever_the_umask() {
    let fed = TestFederation::start_with(|_| {}, &[]).await;
    let data = fed.dev.dir.join("data/discipline");
    serve_once_under_umask_022(&fed, "modes-1").await;
    let paths = walk(&data);
    // The store's own files are there: sled's, the journal's segments.
    assert!(paths.iter().any(|p| p.ends_with("conf")), "{paths:?}");
    assert!(paths.len() > 4, "{paths:?}");
    assert_eq!(open_paths(&data), Vec::<String>::new());
    assert_eq!(mode(&fed.dev.dir.join("data")), 0o700);

    // A data directory someone opened up is tightened at the next start,
    // and the node says so.
    chmod(&data, 0o755);
    let conf = data.join("index").join("conf");
    chmod(&conf, 0o644);
    let stderr = serve_once_under_umask_022(&fed, "modes-2").await;
    assert!(
        stderr.contains("the data directory was open to group or others"),
        "{stderr}"
    );
    assert_eq!(open_paths(&data), Vec::<String>::new());

    // The generated federation's keys are private and its directories too.
    for private in [
        "ca-key.pem",
        "keys/discipline.ed25519",
        "certs/discipline-key.pem",
        "clients/discipline/backoffice-key.pem",
    ] {
        assert_eq!(mode(&fed.dev.dir.join(private)), 0o600, "{private}");
    }
    for dir in ["keys", "certs", "clients", "clients/discipline"] {
        assert_eq!(mode(&fed.dev.dir.join(dir)), 0o700, "{dir}");
    }
}
