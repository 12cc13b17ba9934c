//! `readyws publish URL --user U DATA`: one call of a readyws server's publish API.
//!
//! The request is plain HTTP/1.1 (`POST /api/publish`, `Authorization: Bearer KEY`); the server's
//! JSON answer is printed on stdout, and a refusal exits non-zero with the server's reason.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connect::line_to_data;

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
}

/// Where a request goes, from a `http://host:port/path` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    path: String,
}

fn target(url: &str) -> Result<Target, String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(
                "https is not supported by `readyws publish`; call the API with an HTTPS client, or through a local http endpoint".to_owned(),
            );
        }
        _ => return Err(format!("`{url}` is not an http:// URL")),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    let path = if path.is_empty() || path == "/" {
        "/api/publish".to_owned()
    } else {
        path.to_owned()
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
            host,
            port.parse()
                .map_err(|_| format!("`{port}` is not a port number"))?,
        ),
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        path,
    })
}

/// Publishes; `Ok(true)` when the server accepted the message.
pub(crate) async fn run(args: PublishArgs) -> Result<bool, String> {
    let (accepted, body) = post(&args.url, &args.api_key, &args.user, &args.data).await?;
    if accepted {
        println!("{body}");
    } else {
        eprintln!("readyws: the server refused the publish: {body}");
    }
    Ok(accepted)
}

/// POSTs `data` for `user` to the publish API at `url`; returns whether the server accepted it
/// (a 2xx status) and the body of its answer.
pub(crate) async fn post(
    url: &str,
    api_key: &str,
    user: &str,
    data: &str,
) -> Result<(bool, String), String> {
    let body = serde_json::json!({
        "user": user,
        "data": serde_json::from_str::<serde_json::Value>(line_to_data(data).as_json())
            .map_err(|e| e.to_string())?,
    })
    .to_string();
    let (status, body) = exchange(url, api_key, &body).await?;
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
    let target = target(url)?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: Bearer {api_key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.path,
        target.host,
        target.port,
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", target.host, target.port))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "the server did not answer within 30 s".to_owned())??;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("the server's answer is not HTTP")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("the server's answer has no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body.trim().to_owned()))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_publish_endpoint() {
        assert_eq!(
            target("http://127.0.0.1:8080").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/api/publish".into()
            }
        );
        assert_eq!(target("http://example.com/").unwrap().port, 80);
        assert_eq!(
            target("http://h:1/custom/publish").unwrap().path,
            "/custom/publish"
        );
        assert!(target("https://example.com").unwrap_err().contains("https"));
        assert!(target("ftp://example.com").is_err());
        assert!(target("http://h:notaport").is_err());
    }
}
