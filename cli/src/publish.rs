//! `readyws publish URL --user U DATA`: one call of a readyws server's publish API.
//!
//! The request goes through hyper (`POST /api/publish`, `Authorization: Bearer KEY`, marked
//! sensitive), over TLS with rustls and the Web PKI roots for `https://`; the server's JSON answer
//! is printed on stdout, and a refusal exits non-zero with the server's reason. A key that HTTP
//! cannot carry in a header (a line break, a control character) is refused before anything is
//! sent.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderValue};

use crate::connect::line_to_data;

/// The largest answer read from the server.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// How long one call may take, connection and answer included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// `readyws publish --help`.
#[derive(clap::Args, Debug)]
pub(crate) struct PublishArgs {
    /// The server's address, for example http://127.0.0.1:8080 (the path /api/publish is added
    /// when the URL has none).
    url: String,
    /// The user whose sessions get the message.
    #[arg(long)]
    user: String,
    /// The message: JSON text, or any other text to send as a JSON string.
    data: String,
    /// The server's publish API key.
    #[arg(long, env = "READYWS_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Certificates (PEM) trusted for an https:// URL besides the Web PKI roots, for a server
    /// behind a private certificate authority.
    #[arg(long, value_name = "PEM", env = "READYWS_CA")]
    ca: Option<std::path::PathBuf>,
}

/// Where a request goes: a parsed `http://` or `https://` URL, with `/api/publish` as the path
/// when the URL names none.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    secure: bool,
    /// The host as the resolver and TLS want it: an IPv6 address without its brackets.
    host: String,
    port: u16,
    /// The `Host` header: the URL's authority.
    authority: String,
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let secure = match parsed.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(format!(
                "`{url}`: the scheme must be http or https, not {other}"
            ));
        }
    };
    let host = match parsed.host() {
        Some(url::Host::Ipv6(address)) => address.to_string(),
        Some(host) => host.to_string(),
        None => return Err(format!("`{url}` names no host")),
    };
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("`{url}` names no port"))?;
    let authority = match parsed.port() {
        Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or_default()),
        None => parsed.host_str().unwrap_or_default().to_owned(),
    };
    let path = match parsed.path() {
        "" | "/" => "/api/publish".to_owned(),
        path => match parsed.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        },
    };
    Ok(Target {
        secure,
        host,
        port,
        authority,
        path,
    })
}

/// Publishes; `Ok(true)` when the server accepted the message.
pub(crate) async fn run(args: PublishArgs) -> Result<bool, String> {
    let extra_roots = match &args.ca {
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => Vec::new(),
    };
    let (accepted, body) = post(
        &args.url,
        &args.api_key,
        &args.user,
        &args.data,
        &extra_roots,
    )
    .await?;
    if accepted {
        println!("{body}");
    } else {
        eprintln!("readyws: the server refused the publish: {body}");
    }
    Ok(accepted)
}

/// POSTs `data` for `user` to the publish API at `url`, trusting the PEM certificates in
/// `extra_roots` besides the Web PKI roots; returns whether the server accepted it (a 2xx status)
/// and the body of its answer.
async fn post(
    url: &str,
    api_key: &str,
    user: &str,
    data: &str,
    extra_roots: &[u8],
) -> Result<(bool, String), String> {
    let body = serde_json::json!({
        "user": user,
        "data": serde_json::from_str::<serde_json::Value>(line_to_data(data).as_json())
            .map_err(|e| e.to_string())?,
    })
    .to_string();
    let (status, body) = exchange_trusting(url, api_key, &body, extra_roots).await?;
    if (200..300).contains(&status) {
        Ok((true, body))
    } else {
        Ok((false, format!("HTTP {status}: {body}")))
    }
}

/// POSTs `body` as it is to the publish API at `url` with `api_key`; returns the status and the
/// body of the answer.
pub(crate) async fn exchange(
    url: &str,
    api_key: &str,
    body: &str,
) -> Result<(u16, String), String> {
    exchange_trusting(url, api_key, body, &[]).await
}

async fn exchange_trusting(
    url: &str,
    api_key: &str,
    body: &str,
    extra_roots: &[u8],
) -> Result<(u16, String), String> {
    let target = target(url)?;
    let tls = if target.secure {
        Some(tls_config(extra_roots)?)
    } else {
        None
    };
    let mut authorization = HeaderValue::from_str(&format!("Bearer {api_key}"))
        .map_err(|_| "the API key has characters an HTTP header cannot carry".to_owned())?;
    authorization.set_sensitive(true);
    let request = hyper::Request::post(&target.path)
        .header(HOST, &target.authority)
        .header(AUTHORIZATION, authorization)
        .header(CONTENT_TYPE, "application/json")
        // One request per connection: the server may close it as soon as it has answered.
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    tokio::time::timeout(TIMEOUT, send(&target, tls, request))
        .await
        .map_err(|_| format!("the server did not answer within {} s", TIMEOUT.as_secs()))?
}

async fn send(
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
    if let Some(tls) = tls {
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("{} is not a TLS server name: {e}", target.host))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.authority))?;
        exchange_over(stream, request).await
    } else {
        exchange_over(tcp, request).await
    }
}

async fn exchange_over(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, String), String> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    let driving = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the request failed: {e}"));
    let answer = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|body| {
                    let text = String::from_utf8_lossy(&body.to_bytes()).trim().to_owned();
                    (status, text)
                })
                .map_err(|e| format!("reading the answer: {e}"))
        }
        Err(problem) => Err(problem),
    };
    driving.abort();
    answer
}

/// rustls with the Web PKI roots, the PEM certificates of `extra_roots`, and the ring provider,
/// given to this configuration alone.
fn tls_config(extra_roots: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !extra_roots.is_empty() {
        let mut added = 0;
        for certificate in CertificateDer::pem_slice_iter(extra_roots) {
            let certificate = certificate.map_err(|e| format!("--ca: {e}"))?;
            roots.add(certificate).map_err(|e| format!("--ca: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("--ca: no certificate in the file".to_owned());
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_publish_endpoint() {
        let plain = target("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            plain,
            Target {
                secure: false,
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                path: "/api/publish".into()
            }
        );
        assert_eq!(target("http://example.com/").unwrap().port, 80);
        let secure = target("https://example.com").unwrap();
        assert!(secure.secure);
        assert_eq!(
            (secure.port, secure.authority.as_str()),
            (443, "example.com")
        );
        assert_eq!(
            target("http://h:1/custom/publish").unwrap().path,
            "/custom/publish"
        );
        let v6 = target("http://[::1]:8080").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.authority.as_str()),
            ("::1", "[::1]:8080")
        );
        assert!(target("ftp://example.com").is_err());
        assert!(target("http://h:notaport").is_err());
    }

    #[tokio::test]
    async fn a_key_with_a_line_break_is_refused_before_sending() {
        let error = exchange("http://127.0.0.1:9", "key\r\nX-Injected: 1", "{}")
            .await
            .unwrap_err();
        assert!(error.contains("API key"), "{error}");
    }
}
