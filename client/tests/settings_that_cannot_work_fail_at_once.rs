//! A client whose settings could never connect is refused when it is built, with a typed error
//! that says what is wrong, instead of being retried on every reconnect.

use readyws::{BuildError, Client};

#[tokio::test]
async fn a_url_that_does_not_parse_is_refused() {
    let error = Client::builder("not a url").connect().expect_err("refused");
    assert!(matches!(error, BuildError::InvalidUrl { .. }), "{error:?}");
    assert!(error.to_string().contains("not a url"), "{error}");
}

#[tokio::test]
async fn only_ws_and_wss_are_accepted() {
    for url in [
        "http://127.0.0.1:8080/ws",
        "https://example.com/ws",
        "ftp://x/ws",
    ] {
        let error = Client::builder(url).connect().expect_err("refused");
        let BuildError::UnsupportedScheme { scheme, .. } = &error else {
            panic!("{url}: {error:?}");
        };
        assert!(url.starts_with(scheme.as_str()), "{url}: {scheme}");
    }
}

#[tokio::test]
async fn a_url_without_a_host_is_refused() {
    let error = Client::builder("ws://").connect().expect_err("refused");
    assert!(matches!(error, BuildError::InvalidUrl { .. }), "{error:?}");
}

#[tokio::test]
async fn a_header_with_a_line_break_is_refused() {
    let error = Client::builder("ws://127.0.0.1:9/ws")
        .header("x-tenant", "a\r\nx-injected: 1")
        .connect()
        .expect_err("refused");
    let BuildError::InvalidHeader { name, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(name, "x-tenant");
}

#[tokio::test]
async fn ipv6_hosts_are_accepted() {
    let client = Client::builder("ws://[::1]:9/ws").connect();
    assert!(client.is_ok(), "{client:?}");
}

/// Without a TLS feature a `wss://` URL cannot work, and the error names the features.
#[cfg(not(any(
    feature = "rustls-ring",
    feature = "rustls-aws-lc-rs",
    feature = "native-tls"
)))]
#[tokio::test]
async fn wss_without_a_tls_feature_is_refused() {
    let error = Client::builder("wss://example.com/ws")
        .connect()
        .expect_err("refused");
    assert!(matches!(error, BuildError::NoTls { .. }), "{error:?}");
    assert!(error.to_string().contains("rustls-ring"), "{error}");
}

/// With a TLS feature, `wss://` builds with that feature's default configuration.
#[cfg(any(
    feature = "rustls-ring",
    feature = "rustls-aws-lc-rs",
    feature = "native-tls"
))]
#[tokio::test]
async fn wss_builds_with_the_enabled_tls_feature() {
    let client = Client::builder("wss://example.com/ws").connect();
    assert!(client.is_ok(), "{client:?}");
}
