//! The configuration files in `config/` parse, document the real defaults,
//! and mistakes are reported with the file and field.

use cluebridge::config::{
    AuditSettings, DeliverySettings, Federation, FederationFile, Limits, NodeConfig, NodeFile,
    StoreSettings,
};
use std::path::Path;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn example_files_parse_and_show_the_real_defaults() {
    let text = std::fs::read_to_string(repo("config/federation.toml")).expect("federation.toml");
    let file: FederationFile = toml::from_str(&text).expect("federation.toml parses");
    // Validate it fully against a stand-in CA file.
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = cluebridge::crypto::certs::Ca::generate("t", 1).expect("ca");
    std::fs::write(tmp.path().join("ca.pem"), &ca.cert.cert_pem).expect("write");
    let mut file = file;
    file.ca_cert = "ca.pem".into();
    let fed = Federation::from_file(&tmp.path().join("federation.toml"), file).expect("valid");
    assert_eq!(fed.nodes.len(), 4);

    for agency in ["discipline", "personnel", "public_security", "judicial"] {
        let text =
            std::fs::read_to_string(repo(&format!("config/{agency}.toml"))).expect("node file");
        let node: NodeFile = toml::from_str(&text).expect("node file parses");
        assert_eq!(node.node_id, agency);
        assert!(fed.node(agency).is_some());
        // The documented values are the defaults the code uses.
        assert_eq!(node.delivery, DeliverySettings::default());
        assert_eq!(node.limits, Limits::default());
        assert_eq!(node.audit, AuditSettings::default());
        assert_eq!(node.store, StoreSettings::default());
        let names: Vec<&str> = node.principals.iter().map(|p| p.name.as_str()).collect();
        assert!(
            names.contains(&"operator") && names.contains(&"auditor"),
            "{agency}: {names:?}"
        );
    }
}

#[test]
fn a_mistake_names_its_file_and_field() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev =
        cluebridge::devfed::DevFederation::create(tmp.path(), [1, 2, 3, 4], |_| {}).expect("dev");
    let fed_path = tmp.path().join("federation.toml");
    let text = std::fs::read_to_string(&fed_path).expect("read");
    std::fs::write(
        &fed_path,
        text.replacen("kind = \"personnel\"", "kind = \"personel\"", 1),
    )
    .expect("write");
    let err = NodeConfig::load(&dev.node_file("discipline"))
        .expect_err("typo")
        .to_string();
    assert!(err.contains("federation.toml"), "{err}");
    assert!(err.contains("node[1].kind"), "{err}");
    assert!(err.contains("\"personel\""), "{err}");

    std::fs::write(&fed_path, text).expect("restore");
    let node_path = dev.node_file("discipline");
    let node = std::fs::read_to_string(&node_path).expect("read");
    std::fs::write(
        &node_path,
        node.replace("listen = \"127.0.0.1:1\"", "listen = \"nowhere\""),
    )
    .expect("write");
    let err = NodeConfig::load(&node_path)
        .expect_err("bad listen")
        .to_string();
    assert!(
        err.contains("discipline.toml") && err.contains("listen"),
        "{err}"
    );
}

#[test]
fn a_journal_file_size_out_of_range_is_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev = cluebridge::devfed::DevFederation::create(tmp.path(), [1, 2, 3, 4], |n| {
        n.store.journal_file_bytes = 65536;
    })
    .expect("dev");
    let node_path = dev.node_file("discipline");
    let config = NodeConfig::load(&node_path).expect("64 KiB is taken");
    assert_eq!(config.store.journal_file_bytes, 65536);
    let text = std::fs::read_to_string(&node_path).expect("read");
    std::fs::write(
        &node_path,
        text.replace("journal_file_bytes = 65536", "journal_file_bytes = 100"),
    )
    .expect("write");
    let err = NodeConfig::load(&node_path)
        .expect_err("too small")
        .to_string();
    assert!(
        err.contains("discipline.toml") && err.contains("store.journal_file_bytes"),
        "{err}"
    );
}

/// `expects_feedback = false` cannot undo a reply window, and a route
/// setting that is not a route is named.
#[test]
fn a_route_that_expects_no_feedback_cannot_have_a_reply_window() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev =
        cluebridge::devfed::DevFederation::create(tmp.path(), [1, 2, 3, 4], |_| {}).expect("dev");
    let fed_path = tmp.path().join("federation.toml");
    let text = std::fs::read_to_string(&fed_path).expect("read");
    let edited = text.replace(
        "reply_within_days = 30",
        "reply_within_days = 30\nexpects_feedback = false",
    );
    assert_ne!(edited, text);
    std::fs::write(&fed_path, edited).expect("write");
    let err = NodeConfig::load(&dev.node_file("discipline"))
        .expect_err("contradiction")
        .to_string();
    assert!(
        err.contains("federation.toml")
            && err.contains("expects_feedback")
            && err.contains("has a reply window, so it expects feedback"),
        "{err}"
    );
}

#[test]
fn a_reply_window_out_of_range_is_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dev =
        cluebridge::devfed::DevFederation::create(tmp.path(), [1, 2, 3, 4], |_| {}).expect("dev");
    let fed_path = tmp.path().join("federation.toml");
    let text = std::fs::read_to_string(&fed_path).expect("read");
    assert!(text.contains("reply_within_days = 30"), "{text}");
    for bad in ["0", "3651"] {
        let edited = text.replace(
            "reply_within_days = 30",
            &format!("reply_within_days = {bad}"),
        );
        std::fs::write(&fed_path, edited).expect("write");
        let err = NodeConfig::load(&dev.node_file("discipline"))
            .expect_err("out of range")
            .to_string();
        assert!(
            err.contains("federation.toml")
                && err.contains("reply_within_days")
                && err.contains("between 1 and 3650"),
            "{err}"
        );
    }
}
