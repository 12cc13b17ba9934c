//! `readyws serve --static DIR`: the files of a web page served next to the WebSocket endpoint,
//! so that one command shows a browser client working against the server.
//!
//! A development convenience, not a web server: files are read whole on each request, with
//! `Cache-Control: no-cache` so that a rebuilt package is picked up on reload.

use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};

/// A router that answers every request with the file at the same path under `root`.
pub(crate) fn router(root: PathBuf) -> Router {
    Router::new().fallback(move |uri: Uri| {
        let root = root.clone();
        async move { serve(&root, uri.path()) }
    })
}

fn serve(root: &Path, path: &str) -> Response {
    let Some(mut file) = resolve(root, path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if file.is_dir() {
        if !path.ends_with('/') {
            // Relative imports in the page resolve against a URL that ends in `/`.
            return Redirect::permanent(&format!("{path}/")).into_response();
        }
        file.push("index.html");
    }
    match std::fs::read(&file) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&file)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The file `path` names under `root`, or `None` for a path that would leave `root` or names a
/// hidden file.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut file = root.to_path_buf();
    for part in Path::new(path.trim_start_matches('/')).components() {
        match part {
            Component::Normal(name) if !name.to_string_lossy().starts_with('.') => file.push(name),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(file)
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
        let root = Path::new("/srv/page");
        assert_eq!(
            resolve(root, "/pkg/readyws.js"),
            Some(root.join("pkg/readyws.js"))
        );
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/pkg/../../secret"), None);
        assert_eq!(resolve(root, "/.git/config"), None);
        assert_eq!(resolve(root, "/"), Some(root.to_path_buf()));
    }
}
