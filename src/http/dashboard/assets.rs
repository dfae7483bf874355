//! The dashboard's stylesheet and script, embedded in the binary and served under a content
//! hash, so a page always loads the assets it was rendered with and they can be cached forever.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::startup::AppState;

const CSS: &str = include_str!("static/app.css");
const JS: &str = include_str!("static/app.js");
const FAVICON: &str = include_str!("static/favicon.svg");

/// The assets' URLs, each with its content hash.
pub struct Assets {
    pub css: String,
    pub js: String,
    pub favicon: String,
}

fn hashed(name: &str, ext: &str, body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("/assets/{name}.{hex}.{ext}")
}

pub static ASSETS: LazyLock<Assets> = LazyLock::new(|| Assets {
    css: hashed("app", "css", CSS),
    js: hashed("app", "js", JS),
    favicon: hashed("favicon", "svg", FAVICON),
});

pub fn router() -> Router<AppState> {
    Router::new().route("/assets/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let path = format!("/assets/{file}");
    let (body, content_type) = if path == ASSETS.css {
        (CSS, "text/css; charset=utf-8")
    } else if path == ASSETS.js {
        (JS, "text/javascript; charset=utf-8")
    } else if path == ASSETS.favicon {
        (FAVICON, "image/svg+xml")
    } else {
        return Err(ApiError::NotFound);
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}
