//! mTLS for peers and clients, and reading who is on the other end.
//!
//! Identities live in a URI subject-alternative name of the certificate:
//! `cluebridge://node/<node-id>` for a node, and
//! `cluebridge://node/<node-id>/client/<name>` for a client system of that
//! node's agency.
//!
//! A node's certificate also carries its DNS name ([`node_dns_name`]), the
//! TLS server name that clients and peers connect to.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

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

/// What every node's DNS name ends with. `.internal` is reserved for
/// private use (ICANN, 2024): it never resolves on the public Internet.
pub const NODE_DNS_SUFFIX: &str = ".node.cluebridge.internal";

/// The DNS name of node `node_id`: the TLS server name clients and peers
/// connect to, carried by the node's certificate as a DNS subject
/// alternative name. The rule: the node id, lower-cased, with `_` written
/// `-`, followed by [`NODE_DNS_SUFFIX`]; `public_security` is
/// `public-security.node.cluebridge.internal`.
///
/// The id must make one DNS label: at most 63 characters, no `.` or `:`,
/// starting and ending with a letter or digit. Loading the trust list and
/// `gen-certs` refuse a node id that does not.
pub fn node_dns_name(node_id: &str) -> Result<String> {
    crate::model::validate_id("node id", node_id)?;
    let cannot = |why: String| {
        Error::invalid(format!(
            "node id {node_id:?} cannot be made into the DNS name its TLS certificate carries \
             (<id>{NODE_DNS_SUFFIX}, the id lower-cased with '_' as '-'): {why}"
        ))
    };
    if let Some(c) = node_id.chars().find(|c| matches!(c, '.' | ':')) {
        return Err(cannot(format!(
            "it contains {c:?}; a node id may use only letters, digits, '_' and '-'"
        )));
    }
    if node_id.len() > 63 {
        return Err(cannot(format!(
            "it is {} characters long; a DNS label has at most 63",
            node_id.len()
        )));
    }
    let label = node_id.to_ascii_lowercase().replace('_', "-");
    if label.starts_with('-') || label.ends_with('-') {
        return Err(cannot(
            "it must start and end with a letter or digit, not '_' or '-'".into(),
        ));
    }
    Ok(format!("{label}{NODE_DNS_SUFFIX}"))
}

/// Checks that every node id of a federation has a DNS name
/// ([`node_dns_name`]) and that no two ids share one (ids that differ only
/// in case, or in '_' against '-').
pub fn check_node_dns_names<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for id in ids {
        let name = node_dns_name(id)?;
        if let Some(other) = seen.insert(name.clone(), id)
            && other != id
        {
            return Err(Error::invalid(format!(
                "node ids {other:?} and {id:?} have the same DNS name {name} (the id \
                 lower-cased with '_' as '-'); rename one of them"
            )));
        }
    }
    Ok(())
}

