//! What a denied client gets, as linkerd2-proxy answers: HTTP 403 (404 when
//! no HTTPRoute matched) with `l5d-proxy-error: <reason>`; gRPC (request
//! `content-type: application/grpc*`) HTTP 200 with `grpc-status: 7`
//! (PERMISSION_DENIED; 5, NOT_FOUND, for no route) and the reason in
//! `grpc-message` (a trailers-only response); TCP: the connection is closed
//! (by the caller).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::inbound::L5D_PROXY_ERROR;

/// gRPC's PERMISSION_DENIED.
pub const GRPC_PERMISSION_DENIED: &str = "7";
/// gRPC's NOT_FOUND.
pub const GRPC_NOT_FOUND: &str = "5";

/// Whether the request is gRPC (`content-type: application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc") && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The response to a denied request; `status` is 403 or 404 (no route).
pub fn response(grpc: bool, status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    let error = header_value(reason);
    if grpc {
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        let code = if status == StatusCode::NOT_FOUND { GRPC_NOT_FOUND } else { GRPC_PERMISSION_DENIED };
        headers.insert("grpc-status", HeaderValue::from_static(code));
        if let Ok(message) = HeaderValue::from_str(&grpc_message(reason)) {
            headers.insert("grpc-message", message);
        }
        headers.insert(L5D_PROXY_ERROR, error);
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(format!("{reason}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(L5D_PROXY_ERROR, error);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A header value for `reason`: characters a header may not carry become `?`.
fn header_value(reason: &str) -> HeaderValue {
    let clean: String = reason.chars().map(|c| if c == '\t' || (' '..='~').contains(&c) { c } else { '?' }).collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("unauthorized"))
}

/// gRPC's `grpc-message` encoding: percent-encoding of every byte outside
/// printable ASCII, and of `%` itself.
fn grpc_message(reason: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(reason.len());
    for b in reason.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn http_denials_are_403_with_the_reason() {
        let response = response(false, StatusCode::FORBIDDEN, "unauthorized request on route");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[L5D_PROXY_ERROR], "unauthorized request on route");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"unauthorized request on route\n");
        let response = super::response(false, StatusCode::NOT_FOUND, "no route found for request");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[L5D_PROXY_ERROR], "no route found for request");
    }

    #[tokio::test]
    async fn grpc_denials_are_permission_denied() {
        let response = response(true, StatusCode::FORBIDDEN, "identity not allowed: 100% é");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "7");
        assert_eq!(response.headers()["grpc-message"], "identity not allowed: 100%25 %C3%A9");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()[L5D_PROXY_ERROR], "identity not allowed: 100% ?");
        assert!(response.into_body().collect().await.unwrap().to_bytes().is_empty());
        assert_eq!(super::response(true, StatusCode::NOT_FOUND, "no route found for request").headers()["grpc-status"], "5");
    }

    #[test]
    fn grpc_is_recognised_by_content_type() {
        let with = |v: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc(&headers)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }
}
