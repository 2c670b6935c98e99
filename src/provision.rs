//! Keys and certificates for a federation, made from its files
//! (`cluebridge gen-certs`, and `up` for the development federation).
//!
//! From `federation.toml` and the node files that point at it, this makes:
//! the CA (kept if it exists), each node's Ed25519 signing key and TLS
//! certificate at the paths its node file names (the certificate carries
//! the node's DNS name, `crypto::tls::node_dns_name`, the server name that
//! clients and peers connect to), and a client certificate
//! for every `[[principal]]` at `clients/<node-id>/<name>.pem` (and
//! `-key.pem`) beside `federation.toml`. The public signing keys are written
//! into `federation.toml` in place, comments kept. Private keys are 0600,
//! directories made for them 0700.

use crate::config::{FederationFile, NodeFile, parse_endpoint, resolve};
use crate::crypto::NodeSigner;
use crate::crypto::certs::{Ca, IssuedCert};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to do with key files that already exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse and change nothing (the default).
    Refuse,
    /// Keep them and make only what is missing (new principals, a new key
    /// after rotation).
    Keep,
    /// Overwrite them.
    Overwrite,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub existing: Existing,
    /// Validity of a new CA certificate.
    pub ca_days: i64,
    /// Validity of node and client certificates.
    pub cert_days: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            existing: Existing::Refuse,
            ca_days: 3650,
            cert_days: 365,
        }
    }
}

/// One file made or kept.
#[derive(Clone, Debug)]
pub struct Made {
    pub path: PathBuf,
    pub what: String,
    pub kept: bool,
}

