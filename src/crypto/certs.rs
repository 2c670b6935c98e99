//! Certificate generation for a federation: one CA, a TLS certificate per
//! node and per client system. Pure: returns PEM text, writes nothing.

use super::tls::{client_uri, node_dns_name, node_uri};
use crate::error::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

fn rcgen_err(e: rcgen::Error) -> Error {
    Error::invalid(format!("certificate generation failed: {e}"))
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

/// A federation certificate authority able to issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert: IssuedCert,
    validity_days: i64,
    /// A fixed validity window for the certificates issued, instead of
    /// "from an hour ago for `validity_days`".
    window: Option<(OffsetDateTime, OffsetDateTime)>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn base_params(common_name: &str, validity_days: i64) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "cluebridge federation");
    let now = OffsetDateTime::now_utc();
    // A little slack before "now" tolerates clock skew between agencies.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(validity_days);
    Ok(params)
}

impl Ca {
    /// A new self-signed CA valid for `validity_days`.
    pub fn generate(federation_name: &str, validity_days: i64) -> Result<Ca> {
        let mut params = base_params(&format!("{federation_name} federation CA"), validity_days)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let cert = params.self_signed(&key).map_err(rcgen_err)?;
        let issued = IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert: issued,
            validity_days,
            window: None,
        })
    }

    /// An existing CA from its certificate and private key (PEM), issuing
    /// certificates valid for `validity_days`.
    pub fn load(cert_pem: &str, key_pem: &str, validity_days: i64) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| Error::invalid(format!("CA private key does not parse: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| Error::invalid(format!("CA certificate does not parse: {e}")))?;
        Ok(Ca {
            issuer,
            cert: IssuedCert {
                cert_pem: cert_pem.to_string(),
                key_pem: key_pem.to_string(),
            },
            validity_days,
            window: None,
        })
    }

    /// Issues the following certificates valid exactly from `not_before`
    /// to `not_after` (for renewal ahead of time, and for tests of expiry).
    pub fn valid_between(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Ca {
        self.window = Some((not_before, not_after));
        self
    }

    fn issue(&self, params: &mut CertificateParams) -> Result<IssuedCert> {
        if let Some((not_before, not_after)) = self.window {
            params.not_before = not_before;
            params.not_after = not_after;
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A node's TLS certificate: its identity URI; its DNS name
    /// ([`node_dns_name`], the server name peers and clients connect to);
    /// the bare node id as a DNS name too, for clients that named a node by
    /// its id before the DNS name existed; and the host names or addresses
    /// it is reached at. Refuses a node id that makes no DNS name.
    pub fn issue_node(&self, node_id: &str, hosts: &[String]) -> Result<IssuedCert> {
        let dns_name = node_dns_name(node_id)?;
        let mut params = base_params(&format!("cluebridge node {node_id}"), self.validity_days)?;
        let mut sans = vec![SanType::URI(
            node_uri(node_id).try_into().map_err(rcgen_err)?,
        )];
        let mut dns_names = vec![dns_name, node_id.to_string()];
        for host in hosts {
            match host.parse::<IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => dns_names.push(host.clone()),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for name in dns_names {
            if seen.insert(name.to_ascii_lowercase()) {
                sans.push(SanType::DnsName(name.try_into().map_err(rcgen_err)?));
            }
        }
        params.subject_alt_names = sans;
        self.issue(&mut params)
    }

    /// A client system's certificate, naming the node of its agency.
    pub fn issue_client(&self, node_id: &str, name: &str) -> Result<IssuedCert> {
        let mut params = base_params(
            &format!("cluebridge client {name} of {node_id}"),
            self.validity_days,
        )?;
        params.subject_alt_names = vec![SanType::URI(
            client_uri(node_id, name).try_into().map_err(rcgen_err)?,
        )];
        self.issue(&mut params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn sans(cert_pem: &str) -> Vec<String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).expect("der");
        let sans = cert
            .subject_alternative_name()
            .expect("san")
            .expect("a SAN");
        sans.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::URI(u) => format!("uri:{u}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn node_certificates_carry_the_dns_name() {
        let ca = Ca::generate("t", 1).expect("ca");
        let cert = ca
            .issue_node("public_security", &["127.0.0.1".into()])
            .expect("cert");
        assert_eq!(
            sans(&cert.cert_pem),
            [
                "uri:cluebridge://node/public_security",
                "ip:[127, 0, 0, 1]",
                "dns:public-security.node.cluebridge.internal",
                "dns:public_security",
            ]
        );
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.cert_pem.as_bytes()).expect("pem");
        assert_eq!(
            super::super::tls::dns_names_of(&pem.contents).expect("names"),
            [
                "public-security.node.cluebridge.internal",
                "public_security"
            ]
        );
        // An endpoint host name is named once, however it is written.
        let cert = ca
            .issue_node(
                "discipline",
                &[
                    "discipline.example".into(),
                    "Discipline.node.cluebridge.internal".into(),
                ],
            )
            .expect("cert");
        assert_eq!(
            sans(&cert.cert_pem),
            [
                "uri:cluebridge://node/discipline",
                "dns:discipline.node.cluebridge.internal",
                "dns:discipline",
                "dns:discipline.example",
            ]
        );
        let e = ca.issue_node("a.b", &[]).expect_err("no DNS name");
        assert!(e.to_string().contains("contains '.'"), "{e}");
    }
}
