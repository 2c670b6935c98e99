//! Identities: `gen-certs` for a real federation, signing-key rotation,
//! certificates and keys checked at start, nodes reached by their DNS
//! names, and receivers limited to some message kinds.

use crate::harness::*;
use cluebridge::config::{NodeConfig, PrincipalFile};
use cluebridge::crypto::certs::Ca;
use cluebridge::crypto::tls::node_dns_name;
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
            header: status.envelope_header.clone().into(),
            signature: status.envelope_signature.clone().into(),
            payload: if id == "before-rotation" {
                b"one".to_vec().into()
            } else {
                b"two".to_vec().into()
            },
            batch: status
                .envelope_batch
                .clone()
                .map(cluebridge::model::BatchProof::from_envelope_wire),
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

/// A health check over `conn`: the TLS handshake and the call succeeded.
async fn health(conn: &cluebridge::client::Connection) -> Result<(), tonic::Status> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(conn.channel().expect("channel"))
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_reached_by_its_dns_name_and_refused_under_another() {
    let fed = TestFederation::start_with(|_| {}, &[SECURITY]).await;
    // Clients (and peers) connect by address, with the node's DNS name as
    // the TLS server name: that is what the harness's connection does.
    let conn = fed.connection(SECURITY);
    assert_eq!(conn.server_name, "public-security.node.cluebridge.internal");
    assert_eq!(
        conn.endpoint,
        format!("https://127.0.0.1:{}", fed.ports[SECURITY])
    );
    health(&conn).await.expect("reached by its DNS name");

    // The certificate carries that name, the node id and the endpoint's
    // address, beside its identity URI.
    let pem = std::fs::read_to_string(fed.dev.dir.join("certs/public_security.pem")).expect("cert");
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der.contents).expect("der");
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("SANs")
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    for name in [
        "URI(cluebridge://node/public_security)",
        "DNSName(public-security.node.cluebridge.internal)",
        "DNSName(public_security)",
        "IPAddress(7f:00:00:01)",
    ] {
        assert!(sans.iter().any(|s| s == name), "{name} not in {sans:?}");
    }

    // Another node's name, or a name the certificate does not carry: TLS
    // refuses the node's certificate, and nothing reaches it.
    for wrong in [
        node_dns_name(JUDICIAL).expect("name"),
        "public-security.example".into(),
        "security.node.cluebridge.internal".into(),
    ] {
        let conn = cluebridge::client::Connection {
            server_name: wrong.clone(),
            ..fed.connection(SECURITY)
        };
        let status = health(&conn).await.expect_err(&wrong);
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{wrong}: {status:?}"
        );
        let said = format!("{status:?}");
        assert!(said.contains("NotValidForName"), "{wrong}: {said}");
    }
}