/// Writes `contents` to `path`, synced to disk. A private file is 0600; any
/// other is 0644 at most (never writable by group or others, whatever the
/// umask or the mode of a file it replaces). Missing parent directories are
/// created 0700.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    if let Some(parent) = path.parent() {
        crate::file_modes::create_private_dir(parent)
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
    #[cfg(unix)]
    {
        // `mode` applies only to new files; an overwritten one keeps its
        // old mode unless it is set again.
        use std::os::unix::fs::PermissionsExt;
        let old = f
            .metadata()
            .with_context(|| format!("reading the mode of {}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        let wanted = if private { 0o600 } else { old & 0o755 };
        if old != wanted {
            f.set_permissions(std::fs::Permissions::from_mode(wanted))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
    }
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// The CA private key's path: `ca.pem` → `ca-key.pem`.
pub fn ca_key_path(ca_cert: &Path) -> PathBuf {
    let stem = ca_cert
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ca".into());
    ca_cert.with_file_name(format!("{stem}-key.pem"))
}

/// Where a principal's client certificate and key go.
pub fn client_cert_paths(federation: &Path, node_id: &str, name: &str) -> (PathBuf, PathBuf) {
    let dir = resolve(federation, Path::new("clients")).join(node_id);
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

/// The node files in the directory of `federation` that name it.
pub fn discover_node_files(federation: &Path) -> Result<Vec<PathBuf>> {
    let dir = federation.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let target = std::fs::canonicalize(federation)
        .with_context(|| format!("reading {}", federation.display()))?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(node) = toml::from_str::<NodeFile>(&text) else {
            continue;
        };
        if std::fs::canonicalize(resolve(&path, &node.federation)).ok() == Some(target.clone()) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// One file about to be made.
struct Planned {
    path: PathBuf,
    what: String,
}

/// Makes the keys and certificates of a federation. With no `node_files`,
/// every node file beside `federation` that names it is used.
pub fn gen_certs(
    federation: &Path,
    node_files: &[PathBuf],
    options: &Options,
) -> Result<Vec<Made>> {
    let text = std::fs::read_to_string(federation)
        .with_context(|| format!("reading {}", federation.display()))?;
    let fed: FederationFile = toml::from_str(&text)
        .with_context(|| format!("{}: invalid federation file", federation.display()))?;
    // Every node certificate carries the node's DNS name: refuse, before
    // anything is written, an id that makes none.
    crate::crypto::tls::check_node_dns_names(fed.nodes.iter().map(|n| n.id.as_str()))
        .with_context(|| format!("{}", federation.display()))?;
    let node_files = if node_files.is_empty() {
        discover_node_files(federation)?
    } else {
        node_files.to_vec()
    };
    if node_files.is_empty() {
        bail!(
            "no node file in {} names {}; pass the node files with --node",
            federation.parent().unwrap_or(Path::new(".")).display(),
            federation.display()
        );
    }
    let mut nodes = Vec::new();
    for path in &node_files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let node: NodeFile = toml::from_str(&text)
            .with_context(|| format!("{}: invalid node file", path.display()))?;
        let Some(entry) = fed.nodes.iter().find(|n| n.id == node.node_id) else {
            bail!(
                "{}: node_id {:?} is not listed in {}",
                path.display(),
                node.node_id,
                federation.display()
            );
        };
        let host = parse_endpoint(&entry.endpoint).map_err(|e| {
            anyhow::anyhow!(
                "{}: node {:?} endpoint: {e}",
                federation.display(),
                entry.id
            )
        })?;
        nodes.push((path.clone(), node, host));
    }

    // Every file about to be written, checked before anything is.
    let mut planned = Vec::new();
    for (path, node, _) in &nodes {
        let id = &node.node_id;
        planned.push(Planned {
            path: resolve(path, &node.signing_key),
            what: format!("signing key {} of node {id}", node.signing_key_id),
        });
        planned.push(Planned {
            path: resolve(path, &node.tls_cert),
            what: format!("TLS certificate of node {id}"),
        });
        planned.push(Planned {
            path: resolve(path, &node.tls_key),
            what: format!("TLS private key of node {id}"),
        });
        for p in &node.principals {
            let (cert, key) = client_cert_paths(federation, id, &p.name);
            planned.push(Planned {
                path: cert,
                what: format!("client certificate of {} ({id})", p.name),
            });
            planned.push(Planned {
                path: key,
                what: format!("client private key of {} ({id})", p.name),
            });
        }
    }
    let existing: Vec<&Planned> = planned.iter().filter(|p| p.path.exists()).collect();
    if options.existing == Existing::Refuse && !existing.is_empty() {
        let list = existing
            .iter()
            .map(|p| format!("  {} ({})", p.path.display(), p.what))
            .collect::<Vec<_>>()
            .join("\n");
        bail!(
            "refusing to overwrite existing keys and certificates:\n{list}\n\
             Nothing was changed. Use --keep-existing to make only what is missing, \
             or --force to replace them."
        );
    }
    let keep = |path: &Path| options.existing == Existing::Keep && path.exists();

    let mut made = Vec::new();
    let ca_cert = resolve(federation, &fed.ca_cert);
    let ca_key = ca_key_path(&ca_cert);
    let ca = if ca_cert.exists() && ca_key.exists() {
        let cert = std::fs::read_to_string(&ca_cert)
            .with_context(|| format!("reading {}", ca_cert.display()))?;
        let key = std::fs::read_to_string(&ca_key)
            .with_context(|| format!("reading {}", ca_key.display()))?;
        made.push(Made {
            path: ca_cert.clone(),
            what: "federation CA (existing, used to issue)".into(),
            kept: true,
        });
        Ca::load(&cert, &key, options.cert_days)?
    } else if ca_cert.exists() {
        bail!(
            "{} exists but its private key {} does not; certificates cannot be issued \
             without it",
            ca_cert.display(),
            ca_key.display()
        );
    } else {
        let ca = Ca::generate(&fed.name, options.ca_days)?;
        write_file(&ca_cert, &ca.cert.cert_pem, false)?;
        write_file(&ca_key, &ca.cert.key_pem, true)?;
        made.push(Made {
            path: ca_cert.clone(),
            what: "federation CA certificate".into(),
            kept: false,
        });
        made.push(Made {
            path: ca_key.clone(),
            what: "federation CA private key (keep it offline)".into(),
            kept: false,
        });
        Ca::load(&ca.cert.cert_pem, &ca.cert.key_pem, options.cert_days)?
    };

    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{}: invalid federation file", federation.display()))?;
    let mut record = |path: &Path, what: &str, kept: bool| {
        made.push(Made {
            path: path.to_path_buf(),
            what: what.to_string(),
            kept,
        })
    };
    for (path, node, host) in &nodes {
        let id = &node.node_id;
        let key_path = resolve(path, &node.signing_key);
        let signer = if keep(&key_path) {
            let text = std::fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            record(
                &key_path,
                &format!("signing key {} of node {id}", node.signing_key_id),
                true,
            );
            NodeSigner::from_text(id, &node.signing_key_id, &text)
                .with_context(|| format!("{}", key_path.display()))?
        } else {
            let signer = NodeSigner::generate(id, &node.signing_key_id);
            write_file(&key_path, &signer.to_text(), true)?;
            record(
                &key_path,
                &format!("signing key {} of node {id}", node.signing_key_id),
                false,
            );
            signer
        };
        set_public_key(
            &mut doc,
            id,
            &node.signing_key_id,
            &signer.public_key_base64(),
        )
        .with_context(|| format!("{}", federation.display()))?;

        let (cert_path, tls_key_path) =
            (resolve(path, &node.tls_cert), resolve(path, &node.tls_key));
        if keep(&cert_path) && keep(&tls_key_path) {
            record(&cert_path, &format!("TLS certificate of node {id}"), true);
        } else {
            let hosts = if host == id {
                vec![]
            } else {
                vec![host.clone()]
            };
            let cert = ca.issue_node(id, &hosts)?;
            write_pair(&cert, &cert_path, &tls_key_path)?;
            record(
                &cert_path,
                &format!("TLS certificate of node {id} (and its key)"),
                false,
            );
        }
        for p in &node.principals {
            let (cert_path, key_path) = client_cert_paths(federation, id, &p.name);
            let what = format!(
                "client certificate of {} ({id}; roles {})",
                p.name,
                p.roles.join(", ")
            );
            if keep(&cert_path) && keep(&key_path) {
                record(&cert_path, &what, true);
            } else {
                write_pair(&ca.issue_client(id, &p.name)?, &cert_path, &key_path)?;
                record(&cert_path, &what, false);
            }
        }
    }
    write_file(federation, &doc.to_string(), false)?;
    made.push(Made {
        path: federation.to_path_buf(),
        what: "public signing keys written into the trust list".into(),
        kept: false,
    });
    Ok(made)
}

fn write_pair(cert: &IssuedCert, cert_path: &Path, key_path: &Path) -> Result<()> {
    write_file(key_path, &cert.key_pem, true)?;
    write_file(cert_path, &cert.cert_pem, false)
}

/// Sets `public_key` of key `key_id` of node `node_id` in the trust list,
/// adding the key entry if the node lists no key by that id.
fn set_public_key(
    doc: &mut toml_edit::DocumentMut,
    node_id: &str,
    key_id: &str,
    public_key: &str,
) -> Result<()> {
    let nodes = doc
        .get_mut("node")
        .and_then(|n| n.as_array_of_tables_mut())
        .context("no [[node]] entries")?;
    let node = nodes
        .iter_mut()
        .find(|n| n.get("id").and_then(|v| v.as_str()) == Some(node_id))
        .with_context(|| format!("node {node_id:?} is not listed"))?;
    if node.get("key").is_none() {
        node.insert(
            "key",
            toml_edit::Item::ArrayOfTables(toml_edit::ArrayOfTables::new()),
        );
    }
    let keys = node
        .get_mut("key")
        .and_then(|k| k.as_array_of_tables_mut())
        .with_context(|| format!("node {node_id:?}: key must be a [[node.key]] list"))?;
    if let Some(key) = keys
        .iter_mut()
        .find(|k| k.get("id").and_then(|v| v.as_str()) == Some(key_id))
    {
        key["public_key"] = toml_edit::value(public_key);
    } else {
        let mut key = toml_edit::Table::new();
        key["id"] = toml_edit::value(key_id);
        key["public_key"] = toml_edit::value(public_key);
        keys.push(key);
    }
    Ok(())
}
