//! Turns tonic's refusal of an oversized request into the API's own:
//! `RESOURCE_EXHAUSTED` naming the size and the limit.
//!
//! tonic refuses a request whose length prefix exceeds the service's
//! decoding limit (derived from `[limits]`, see `config::MessageLimits`)
//! before reading its body, but with `OUT_OF_RANGE`, while the API documents
//! `RESOURCE_EXHAUSTED` for every limit. The refusal is a trailers-only
//! answer, so its status is in the response headers, where this layer
//! rewrites it.

use futures::TryFutureExt;
use futures::future::MapOk;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};
use tower::{Layer, Service};

/// What tonic's decoder says when a request is over the limit.
const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// Rewrites size refusals of the services below it.
#[derive(Clone, Copy, Debug, Default)]
pub struct OversizeLayer;

impl<S> Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Oversize<S> {
    inner: S,
}

type Rewrite = fn(http::Response<Body>) -> http::Response<Body>;

impl<S> Service<http::Request<Body>> for Oversize<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = MapOk<S::Future, Rewrite>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.inner.call(request).map_ok(rewrite as Rewrite)
    }
}

fn rewrite(mut response: http::Response<Body>) -> http::Response<Body> {
    let headers = response.headers_mut();
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    if status.code() != Code::OutOfRange || !status.message().contains(TONIC_TOO_LARGE) {
        return response;
    }
    let refusal = Status::resource_exhausted(explain(status.message()));
    if refusal.add_header(headers).is_err() {
        tracing::warn!("could not rewrite a size refusal");
    }
    response
}

/// "Error, decoded message length too large: found 68157450 bytes, the
/// limit is: 1062912 bytes" in the API's words.
fn explain(tonic_message: &str) -> String {
    let numbers: Vec<&str> = tonic_message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    match numbers.as_slice() {
        [found, limit] => format!(
            "the request is {found} bytes; this node's size limit for this call is {limit} bytes \
             (set by limits.max_payload_bytes and, for Peer, limits.max_peer_batch)"
        ),
        _ => format!("the request exceeds this node's size limit for this call ({tonic_message})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_request_becomes_resource_exhausted_naming_the_limit() {
        let too_large = Status::out_of_range(
            "Error, decoded message length too large: found 68157450 bytes, the limit is: 1062912 bytes",
        );
        let answer = rewrite(too_large.into_http());
        let status = Status::from_header_map(answer.headers()).expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("the request is 68157450 bytes; this node's size limit for this call is 1062912 bytes"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn other_answers_pass_unchanged() {
        let other = Status::out_of_range("offset beyond the end");
        let answer = rewrite(other.into_http());
        let status = Status::from_header_map(answer.headers()).expect("a status");
        assert_eq!(
            (status.code(), status.message()),
            (Code::OutOfRange, "offset beyond the end")
        );
        let ok = http::Response::new(Body::empty());
        assert!(rewrite(ok).headers().is_empty());
    }
}
