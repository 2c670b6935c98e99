//! Identities: `gen-certs` for a real federation, signing-key rotation,
//! certificates and keys checked at start, and receivers limited to some
//! message kinds.

use crate::harness::*;
use cluebridge::config::{NodeConfig, PrincipalFile};
use cluebridge::crypto::certs::Ca;
use cluebridge::model::{MessageKind, SentState, SignedEnvelope, SignedReceipt};
use cluebridge::pb;
use std::path::Path;
use std::process::Command;
use time::{Duration as Span, OffsetDateTime};

/// The example configuration, with its absolute paths made relative to a
/// temporary directory.
fn example_config(dir: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for entry in std::fs::read_dir(repo).expect("config dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let text = text
            .replace("/etc/cluebridge/", "")
            .replace("/var/lib/cluebridge/", "data/");
        std::fs::write(dir.join(path.file_name().expect("name")), text).expect("write");
    }
}

fn gen_certs(dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .arg("gen-certs")
        .arg("--federation")
        .arg(dir.join("federation.toml"))
        .args(extra)
        .output()
        .expect("run gen-certs")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Every file below `dir` with its bytes.
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn gen_certs_provisions_a_federation_and_refuses_to_overwrite_keys() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    example_config(dir);

    let out = gen_certs(dir, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for what in [
        "federation CA certificate",
        "signing key discipline-k1 of node discipline",
        "TLS certificate of node judicial",
        "client certificate of hr-rectification (personnel; roles receive)",
        "public signing keys written into the trust list",
    ] {
        assert!(
            stdout.contains(what),
            "gen-certs does not say {what:?}:\n{stdout}"
        );
    }
    // Every node file now loads: its key matches the trust list, its
    // certificate names it and is valid.
    for node in [DISCIPLINE, PERSONNEL, SECURITY, JUDICIAL] {
        let config = NodeConfig::load(&dir.join(format!("{node}.toml")))
            .unwrap_or_else(|e| panic!("{node}: {e}"));
        assert!(config.principals.contains_key("operator"));
    }
    #[cfg(unix)]
    for private in [
        "ca-key.pem",
        "keys/discipline.ed25519",
        "certs/personnel-key.pem",
        "clients/judicial/auditor-key.pem",
    ] {
        assert_eq!(mode(&dir.join(private)), 0o600, "{private}");
    }

    // Again: refused, naming the files, and nothing changes.
    let before = tree(dir);
    let out = gen_certs(dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refusing to overwrite existing keys"),
        "{stderr}"
    );
    assert!(stderr.contains("keys/discipline.ed25519"), "{stderr}");
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    assert_eq!(tree(dir), before);

    // A new principal: --keep-existing makes only its certificate.
    let node_file = dir.join("judicial.toml");
    let mut text = std::fs::read_to_string(&node_file).expect("read");
    text.push_str("\n[[principal]]\nname = \"court-registry\"\nroles = [\"receive\"]\n");
    std::fs::write(&node_file, text).expect("write");
    let out = gen_certs(dir, &["--keep-existing"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = tree(dir);
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, bytes)| before.iter().find(|(q, _)| q == p).map(|(_, b)| b) != Some(bytes))
        .map(|(p, _)| p.strip_prefix(dir).expect("inside").display().to_string())
        .collect();
    assert_eq!(
        changed,
        vec![
            "clients/judicial/court-registry-key.pem",
            "clients/judicial/court-registry.pem",
            "judicial.toml",
        ],
        "only the new principal's files (and the edited node file) changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_signs_new_messages_and_old_ones_still_verify() {
    let mut fed = TestFederation::start().await;
    let mut discipline = fed.client(DISCIPLINE);
    let old = submit(
        &mut discipline,
        submit_request(
            "before-rotation",
            MessageKind::ClueTransfer,
            SECURITY,
            b"one",
        ),
    )
    .await;
    wait_state(
        &mut discipline,
        "before-rotation",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;

    // Rotate as the README says: a second key in the trust list, the node
    // file pointing at it, gen-certs --keep-existing for the new key; the
    // old key stops signing now but stays listed.
    let dir = fed.dev.dir.clone();
    let now = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let fed_file = dir.join("federation.toml");
    let text = std::fs::read_to_string(&fed_file).expect("read");
    let text = text.replacen(
        "id = \"discipline-k1\"\n",
        &format!("id = \"discipline-k1\"\nnot_after = \"{now}\"\n"),
        1,
    );
    let mut doc: toml_edit::DocumentMut = text.parse().expect("toml");
    let node = doc["node"]
        .as_array_of_tables_mut()
        .expect("nodes")
        .iter_mut()
        .find(|n| n["id"].as_str() == Some(DISCIPLINE))
        .expect("discipline");
    let mut k2 = toml_edit::Table::new();
    k2["id"] = toml_edit::value("discipline-k2");
    k2["public_key"] = toml_edit::value("");
    k2["not_before"] = toml_edit::value(now.clone());
    node["key"].as_array_of_tables_mut().expect("keys").push(k2);
    std::fs::write(&fed_file, doc.to_string()).expect("write");
    let node_file = fed.dev.node_file(DISCIPLINE);
    let text = std::fs::read_to_string(&node_file)
        .expect("read")
        .replace("keys/discipline.ed25519", "keys/discipline-k2.ed25519")
        .replace(
            "signing_key_id = \"discipline-k1\"",
            "signing_key_id = \"discipline-k2\"",
        );
    std::fs::write(&node_file, text).expect("write");
    let out = gen_certs(&dir, &["--keep-existing"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every node reloads the trust list.
    for node in [DISCIPLINE, PERSONNEL, SECURITY, JUDICIAL] {
        fed.stop(node).await;
        fed.restart(node).await;
    }
    let mut discipline = fed.client(DISCIPLINE);
    let new = submit(
        &mut discipline,
        submit_request(
            "after-rotation",
            MessageKind::ClueTransfer,
            SECURITY,
            b"two",
        ),
    )
    .await;
    wait_state(
        &mut discipline,
        "after-rotation",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;

    // Each message names the key that signed it; both verify with the
    // rotated trust list, envelopes and every receipt.
    let keyring = fed.config(SECURITY).federation.keyring.clone();
    for (id, key, accepted) in [
        ("before-rotation", "discipline-k1", old),
        ("after-rotation", "discipline-k2", new),
    ] {
        assert_eq!(accepted.open().expect("receipt").signing_key_id, key);
        let status = discipline
            .get_status(pb::GetStatusRequest {
                message_id: id.into(),
            })
            .await
            .expect("status")
            .into_inner();
        let envelope = SignedEnvelope {
            header: status.envelope_header.clone(),
            signature: status.envelope_signature.clone(),
            payload: if id == "before-rotation" {
                b"one".to_vec()
            } else {
                b"two".to_vec()
            },
        };
        let header = keyring
            .verify_envelope(&envelope)
            .expect("envelope verifies");
        assert_eq!(header.signing_key_id, key);
        assert_eq!(status.receipts.len(), 2, "{id}: accepted and delivered");
        for r in status.receipts {
            keyring
                .verify_receipt(&SignedReceipt::from_wire(r))
                .expect("receipt verifies");
        }
    }
}

/// Replaces discipline's TLS certificate with one valid only in `window`.
fn reissue_node_cert(fed: &TestFederation, from: OffsetDateTime, until: OffsetDateTime) {
    let dir = &fed.dev.dir;
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).expect("read");
    let ca = Ca::load(&read("ca.pem"), &read("ca-key.pem"), 1)
        .expect("ca")
        .valid_between(from, until);
    let cert = ca
        .issue_node(DISCIPLINE, &["127.0.0.1".into()])
        .expect("cert");
    std::fs::write(dir.join("certs/discipline.pem"), cert.cert_pem).expect("write");
    std::fs::write(dir.join("certs/discipline-key.pem"), cert.key_pem).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_an_invalid_certificate_or_key() {
    let fed = TestFederation::start_with(|_| {}, &[]).await;
    let node_file = fed.dev.node_file(DISCIPLINE);
    let now = OffsetDateTime::now_utc();

    reissue_node_cert(&fed, now - Span::days(30), now - Span::days(1));
    let e = NodeConfig::load(&node_file)
        .expect_err("expired certificate")
        .to_string();
    assert!(e.contains("tls_cert: the certificate expired at"), "{e}");

    reissue_node_cert(&fed, now + Span::days(1), now + Span::days(30));
    let e = NodeConfig::load(&node_file)
        .expect_err("future certificate")
        .to_string();
    assert!(
        e.contains("tls_cert: the certificate is not valid before"),
        "{e}"
    );

    // Valid, but for 10 more days only: it starts, with a warning.
    reissue_node_cert(&fed, now - Span::days(1), now + Span::days(10));
    let config = NodeConfig::load(&node_file).expect("loads");
    let warnings = config.expiry_warnings(cluebridge::now_ms());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("TLS certificate expires within 30 days")),
        "{warnings:?}"
    );

    // A signing key whose window has closed.
    let fed_file = fed.dev.dir.join("federation.toml");
    let text = std::fs::read_to_string(&fed_file).expect("read");
    std::fs::write(
        &fed_file,
        text.replacen(
            "id = \"discipline-k1\"\n",
            "id = \"discipline-k1\"\nnot_after = \"2020-01-01T00:00:00Z\"\n",
            1,
        ),
    )
    .expect("write");
    let e = NodeConfig::load(&node_file)
        .expect_err("expired key")
        .to_string();
    assert!(
        e.contains("signing_key_id: key \"discipline-k1\" stopped being valid at 2020-01-01"),
        "{e}"
    );

    // And the binary says so and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_cluebridge"))
        .args(["serve", "--config"])
        .arg(&node_file)
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped being valid"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_limited_to_some_kinds_gets_only_those() {
    let fed = TestFederation::start_with(
        |n| {
            n.principals.push(PrincipalFile {
                name: "feedback-desk".into(),
                roles: vec!["receive".into()],
                receive_kinds: Some(vec!["feedback".into()]),
            });
        },
        &[DISCIPLINE, SECURITY],
    )
    .await;
    let mut discipline = fed.client(DISCIPLINE);
    let mut security = fed.client(SECURITY);

    // Public security's inbox gets a clue transfer first, then feedback
    // answering a clue it sent to discipline.
    submit(
        &mut discipline,
        submit_request("clue-in", MessageKind::ClueTransfer, SECURITY, b"c"),
    )
    .await;
    wait_state(
        &mut discipline,
        "clue-in",
        SentState::Delivered,
        10 * SECOND,
    )
    .await;
    submit(
        &mut security,
        submit_request("clue-out", MessageKind::ClueTransfer, DISCIPLINE, b"c"),
    )
    .await;
    wait_state(&mut security, "clue-out", SentState::Delivered, 10 * SECOND).await;
    let mut answer = submit_request("answer", MessageKind::Feedback, SECURITY, b"thanks");
    answer.correlation_id = "clue-out".into();
    submit(&mut discipline, answer).await;
    wait_state(&mut discipline, "answer", SentState::Delivered, 10 * SECOND).await;

    // The feedback desk gets the feedback, not the older clue transfer.
    let files = fed.dev.client_as(SECURITY, "feedback-desk").expect("files");
    let mut desk = cluebridge::client::Connection::from_files(&files)
        .expect("connection")
        .broker()
        .expect("client");
    let mut stream = receiver(&mut desk, 4, 30).await;
    let d = next(&mut stream, 5 * SECOND).await;
    assert_eq!(
        (d.message_id.as_str(), d.kind),
        ("answer", MessageKind::Feedback.to_wire())
    );
    desk.ack(pb::AckRequest {
        lease: lease_of(&d),
    })
    .await
    .expect("ack");
    let nothing =
        tokio::time::timeout(std::time::Duration::from_millis(500), stream.message()).await;
    assert!(nothing.is_err(), "the desk was offered more: {nothing:?}");

    // The clue transfer is still there for the back office.
    let mut stream = receiver(&mut security, 4, 30).await;
    let d = next(&mut stream, 5 * SECOND).await;
    assert_eq!(d.message_id, "clue-in");
}
