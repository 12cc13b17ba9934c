//! JWTs as identity providers issue them: `nbf`, `iss`, `aud` and leeway enforced as configured;
//! RS256 and ES256 with a PEM public key, with a JWKS document from a file, and from an
//! `https://` URL served on 127.0.0.1 that is fetched again for a rotated key; and an
//! authenticator that has to wait (a database lookup), with its deadline.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use readyws_server::{
    AcceptAll, AuthError, AuthReply, Authenticator, Deadlines, JwksFetch, Jwt, ServerOptions,
    UserId,
};
use serde_json::{Value, json};
use support::{Raw, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"test-secret-of-enough-length-for-hs256";
/// An RSA key made for these tests only, with its public half and a JWKS naming it `rsa-1`.
const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa-test-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa-test-public.pem");
const RSA_JWKS: &str = include_str!("keys/rsa-test.jwks.json");

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn sign(claims: &Value, algorithm: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn hs256(claims: Value) -> String {
    sign(
        &claims,
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET),
    )
}

/// A P-256 key pair, its private key for signing and its public key as PEM and as a JWK.
struct EcKey {
    signing: EncodingKey,
    public_pem: String,
    jwk: Value,
}

fn ec_key(kid: &str) -> EcKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let point = pair.public_key_raw();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    EcKey {
        signing: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("PKCS#8"),
        public_pem: pair.public_key_pem(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }),
    }
}

fn rsa_signing() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("the test key")
}

/// What the server answers a `hello` carrying `token`: `connection_ready`, or `goaway`.
async fn answer(server: &TestServer, token: &str) -> Value {
    let mut raw = Raw::connect(&server.url()).await;
    raw.recv().await;
    raw.send(json!({"type": "hello", "token": token})).await;
    loop {
        let frame = raw.recv().await;
        if frame["type"] == "connection_ready" || frame["type"] == "goaway" {
            return frame;
        }
    }
}

async fn start(auth: impl Authenticator) -> TestServer {
    TestServer::start_with(ServerOptions::default(), auth, AcceptAll).await
}