/// The DNS names (subject alternative names) a DER certificate carries.
pub fn dns_names_of(der: &[u8]) -> Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::invalid(format!("certificate does not parse: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| Error::invalid(format!("certificate SAN extension is invalid: {e}")))?;
    Ok(sans
        .map(|sans| {
            sans.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
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

/// Server side: a TLS acceptor that presents the node's certificate and
/// asks every caller for a client certificate.
///
/// The TLS layer checks only that the caller holds the private key of the
/// certificate it presents; whether that certificate was issued by the
/// federation CA and is valid now is checked by [`verify_client`], which
/// every service runs (through `api::caller`) before anything else. So a
/// caller with no certificate, a foreign or an expired one gets a gRPC
/// `UNAUTHENTICATED` that says what is wrong, instead of a bare handshake
/// failure.
pub fn server_acceptor(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::invalid(format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("node TLS certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| bad("node TLS private key", &e))?;
    let ca = FederationCa::from_pem(ca_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = AnyClientCert {
        hints: vec![rustls::DistinguishedName::from(ca.subject.clone())],
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS versions", &e))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(|e| bad("node TLS certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Asks for a client certificate, does not require one, and leaves the
/// chain check to [`verify_client`]; the handshake signature is verified,
/// so the caller holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    hints: Vec<rustls::DistinguishedName>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The federation CA as the chain check needs it, with the certificates it
/// has already checked.
#[derive(Clone, Debug)]
pub struct FederationCa {
    /// The CA's subject name (DER), which issued certificates name as issuer.
    subject: Vec<u8>,
    /// The CA's certificate (DER).
    der: Vec<u8>,
    /// Certificates whose CA signature was verified (DER → identity and
    /// validity window in Unix seconds), so a connection's calls after the
    /// first cost a lookup, not an ECDSA verification.
    verified: Arc<std::sync::Mutex<HashMap<Vec<u8>, Verified>>>,
}

#[derive(Clone, Debug)]
struct Verified {
    identity: PeerIdentity,
    not_before: i64,
    not_after: i64,
}

/// Checked certificates remembered at most; the map is emptied when full.
const VERIFIED_CACHE: usize = 4096;

impl FederationCa {
    pub fn from_pem(ca_pem: &str) -> Result<FederationCa> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .map_err(|e| Error::invalid(format!("federation CA is not PEM: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
            .map_err(|e| Error::invalid(format!("federation CA does not parse: {e}")))?;
        Ok(FederationCa {
            subject: cert.subject().as_raw().to_vec(),
            der: pem.contents.clone(),
            verified: Arc::default(),
        })
    }
}

/// Checks a caller's certificate: issued (signed) by the federation CA and
/// valid at `now_ms`. Returns the identity it names.
pub fn verify_client(ca: &FederationCa, der: &[u8], now_ms: u64) -> Result<PeerIdentity> {
    let lock = || ca.verified.lock().unwrap_or_else(|e| e.into_inner());
    let known = lock().get(der).cloned();
    let verified = match known {
        Some(v) => v,
        None => {
            let v = verify_chain(ca, der)?;
            let mut cache = lock();
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(der.to_vec(), v.clone());
            v
        }
    };
    let secs = (now_ms / 1000) as i64;
    if secs < verified.not_before {
        return Err(Error::Unauthenticated(format!(
            "the certificate is not valid before {}",
            crate::format_time(verified.not_before as u64 * 1000)
        )));
    }
    if secs > verified.not_after {
        return Err(Error::Unauthenticated(format!(
            "the certificate expired at {}; ask for a new one",
            crate::format_time(verified.not_after as u64 * 1000)
        )));
    }
    Ok(verified.identity)
}

/// The CA signature and identity of a certificate, without the clock.
fn verify_chain(ca: &FederationCa, der: &[u8]) -> Result<Verified> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Unauthenticated(format!("client certificate does not parse: {e}")))?;
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca.der)
        .map_err(|e| Error::Unauthenticated(format!("federation CA does not parse: {e}")))?;
    let foreign = || {
        Error::Unauthenticated(format!(
            "the certificate presented ({}) was not issued by this federation's CA ({}); \
             use a certificate from `cluebridge gen-certs` for this federation",
            cert.issuer(),
            ca_cert.subject()
        ))
    };
    if cert.issuer().as_raw() != ca.subject.as_slice() {
        return Err(foreign());
    }
    cert.verify_signature(Some(ca_cert.public_key()))
        .map_err(|_| foreign())?;
    let validity = cert.validity();
    Ok(Verified {
        identity: identity_of(der)?,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
    })
}

/// Client side: trust only the federation CA, present `cert`, and expect
/// the server certificate to name `server_name` (for a node, its
/// [`node_dns_name`]).
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

    /// A valid DNS host name, as strict TLS stacks check a server name:
    /// dot-separated labels of 1-63 characters from [a-z0-9-], none
    /// starting or ending with '-', 253 characters at most.
    fn is_dns_host_name(name: &str) -> bool {
        name.len() <= 253
            && name.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }

    #[test]
    fn node_dns_names_follow_the_rule() {
        for (id, name) in [
            ("discipline", "discipline.node.cluebridge.internal"),
            ("personnel", "personnel.node.cluebridge.internal"),
            (
                "public_security",
                "public-security.node.cluebridge.internal",
            ),
            ("judicial", "judicial.node.cluebridge.internal"),
            ("Agency_7-B", "agency-7-b.node.cluebridge.internal"),
            ("x", "x.node.cluebridge.internal"),
        ] {
            assert_eq!(node_dns_name(id).expect(id), name);
            assert!(is_dns_host_name(name), "{name}");
            // rustls takes it as a DNS server name.
            let parsed = rustls::pki_types::ServerName::try_from(name).expect(name);
            assert!(matches!(parsed, rustls::pki_types::ServerName::DnsName(_)));
        }
        for kind in crate::model::AgencyKind::ALL {
            let name = node_dns_name(kind.as_str()).expect("agency kind");
            assert!(is_dns_host_name(&name), "{name}");
        }
        let longest = "a".repeat(63);
        assert!(is_dns_host_name(&node_dns_name(&longest).expect("63")));
    }

    #[test]
    fn node_ids_without_a_dns_name_are_refused() {
        for (id, says) in [
            ("a.b", "contains '.'"),
            ("a:b", "contains ':'"),
            ("_a", "start and end with a letter or digit"),
            ("a-", "start and end with a letter or digit"),
            ("", "empty"),
            ("a b", "only letters"),
        ] {
            let e = node_dns_name(id).expect_err(id).to_string();
            assert!(e.contains(says), "{id:?}: {e}");
        }
        let e = node_dns_name(&"a".repeat(64)).expect_err("64").to_string();
        assert!(e.contains("at most 63"), "{e}");
        assert!(check_node_dns_names(["discipline", "public_security", "judicial"]).is_ok());
        let e = check_node_dns_names(["public_security", "Public-Security"])
            .expect_err("same name")
            .to_string();
        assert!(
            e.contains("public-security.node.cluebridge.internal"),
            "{e}"
        );
    }
}
