//! A raw caller for the transport tests: TLS with or without a client
//! certificate, and HTTP/2 streams whose bodies are declared but never sent
//! in full — what a hostile stranger does and a gRPC client cannot. Also
//! the resident size of a process, for the memory tests.

use crate::harness::TestFederation;
use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::Status;

/// Who a raw caller claims to be.
#[derive(Clone, Debug)]
pub enum Who {
    /// No client certificate at all.
    Nobody,
    /// A certificate and key, PEM.
    Pem(String, String),
}

impl Who {
    /// Node `id`'s own certificate.
    pub fn node(fed: &TestFederation, id: &str) -> Who {
        let read = |p: String| std::fs::read_to_string(fed.dev.dir.join(p)).expect("read");
        Who::Pem(
            read(format!("certs/{id}.pem")),
            read(format!("certs/{id}-key.pem")),
        )
    }

    /// Principal `name` of node `id`'s agency.
    pub fn principal(fed: &TestFederation, id: &str, name: &str) -> Who {
        let files = fed.dev.client_as(id, name).expect("client files");
        let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("read");
        Who::Pem(read(&files.cert), read(&files.key))
    }
}

/// A TLS client configuration trusting the federation CA, offering h2.
pub fn tls_config(fed: &TestFederation, who: &Who) -> Arc<rustls::ClientConfig> {
    let ca = std::fs::read(fed.dev.dir.join("ca.pem")).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let mut config = match who {
        Who::Nobody => builder.with_no_client_auth(),
        Who::Pem(cert, key) => {
            let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key pem");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS connection to node `id`, handshake done.
pub async fn tls(
    fed: &TestFederation,
    id: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", fed.ports[id])).await?;
    let name = ServerName::try_from(id.to_string()).expect("server name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// An HTTP/2 connection to node `id`; a task drives it (and answers the
/// node's pings) until the last handle is dropped.
pub async fn h2(fed: &TestFederation, id: &str, who: &Who) -> h2::client::SendRequest<Bytes> {
    let tls = tls(fed, id, tls_config(fed, who))
        .await
        .expect("TLS handshake");
    let (send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Opens a gRPC call to `path` whose body announces a message of
/// `declared` bytes and carries `sent` bytes of it, the stream left open.
pub async fn open_call(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    declared: u32,
    sent: usize,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), h2::Error> {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("https://node{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let mut ready = send.clone().ready().await?;
    let (response, mut body) = ready.send_request(request, false)?;
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&declared.to_be_bytes());
    // The node may have answered and closed the stream already (a refusal
    // needs only the headers): then the body cannot be sent, which is fine.
    let _ = body.send_data(Bytes::from(prefix), false);
    if sent > 0 {
        let _ = body.send_data(Bytes::from(vec![0u8; sent]), false);
    }
    Ok((response, body))
}

/// The gRPC status of an answer, when it is a trailers-only refusal.
pub fn status_of<B>(response: &http::Response<B>) -> Option<Status> {
    Status::from_header_map(response.headers())
}

/// The resident size of process `pid`, in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The sockets process `pid` has open: its connections and listeners
/// (files it opens as it works, such as a new journal file, do not count).
pub fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}
