//! `wss://`: the client speaks TLS with the enabled feature's backend, whose configuration names
//! its crypto provider itself (nothing process-wide is installed), so a certificate problem is an
//! error to report and retry, never a panic.

#![cfg(any(
    feature = "rustls-ring",
    feature = "rustls-aws-lc-rs",
    feature = "native-tls"
))]

mod support;

use std::sync::Arc;
use std::time::Duration;

use readyws::{Client, ConnectionState, DisconnectReason};
use readyws_server::ServerOptions;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use support::TestServer;
use tokio_rustls::TlsAcceptor;

/// A TLS-terminating proxy for `localhost`, in front of the plain server; returns its port and
/// its certificate.
async fn tls_front(upstream: std::net::SocketAddr) -> (u16, CertificateDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let certificate = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key.into())
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, certificate)
}

#[cfg(any(feature = "rustls-ring", feature = "rustls-aws-lc-rs"))]
#[tokio::test]
async fn wss_delivers_with_the_servers_root_certificate() {
    let recorder = support::Recorder::default();
    let server = TestServer::start(ServerOptions::default(), recorder.handler()).await;
    let (port, certificate) = tls_front(server.addr).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = Client::builder(format!("wss://localhost:{port}/ws"))
        .token("alice")
        .tls_config(Arc::new(tls))
        .connect()
        .expect("a valid client configuration");
    let delivery = client
        .send(support::json(serde_json::json!("over tls")))
        .await
        .expect("accepted");
    assert_eq!(delivery.await, readyws::Outcome::Acked);
    assert_eq!(recorder.values(), vec![serde_json::json!("over tls")]);
    server.stop();
}

/// No process-wide crypto provider is installed by the client: the test process has none.
#[tokio::test]
async fn the_client_installs_no_process_wide_crypto_provider() {
    let _client = Client::builder("wss://localhost:9/ws")
        .connect()
        .expect("a valid client configuration");
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
}

#[cfg(any(
    feature = "rustls-ring",
    feature = "rustls-aws-lc-rs",
    feature = "native-tls"
))]
#[tokio::test]
async fn an_untrusted_certificate_is_reported_not_a_panic() {
    let server = TestServer::start(ServerOptions::default(), readyws_server::AcceptAll).await;
    let (port, _) = tls_front(server.addr).await;
    // Default settings: the webpki roots, which do not include this self-signed certificate.
    let client = Client::builder(format!("wss://localhost:{port}/ws"))
        .token("alice")
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect()
        .expect("a valid client configuration");
    let mut state = client.watch_state();
    let reason = loop {
        state.changed().await.expect("client alive");
        if let ConnectionState::Reconnecting { reason, .. } = state.borrow_and_update().clone() {
            break reason;
        }
    };
    let DisconnectReason::ConnectFailed { detail } = reason else {
        panic!("expected a connect failure, got {reason:?}");
    };
    assert!(detail.to_lowercase().contains("certificate"), "{detail}");
    server.stop();
}
