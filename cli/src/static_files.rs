//! `readyws serve --static DIR`: the files of a web page served next to the WebSocket endpoint,
//! so that one command shows a browser client working against the server.
//!
//! A development convenience, not a web server, but safe to point at a folder: a path never
//! leaves the folder, through `..` or through a symbolic link (the file's real path must lie
//! under the folder's), hidden files are not served, files are streamed in chunks from the
//! blocking-I/O pool rather than read whole on the runtime, and a folder's redirect names an
//! absolute path, never a scheme-relative `//host` one. `Cache-Control: no-cache` makes a
//! rebuilt package load on reload. (A link swapped in between the check and the open would still
//! be followed; that needs write access to the folder.)

use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use tokio::io::AsyncReadExt;

/// The size of each chunk a file is streamed in.
const CHUNK_BYTES: usize = 64 * 1024;

/// A router that answers every request with the file at the same path under `root`.
pub(crate) fn router(root: PathBuf) -> Router {
    // Resolved once: every file's real path is compared with this one.
    let root = root.canonicalize().unwrap_or(root);
    Router::new().fallback(move |uri: Uri| {
        let root = root.clone();
        async move { serve(&root, uri.path()).await }
    })
}

async fn serve(root: &Path, path: &str) -> Response {
    let Some(parts) = parts(path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut file = root.to_path_buf();
    file.extend(&parts);
    let Ok(mut real) = tokio::fs::canonicalize(&file).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !real.starts_with(root) {
        return StatusCode::NOT_FOUND.into_response();
    }
    if tokio::fs::metadata(&real).await.is_ok_and(|m| m.is_dir()) {
        if !path.ends_with('/') {
            // Relative imports in the page resolve against a URL that ends in `/`. The location
            // is rebuilt from the checked parts: `//evil.example` must not become a redirect to
            // another host.
            let location = format!("/{}/", parts.join("/"));
            let location = location.replace("//", "/");
            return Redirect::permanent(&location).into_response();
        }
        real.push("index.html");
    }
    let Ok(opened) = tokio::fs::File::open(&real).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let length = match opened.metadata().await {
        Ok(metadata) if metadata.is_file() => metadata.len(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let chunks = futures_util::stream::unfold(Some(opened), |file| async move {
        let mut file = file?;
        let mut chunk = vec![0u8; CHUNK_BYTES];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(read) => {
                chunk.truncate(read);
                Some((Ok::<_, std::io::Error>(chunk), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    });
    (
        [
            (header::CONTENT_TYPE, content_type(&real).to_owned()),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// The path's parts, or `None` for a path that would leave the folder or names a hidden file.
fn parts(path: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    for part in Path::new(path.trim_start_matches('/')).components() {
        match part {
            Component::Normal(name) if !name.to_string_lossy().starts_with('.') => {
                parts.push(name.to_str()?.to_owned());
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts)
}

/// The media type browsers need; `application/wasm` lets them compile while downloading.
fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|ext| ext.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_static_folder() {
        assert_eq!(
            parts("/pkg/readyws.js"),
            Some(vec!["pkg".to_owned(), "readyws.js".to_owned()])
        );
        assert_eq!(parts("/../etc/passwd"), None);
        assert_eq!(parts("/pkg/../../secret"), None);
        assert_eq!(parts("/.git/config"), None);
        assert_eq!(parts("//sub"), Some(vec!["sub".to_owned()]));
        assert_eq!(parts("/"), Some(Vec::new()));
    }
}