#[tokio::test]
async fn not_before_issuer_audience_and_leeway_are_enforced_as_configured() {
    let server = start(
        Jwt::hs256(SECRET)
            .issuer("https://idp.example")
            .audience(&["readyws", "other"]),
    )
    .await;
    let good =
        json!({"sub": "alice", "exp": now() + 60, "iss": "https://idp.example", "aud": "readyws"});
    assert_eq!(
        answer(&server, &hs256(good.clone())).await["type"],
        "connection_ready"
    );
    let mut early = good.clone();
    early["nbf"] = json!(now() + 300);
    let refused = answer(&server, &hs256(early)).await;
    assert_eq!(refused["code"], 4100, "a token not valid yet: {refused}");
    let mut issuer = good.clone();
    issuer["iss"] = json!("https://evil.example");
    assert_eq!(answer(&server, &hs256(issuer)).await["code"], 4100);
    let mut audience = good.clone();
    audience["aud"] = json!(["someone-else"]);
    assert_eq!(answer(&server, &hs256(audience)).await["code"], 4100);
    let mut missing_audience = good.clone();
    missing_audience
        .as_object_mut()
        .expect("claims")
        .remove("aud");
    assert_eq!(
        answer(&server, &hs256(missing_audience)).await["code"],
        4100
    );
    let mut missing_issuer = good.clone();
    missing_issuer
        .as_object_mut()
        .expect("claims")
        .remove("iss");
    assert_eq!(answer(&server, &hs256(missing_issuer)).await["code"], 4100);
    server.stop().await;

    // Without a configured audience a token's `aud` is ignored, as most providers set one.
    let server = start(Jwt::hs256(SECRET)).await;
    let with_aud = json!({"sub": "bob", "exp": now() + 60, "aud": "any-api"});
    assert_eq!(
        answer(&server, &hs256(with_aud)).await["type"],
        "connection_ready"
    );
    let expired = json!({"sub": "bob", "exp": now() - 5});
    assert_eq!(
        answer(&server, &hs256(expired.clone())).await["code"],
        4101,
        "no leeway by default"
    );
    server.stop().await;

    let server = start(Jwt::hs256(SECRET).leeway(Duration::from_secs(60))).await;
    assert_eq!(
        answer(&server, &hs256(expired)).await["type"],
        "connection_ready",
        "within the leeway"
    );
    server.stop().await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_checked_with_a_pem_public_key() {
    let server = start(Jwt::rs256_pem(RSA_PUBLIC).expect("an RSA public key")).await;
    let claims = json!({"sub": "carol", "exp": now() + 60});
    let token = sign(&claims, Algorithm::RS256, None, &rsa_signing());
    assert_eq!(answer(&server, &token).await["type"], "connection_ready");
    // Another algorithm with the same claims is refused, HS256 included (no key confusion).
    assert_eq!(answer(&server, &hs256(claims.clone())).await["code"], 4100);
    server.stop().await;

    let ec = ec_key("ec-1");
    let server = start(Jwt::es256_pem(ec.public_pem.as_bytes()).expect("an EC public key")).await;
    let token = sign(&claims, Algorithm::ES256, None, &ec.signing);
    assert_eq!(answer(&server, &token).await["type"], "connection_ready");
    let stranger = ec_key("ec-2");
    let forged = sign(&claims, Algorithm::ES256, None, &stranger.signing);
    assert_eq!(answer(&server, &forged).await["code"], 4100);
    server.stop().await;

    assert!(Jwt::rs256_pem(b"not a key").is_err());
    assert!(
        Jwt::es256_pem(RSA_PUBLIC).is_err(),
        "an RSA key is no EC key"
    );
}

#[tokio::test]
async fn a_jwks_file_checks_each_token_with_the_key_its_kid_names() {
    let ec = ec_key("ec-1");
    let mut document: Value = serde_json::from_str(RSA_JWKS).expect("JSON");
    document["keys"]
        .as_array_mut()
        .expect("keys")
        .push(ec.jwk.clone());
    let path = std::env::temp_dir().join(format!("readyws-jwks-{}.json", std::process::id()));
    std::fs::write(&path, document.to_string()).expect("written");
    let server = start(Jwt::jwks_file(&path).expect("a JWKS document")).await;
    let claims = json!({"sub": "dave", "exp": now() + 60});
    let rsa = sign(&claims, Algorithm::RS256, Some("rsa-1"), &rsa_signing());
    let es = sign(&claims, Algorithm::ES256, Some("ec-1"), &ec.signing);
    assert_eq!(answer(&server, &rsa).await["type"], "connection_ready");
    assert_eq!(answer(&server, &es).await["type"], "connection_ready");
    let unknown = sign(&claims, Algorithm::ES256, Some("ec-9"), &ec.signing);
    assert_eq!(answer(&server, &unknown).await["code"], 4100);
    // The RSA key's id with the EC key's signature: the kid picks the key, the key refuses.
    let mixed = sign(&claims, Algorithm::ES256, Some("rsa-1"), &ec.signing);
    assert_eq!(answer(&server, &mixed).await["code"], 4100);
    server.stop().await;
    let _ = std::fs::remove_file(&path);
    assert!(Jwt::jwks(r#"{"keys": []}"#).is_err(), "no usable key");
    assert!(Jwt::jwks("[]").is_err(), "not a JWKS document");
}

/// A JWKS document served over HTTPS on 127.0.0.1 with a certificate made for the test; the
/// document can be replaced (a key rotation), and fetches are counted.
struct JwksServer {
    url: String,
    ca_pem: String,
    document: Arc<std::sync::Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks_server(document: String) -> JwksServer {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("a certificate");
    let ca_pem = certified.cert.pem();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("the certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    let document = Arc::new(std::sync::Mutex::new(document));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (document.clone(), fetches.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, served, counted) = (acceptor.clone(), served.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().expect("the document").clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    JwksServer {
        url: format!("https://{address}/.well-known/jwks.json"),
        ca_pem,
        document,
        fetches,
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_over_https_and_fetched_again_for_a_rotated_key() {
    let first = ec_key("ec-1");
    let served = jwks_server(json!({"keys": [first.jwk]}).to_string()).await;
    let fetch = JwksFetch::default()
        .extra_roots_pem(served.ca_pem.clone().into_bytes())
        .min_refresh(Duration::ZERO);
    let auth = Jwt::jwks_url(&served.url, fetch)
        .await
        .expect("the document is fetched");
    assert_eq!(served.fetches.load(Ordering::SeqCst), 1);
    let server = start(auth).await;
    let claims = json!({"sub": "erin", "exp": now() + 60});
    let token = sign(&claims, Algorithm::ES256, Some("ec-1"), &first.signing);
    assert_eq!(answer(&server, &token).await["type"], "connection_ready");
    // The provider rotates to a new key: a token naming it makes the server fetch again.
    let second = ec_key("ec-2");
    *served.document.lock().expect("the document") = json!({"keys": [second.jwk]}).to_string();
    let rotated = sign(&claims, Algorithm::ES256, Some("ec-2"), &second.signing);
    assert_eq!(answer(&server, &rotated).await["type"], "connection_ready");
    assert_eq!(served.fetches.load(Ordering::SeqCst), 2);
    server.stop().await;

    // Fetched again in the background, whether or not a token asks.
    let before = served.fetches.load(Ordering::SeqCst);
    let fetch = JwksFetch::default()
        .extra_roots_pem(served.ca_pem.clone().into_bytes())
        .refresh(Duration::from_millis(100));
    let refreshing = Jwt::jwks_url(&served.url, fetch).await.expect("fetched");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while served.fetches.load(Ordering::SeqCst) < before + 3 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served.fetches.load(Ordering::SeqCst) >= before + 3);
    drop(refreshing);

    // Without the test's certificate authority the certificate is not trusted.
    let untrusted = Jwt::jwks_url(&served.url, JwksFetch::default()).await;
    assert!(untrusted.is_err(), "a self-signed certificate was trusted");
    assert!(
        Jwt::jwks_url("http://127.0.0.1:1/keys", JwksFetch::default())
            .await
            .is_err(),
        "plain http is refused"
    );
}

/// Looks the token up in a "database" that takes a while, or never answers.
struct SlowLookup {
    delay: Option<Duration>,
}

impl Authenticator for SlowLookup {
    fn authenticate<'a>(&'a self, token: Option<&'a str>) -> AuthReply<'a> {
        AuthReply::later(async move {
            match self.delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending::<()>().await,
            }
            match token {
                Some(token) => Ok(UserId::new(format!("user-of-{token}"))),
                None => Err(AuthError::Missing),
            }
        })
    }
}

/// [SE-6] Credentials the server cannot check in time get 4003 with `retry_after_ms`.
#[tokio::test]
async fn an_authenticator_may_wait_and_its_deadline_turns_silence_into_a_retry() {
    let server = start(SlowLookup {
        delay: Some(Duration::from_millis(100)),
    })
    .await;
    let ready = answer(&server, "t-1").await;
    assert_eq!(ready["type"], "connection_ready", "{ready}");
    server.stop().await;

    let options = ServerOptions::default()
        .deadlines(Deadlines::default().authenticate(Duration::from_millis(300)));
    let server = TestServer::start_with(options, SlowLookup { delay: None }, AcceptAll).await;
    let refused = answer(&server, "t-2").await;
    assert_eq!(refused["code"], 4003, "{refused}");
    assert!(refused["retry_after_ms"].as_u64().is_some(), "{refused}");
    server.stop().await;
}
