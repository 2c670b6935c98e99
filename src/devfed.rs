//! Generates a development federation: one node per agency kind on
//! loopback, with a fresh CA, node signing keys, TLS certificates, one
//! client certificate per node, `federation.toml` and four node files.
//! Used by `up`, `bench` and the integration tests.

use crate::config::{FederationFile, KeyFile, NodeEntryFile, NodeFile, RouteFile};
use crate::crypto::NodeSigner;
use crate::crypto::certs::Ca;
use crate::model::AgencyKind;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The dev federation's nodes, one per agency kind, named after it.
pub const NODES: [AgencyKind; 4] = AgencyKind::ALL;

/// The client system name whose certificate each node gets.
pub const CLIENT_NAME: &str = "backoffice";

/// The routes of the development federation: discipline transfers clues to
/// public security and judicial organs and receives theirs; it sends
/// rectification suggestions to personnel; public security and judicial
/// organs exchange clues. Feedback is implicit.
pub fn dev_routes() -> Vec<RouteFile> {
    let r = |from: &str, to: &str, kinds: &[&str]| RouteFile {
        from: from.into(),
        to: to.into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
    };
    vec![
        r("discipline", "public_security", &["clue_transfer"]),
        r("discipline", "judicial", &["clue_transfer"]),
        r("discipline", "personnel", &["rectification_suggestion"]),
        r("public_security", "discipline", &["clue_transfer"]),
        r("judicial", "discipline", &["clue_transfer"]),
        r("public_security", "judicial", &["clue_transfer"]),
        r("judicial", "public_security", &["clue_transfer"]),
    ]
}

/// A development federation on disk.
#[derive(Clone, Debug)]
pub struct DevFederation {
    pub dir: PathBuf,
}

/// Paths a client needs to talk to one node.
#[derive(Clone, Debug)]
pub struct ClientFiles {
    pub endpoint: String,
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

impl DevFederation {
    /// Opens an existing development federation, if `dir` holds one.
    pub fn open(dir: &Path) -> Option<DevFederation> {
        dir.join("federation.toml").exists().then(|| DevFederation {
            dir: dir.to_path_buf(),
        })
    }

    /// Creates a development federation in `dir`: node `i` listens on
    /// `127.0.0.1:ports[i]`. `tune` may change each node file (tests use it
    /// for short leases and few attempts).
    pub fn create(
        dir: &Path,
        ports: [u16; 4],
        tune: impl Fn(&mut NodeFile),
    ) -> Result<DevFederation> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Ca::generate("cluebridge-dev", 365)?;
        write_file(&dir.join("ca.pem"), &ca.cert.cert_pem, false)?;
        write_file(&dir.join("ca-key.pem"), &ca.cert.key_pem, true)?;
        let mut entries = Vec::new();
        for (kind, port) in NODES.iter().zip(ports) {
            let id = kind.as_str();
            let key_id = format!("{id}-k1");
            let signer = NodeSigner::generate(id, &key_id);
            write_file(
                &dir.join(format!("keys/{id}.ed25519")),
                &signer.to_text(),
                true,
            )?;
            let tls = ca.issue_node(id, &["127.0.0.1".into(), "localhost".into()])?;
            write_file(&dir.join(format!("certs/{id}.pem")), &tls.cert_pem, false)?;
            write_file(&dir.join(format!("certs/{id}-key.pem")), &tls.key_pem, true)?;
            let client = ca.issue_client(id, CLIENT_NAME)?;
            write_file(
                &dir.join(format!("clients/{id}/{CLIENT_NAME}.pem")),
                &client.cert_pem,
                false,
            )?;
            write_file(
                &dir.join(format!("clients/{id}/{CLIENT_NAME}-key.pem")),
                &client.key_pem,
                true,
            )?;
            entries.push(NodeEntryFile {
                id: id.into(),
                kind: id.into(),
                endpoint: format!("https://127.0.0.1:{port}"),
                keys: vec![KeyFile {
                    id: key_id.clone(),
                    public_key: signer.public_key_base64(),
                    not_before: None,
                    not_after: None,
                }],
            });
            let mut node = NodeFile {
                node_id: id.into(),
                federation: "federation.toml".into(),
                listen: format!("127.0.0.1:{port}"),
                data_dir: format!("data/{id}").into(),
                signing_key: format!("keys/{id}.ed25519").into(),
                signing_key_id: key_id,
                tls_cert: format!("certs/{id}.pem").into(),
                tls_key: format!("certs/{id}-key.pem").into(),
                delivery: Default::default(),
                limits: Default::default(),
            };
            tune(&mut node);
            let text = toml::to_string_pretty(&node).context("encoding a node file")?;
            write_file(
                &dir.join(format!("{id}.toml")),
                &format!(
                    "# Development node file of the {id} agency, made by `cluebridge up`.\n{text}"
                ),
                false,
            )?;
        }
        let federation = FederationFile {
            name: "cluebridge-dev".into(),
            ca_cert: "ca.pem".into(),
            nodes: entries,
            routes: dev_routes(),
        };
        let text = toml::to_string_pretty(&federation).context("encoding federation.toml")?;
        write_file(
            &dir.join("federation.toml"),
            &format!(
                "# Development trust list, made by `cluebridge up`. Not for production.\n{text}"
            ),
            false,
        )?;
        Ok(DevFederation {
            dir: dir.to_path_buf(),
        })
    }

    pub fn node_file(&self, node_id: &str) -> PathBuf {
        self.dir.join(format!("{node_id}.toml"))
    }

    /// The files a client system of `node_id`'s agency uses.
    pub fn client(&self, node_id: &str) -> Result<ClientFiles> {
        let config = crate::config::NodeConfig::load(&self.node_file(node_id))?;
        let entry = config
            .federation
            .node(node_id)
            .with_context(|| format!("{node_id} is not in the federation"))?;
        Ok(ClientFiles {
            endpoint: entry.endpoint.clone(),
            server_name: node_id.to_string(),
            ca: self.dir.join("ca.pem"),
            cert: self
                .dir
                .join(format!("clients/{node_id}/{CLIENT_NAME}.pem")),
            key: self
                .dir
                .join(format!("clients/{node_id}/{CLIENT_NAME}-key.pem")),
        })
    }
}
