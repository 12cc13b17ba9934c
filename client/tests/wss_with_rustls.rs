//! `wss://`: the client speaks TLS with rustls; the crypto provider is installed for you, so a
//! certificate problem is an error to report and retry, never a panic.

mod support;

use std::sync::Arc;
use std::time::Duration;

use readyws::{Client, ConnectionState, DisconnectReason, Outcome};
use readyws_server::ServerOptions;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::json;
use support::{Recorder, TestServer};
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

#[tokio::test]
async fn wss_delivers_with_the_servers_root_certificate() {
    let recorder = Recorder::default();
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
        .connect();
    let delivery = client
        .send(support::json(json!("over tls")))
        .await
        .expect("accepted");
    assert_eq!(delivery.await, Outcome::Acked);
    assert_eq!(recorder.values(), vec![json!("over tls")]);
    server.stop();
}

#[tokio::test]
async fn an_untrusted_certificate_is_reported_not_a_panic() {
    let server = TestServer::start(ServerOptions::default(), readyws_server::AcceptAll).await;
    let (port, _) = tls_front(server.addr).await;
    // Default settings: the webpki roots, which do not include this self-signed certificate.
    let client = Client::builder(format!("wss://localhost:{port}/ws"))
        .token("alice")
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect();
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
