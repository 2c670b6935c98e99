//! Generates a development federation: one node per agency kind on
//! loopback, with a fresh CA, node signing keys, TLS certificates, one
//! client certificate per node, `federation.toml` and four node files.
//! Used by `up`, `bench` and the integration tests.

use crate::config::{FederationFile, KeyFile, NodeEntryFile, NodeFile, PrincipalFile, RouteFile};
use crate::crypto::tls::NODE_DNS_SUFFIX;
use crate::model::AgencyKind;
use crate::provision::{self, write_file};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The dev federation's nodes, one per agency kind, named after it.
pub const NODES: [AgencyKind; 4] = AgencyKind::ALL;

/// The back-office principal of each node: roles `submit` and `receive`.
pub const CLIENT_NAME: &str = "backoffice";
/// The operators' principal of each node: role `operate`.
pub const OPERATOR_NAME: &str = "operator";
/// The compliance staff's principal of each node: role `audit`.
pub const AUDITOR_NAME: &str = "auditor";
/// The principal of each development node that approves submits on
/// routes that require it.
pub const APPROVER_NAME: &str = "approver";

/// The routes of the development federation: discipline transfers clues to
/// public security and judicial organs and receives theirs; it sends
/// rectification suggestions to personnel; public security and judicial
/// organs exchange clues. Feedback is implicit.
pub fn dev_routes() -> Vec<RouteFile> {
    let r = |from: &str, to: &str, kinds: &[&str]| RouteFile {
        from: from.into(),
        to: to.into(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        reply_within_days: None,
        expects_feedback: None,
        requires_approval: None,
    };
    vec![
        r("discipline", "public_security", &["clue_transfer"]),
        r("discipline", "judicial", &["clue_transfer"]),
        // Four eyes: a second principal approves each suggestion.
        RouteFile {
            reply_within_days: Some(30),
            requires_approval: Some(true),
            ..r("discipline", "personnel", &["rectification_suggestion"])
        },
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
        crate::file_modes::create_private_dir(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut entries = Vec::new();
        let mut node_files = Vec::new();
        for (kind, port) in NODES.iter().zip(ports) {
            let id = kind.as_str();
            let key_id = format!("{id}-k1");
            entries.push(NodeEntryFile {
                id: id.into(),
                kind: id.into(),
                endpoint: format!("https://127.0.0.1:{port}"),
                // Filled in by gen-certs below.
                keys: vec![KeyFile {
                    id: key_id.clone(),
                    public_key: String::new(),
                    not_before: None,
                    not_after: None,
                }],
            });
            let principal = |name: &str, roles: &[&str]| PrincipalFile {
                name: name.into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                receive_kinds: None,
            };
            let mut node = NodeFile {
                node_id: id.into(),
                federation: "federation.toml".into(),
                listen: format!("127.0.0.1:{port}"),
                // Metrics 2000 ports above the gRPC port (9401.. for `up`).
                metrics_listen: port.checked_add(2000).map(|p| format!("127.0.0.1:{p}")),
                data_dir: format!("data/{id}").into(),
                signing_key: format!("keys/{id}.ed25519").into(),
                signing_key_id: key_id,
                tls_cert: format!("certs/{id}.pem").into(),
                tls_key: format!("certs/{id}-key.pem").into(),
                delivery: Default::default(),
                limits: Default::default(),
                audit: Default::default(),
                store: Default::default(),
                principals: vec![
                    principal(CLIENT_NAME, &["submit", "receive"]),
                    principal(OPERATOR_NAME, &["operate"]),
                    principal(AUDITOR_NAME, &["audit"]),
                    principal(APPROVER_NAME, &["approve"]),
                ],
            };
            tune(&mut node);
            let text = toml::to_string_pretty(&node).context("encoding a node file")?;
            let path = dir.join(format!("{id}.toml"));
            write_file(
                &path,
                &format!(
                    "# Development node file of the {id} agency, made by `cluebridge up`.\n{text}"
                ),
                false,
            )?;
            node_files.push(path);
        }
        let federation = FederationFile {
            name: "cluebridge-dev".into(),
            ca_cert: "ca.pem".into(),
            nodes: entries,
            routes: dev_routes(),
        };
        let text = toml::to_string_pretty(&federation).context("encoding federation.toml")?;
        let federation_path = dir.join("federation.toml");
        write_file(
            &federation_path,
            &format!(
                "# Development trust list, made by `cluebridge up`. Not for production.\n\
                 # The TLS certificate of each node carries its DNS name, the server name\n\
                 # clients and peers connect to: the node id lower-cased, '_' written '-',\n\
                 # then {NODE_DNS_SUFFIX} (public-security{NODE_DNS_SUFFIX}).\n{text}"
            ),
            false,
        )?;
        let options = provision::Options {
            existing: provision::Existing::Refuse,
            ca_days: 365,
            cert_days: 365,
        };
        provision::gen_certs(&federation_path, &node_files, &options)?;
        Ok(DevFederation {
            dir: dir.to_path_buf(),
        })
    }

    /// Reissues, with the federation's CA, the TLS certificate (and key) of
    /// every node whose certificate does not carry the node's DNS name (a
    /// federation made before node certificates carried one), keeping every
    /// other key and certificate. Returns the nodes whose certificate was
    /// reissued.
    pub fn reissue_node_certs_without_dns_name(&self) -> Result<Vec<String>> {
        let mut reissued = Vec::new();
        let mut node_files = Vec::new();
        for kind in NODES {
            let id = kind.as_str();
            let path = self.node_file(id);
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            node_files.push(path.clone());
            let Ok(node) = toml::from_str::<NodeFile>(&text) else {
                continue;
            };
            let cert = crate::config::resolve(&path, &node.tls_cert);
            let key = crate::config::resolve(&path, &node.tls_key);
            let Ok(pem) = std::fs::read_to_string(&cert) else {
                continue;
            };
            let Ok((_, der)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
                continue;
            };
            let (Ok(names), Ok(dns_name)) = (
                crate::crypto::tls::dns_names_of(&der.contents),
                crate::crypto::tls::node_dns_name(id),
            ) else {
                continue;
            };
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&dns_name)) {
                for file in [&cert, &key].into_iter().filter(|f| f.exists()) {
                    std::fs::remove_file(file)
                        .with_context(|| format!("removing {}", file.display()))?;
                }
                reissued.push(id.to_string());
            }
        }
        if !reissued.is_empty() {
            let options = provision::Options {
                existing: provision::Existing::Keep,
                ca_days: 365,
                cert_days: 365,
            };
            provision::gen_certs(&self.dir.join("federation.toml"), &node_files, &options)?;
        }
        Ok(reissued)
    }

    pub fn node_file(&self, node_id: &str) -> PathBuf {
        self.dir.join(format!("{node_id}.toml"))
    }

    /// The files the back-office system of `node_id`'s agency uses.
    pub fn client(&self, node_id: &str) -> Result<ClientFiles> {
        self.client_as(node_id, CLIENT_NAME)
    }

    /// The files principal `name` of `node_id`'s agency uses.
    pub fn client_as(&self, node_id: &str, name: &str) -> Result<ClientFiles> {
        let config = crate::config::NodeConfig::load(&self.node_file(node_id))?;
        let entry = config
            .federation
            .node(node_id)
            .with_context(|| format!("{node_id} is not in the federation"))?;
        Ok(ClientFiles {
            endpoint: entry.endpoint.clone(),
            server_name: crate::crypto::tls::node_dns_name(node_id)?,
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("clients/{node_id}/{name}.pem")),
            key: self.dir.join(format!("clients/{node_id}/{name}-key.pem")),
        })
    }
}
