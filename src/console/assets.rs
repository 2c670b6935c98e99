//! The console's CSS and JavaScript, compiled into the binary: no CDN, no
//! external fonts, nothing fetched from anywhere but the console itself.
//! The script only refreshes the live parts of a page; every page works
//! without it.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

pub const CSS: &str = include_str!("assets/console.css");
pub const JS: &str = include_str!("assets/console.js");

/// Paths the pages link to.
pub const CSS_PATH: &str = "/assets/console.css";
pub const JS_PATH: &str = "/assets/console.js";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change only with the binary; an hour spares reloads.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    response
}

pub async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

pub async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}
