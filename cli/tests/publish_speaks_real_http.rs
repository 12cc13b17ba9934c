//! `readyws publish` is an HTTP client an operator can point anywhere: `https://` with the Web PKI
//! or a private CA (`--ca`), IPv6 hosts, and an API key that cannot smuggle a header.

mod support;

use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

fn publish(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_readyws"))
        .arg("publish")
        .args(args)
        .output()
        .expect("the binary runs")
}

/// A TLS-terminating proxy for `localhost` in front of `upstream`; returns its port and the PEM
/// of its self-signed certificate.
async fn tls_front(upstream: String) -> (u16, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let pem = certified.cert.pem();
    let certificate = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![certificate], key.into())
    .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
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
    (port, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_works_with_a_private_ca_and_refuses_without_it() {
    let (_server, address) = support::serve(&["--api-key", "k"]);
    let (port, pem) = tls_front(address).await;
    let ca = std::env::temp_dir().join(format!("readyws-publish-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, pem).expect("CA file written");
    let url = format!("https://localhost:{port}");
    let ca_path = ca.to_string_lossy().into_owned();
    let trusted = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            publish(&[
                &url,
                "--user",
                "ann",
                "--api-key",
                "k",
                "--ca",
                &ca_path,
                "1",
            ])
        }
    })
    .await
    .expect("joined");
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&trusted.stdout).expect("JSON");
    assert_eq!(answer["held"], true, "{answer}");

    let untrusted = tokio::task::spawn_blocking(move || {
        publish(&[&url, "--user", "ann", "--api-key", "k", "1"])
    })
    .await
    .expect("joined");
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(stderr.contains("certificate"), "{stderr}");
    let _ = std::fs::remove_file(ca);
}

#[test]
fn an_ipv6_host_is_reached() {
    let (_server, address) = support::serve_on("[::1]:0", &["--api-key", "k"]);
    assert!(address.starts_with("[::1]:"), "{address}");
    let output = publish(&[
        &format!("http://{address}"),
        "--user",
        "v6",
        "--api-key",
        "k",
        "1",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_key_with_a_line_break_is_refused_before_anything_is_sent() {
    let (_server, address) = support::serve(&["--api-key", "k"]);
    let output = publish(&[
        &format!("http://{address}"),
        "--user",
        "eve",
        "--api-key",
        "k\r\nX-Admin: yes",
        "1",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("API key"), "{stderr}");
}
