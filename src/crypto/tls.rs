//! mTLS for peers and clients, and reading who is on the other end.
//!
//! Identities live in a URI subject-alternative name of the certificate:
//! `cluebridge://node/<node-id>` for a node, and
//! `cluebridge://node/<node-id>/client/<name>` for a client system of that
//! node's agency.

use crate::error::{Error, Result};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

const URI_PREFIX: &str = "cluebridge://node/";

/// Who presented a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    Node(String),
    Client { node: String, name: String },
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Node(id) => write!(f, "node {id}"),
            PeerIdentity::Client { node, name } => write!(f, "client {name} of node {node}"),
        }
    }
}

pub fn node_uri(node_id: &str) -> String {
    format!("{URI_PREFIX}{node_id}")
}

pub fn client_uri(node_id: &str, name: &str) -> String {
    format!("{URI_PREFIX}{node_id}/client/{name}")
}

fn parse_uri(uri: &str) -> Option<PeerIdentity> {
    let rest = uri.strip_prefix(URI_PREFIX)?;
    let identity = match rest.split('/').collect::<Vec<_>>().as_slice() {
        [node] => PeerIdentity::Node(node.to_string()),
        [node, "client", name] => PeerIdentity::Client {
            node: node.to_string(),
            name: name.to_string(),
        },
        _ => return None,
    };
    let ok = match &identity {
        PeerIdentity::Node(n) => crate::model::validate_id("node id", n).is_ok(),
        PeerIdentity::Client { node, name } => {
            crate::model::validate_id("node id", node).is_ok()
                && crate::model::validate_id("client name", name).is_ok()
        }
    };
    ok.then_some(identity)
}

/// Reads the cluebridge identity from a DER certificate (already verified
/// against the federation CA by the TLS layer).
pub fn identity_of(der: &[u8]) -> Result<PeerIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Unauthenticated(format!("client certificate does not parse: {e}")))?;
    let sans = cert.subject_alternative_name().map_err(|e| {
        Error::Unauthenticated(format!("certificate SAN extension is invalid: {e}"))
    })?;
    let mut found = None;
    if let Some(sans) = sans {
        for name in &sans.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(id) = parse_uri(uri)
            {
                if found.is_some() {
                    return Err(Error::Unauthenticated(
                        "certificate names more than one cluebridge identity".into(),
                    ));
                }
                found = Some(id);
            }
        }
    }
    found.ok_or_else(|| {
        Error::Unauthenticated(
            "certificate has no cluebridge://node/... URI subject alternative name".into(),
        )
    })
}

/// Server side: present `cert`, require a client certificate from the CA.
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .client_ca_root(Certificate::from_pem(ca_pem))
}

/// Client side: trust only the federation CA, present `cert`, and expect
/// the server certificate to name `server_name` (a node id).
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    server_name: &str,
) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .domain_name(server_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip() {
        assert_eq!(
            parse_uri(&node_uri("discipline")),
            Some(PeerIdentity::Node("discipline".into()))
        );
        assert_eq!(
            parse_uri(&client_uri("personnel", "hr-system")),
            Some(PeerIdentity::Client {
                node: "personnel".into(),
                name: "hr-system".into()
            })
        );
        assert_eq!(parse_uri("cluebridge://node/a/b"), None);
        assert_eq!(parse_uri("https://node/a"), None);
        assert_eq!(parse_uri("cluebridge://node/a b"), None);
    }
}
