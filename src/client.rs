//! Connecting to a node over mTLS as a client system (or, for tests and
//! tools, as a node), with the typed gRPC clients.

use crate::crypto::tls;
use crate::devfed::ClientFiles;
use crate::pb::admin_client::AdminClient;
use crate::pb::audit_client::AuditClient;
use crate::pb::broker_client::BrokerClient;
use crate::pb::peer_client::PeerClient;
use anyhow::{Context, Result};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// PEM material and address for one connection.
#[derive(Clone, Debug)]
pub struct Connection {
    pub endpoint: String,
    /// The TLS server name the node's certificate must carry: for a node,
    /// its DNS name (`crypto::tls::node_dns_name`, e.g.
    /// `public-security.node.cluebridge.internal`), whatever the endpoint's
    /// host.
    pub server_name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Connection {
    pub fn from_files(files: &ClientFiles) -> Result<Connection> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        Ok(Connection {
            endpoint: files.endpoint.clone(),
            server_name: files.server_name.clone(),
            ca_pem: read(&files.ca)?,
            cert_pem: read(&files.cert)?,
            key_pem: read(&files.key)?,
        })
    }

    /// A channel that connects on first use.
    pub fn channel(&self) -> Result<Channel> {
        let tls = tls::client_config(
            &self.ca_pem,
            &self.cert_pem,
            &self.key_pem,
            &self.server_name,
        );
        Ok(Endpoint::from_shared(self.endpoint.clone())
            .with_context(|| format!("invalid endpoint {:?}", self.endpoint))?
            .tls_config(tls)
            .context("invalid TLS configuration")?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy())
    }

    /// The node judges the size of a request (and says so with
    /// `RESOURCE_EXHAUSTED`), so the client sets no limit of its own.
    pub fn broker(&self) -> Result<BrokerClient<Channel>> {
        Ok(BrokerClient::new(self.channel()?)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(usize::MAX))
    }

    pub fn audit(&self) -> Result<AuditClient<Channel>> {
        Ok(AuditClient::new(self.channel()?).max_decoding_message_size(64 * 1024 * 1024))
    }

    pub fn peer(&self) -> Result<PeerClient<Channel>> {
        Ok(PeerClient::new(self.channel()?)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024))
    }

    pub fn admin(&self) -> Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel()?))
    }
}