/// Replaces discipline's TLS certificate with one made as before node
/// certificates carried a DNS name: its identity URI and its bare id only.
fn issue_node_cert_without_dns_name(fed: &TestFederation) {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
    let dir = &fed.dev.dir;
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).expect("read");
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")).expect("CA key");
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).expect("CA");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![
        SanType::URI("cluebridge://node/discipline".try_into().expect("uri")),
        SanType::DnsName("discipline".try_into().expect("dns")),
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::write(dir.join("certs/discipline.pem"), cert.pem()).expect("write");
    std::fs::write(dir.join("certs/discipline-key.pem"), key.serialize_pem()).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_without_its_dns_name_is_refused_at_start_and_up_reissues_it() {
    let fed = TestFederation::start_with(|_| {}, &[]).await;
    let node_file = fed.dev.node_file(DISCIPLINE);
    let client_cert =
        std::fs::read(fed.dev.dir.join("clients/discipline/backoffice.pem")).expect("client cert");
    issue_node_cert_without_dns_name(&fed);
    let e = NodeConfig::load(&node_file)
        .expect_err("no DNS name")
        .to_string();
    assert!(
        e.contains(
            "tls_cert: the certificate does not carry the DNS name \
             discipline.node.cluebridge.internal"
        ) && e.contains("(its DNS names: discipline)")
            && e.contains("cluebridge gen-certs --keep-existing"),
        "{e}"
    );

    // `up` reissues such a certificate with the federation's CA and keeps
    // every other key and certificate.
    assert_eq!(
        fed.dev
            .reissue_node_certs_without_dns_name()
            .expect("reissue"),
        vec![DISCIPLINE.to_string()]
    );
    NodeConfig::load(&node_file).expect("loads with the reissued certificate");
    assert_eq!(
        std::fs::read(fed.dev.dir.join("clients/discipline/backoffice.pem")).expect("client"),
        client_cert
    );
    assert!(
        fed.dev
            .reissue_node_certs_without_dns_name()
            .expect("again")
            .is_empty()
    );
}

#[test]
fn a_node_id_that_makes_no_dns_name_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    example_config(dir);
    let fed_file = dir.join("federation.toml");
    let text = std::fs::read_to_string(&fed_file).expect("read");
    // "judicial.court" makes two DNS labels; "Personnel" and "personnel"
    // one name.
    std::fs::write(
        &fed_file,
        text.replace("id = \"judicial\"", "id = \"judicial.court\""),
    )
    .expect("write");
    let out = gen_certs(dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("node id \"judicial.court\" cannot be made into the DNS name"),
        "{stderr}"
    );
    assert!(!dir.join("ca.pem").exists(), "nothing was written");

    std::fs::write(
        &fed_file,
        text.replace(
            "endpoint = \"https://personnel.cluebridge.example:7401\"",
            "endpoint = \"https://personnel.cluebridge.example:7401\"\n\n\
             [[node.key]]\nid = \"p-k1\"\npublic_key = \"UKqdmudyWHj4EAP+Uzgcz1rK+HQsJeQ5QNneEv1KN/E=\"\n\n\
             [[node]]\nid = \"Personnel\"\nkind = \"personnel\"\n\
             endpoint = \"https://personnel2.cluebridge.example:7401\"",
        ),
    )
    .expect("write");
    let out = gen_certs(dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("node ids \"personnel\" and \"Personnel\" have the same DNS name"),
        "{stderr}"
    );
    // Loading the trust list refuses it too.
    let ca = Ca::generate("t", 1).expect("ca");
    std::fs::write(dir.join("ca.pem"), &ca.cert.cert_pem).expect("write");
    let e = cluebridge::config::Federation::load(&fed_file)
        .expect_err("two ids, one DNS name")
        .to_string();
    assert!(
        e.contains(
            "node: node ids \"personnel\" and \"Personnel\" have the same DNS name \
             personnel.node.cluebridge.internal"
        ),
        "{e}"
    );
}

/// Discipline sends clue transfer `id` to public security and waits until
/// it is in custody there.
async fn clue_to_security(
    discipline: &mut pb::broker_client::BrokerClient<tonic::transport::Channel>,
    id: &str,
) {
    let request = submit_request(id, MessageKind::ClueTransfer, SECURITY, b"c");
    submit(discipline, request).await;
    wait_state(discipline, id, SentState::Delivered, 10 * SECOND).await;
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
    clue_to_security(&mut discipline, "clue-in").await;
    // A reply-by deadline: the clue expects feedback.
    let mut clue_out = submit_request("clue-out", MessageKind::ClueTransfer, DISCIPLINE, b"c");
    clue_out.reply_by_ms = cluebridge::now_ms() + 86_400_000;
    submit(&mut security, clue_out).await;
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

    // A clue transfer that arrives while the desk's stream waits on its
    // empty share of the inbox is not handed to it either.
    clue_to_security(&mut discipline, "clue-later").await;
    let nothing =
        tokio::time::timeout(std::time::Duration::from_millis(500), stream.message()).await;
    assert!(nothing.is_err(), "the desk was handed more: {nothing:?}");

    // Both clue transfers are still there for the back office, in arrival
    // order, each at its first attempt.
    let mut stream = receiver(&mut security, 4, 30).await;
    for id in ["clue-in", "clue-later"] {
        let d = next(&mut stream, 5 * SECOND).await;
        assert_eq!((d.message_id.as_str(), d.attempt), (id, 1));
    }
}
