//! The one mapping from API results to HTTP responses.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;
use tessera_api::ApiError;

/// A Kubernetes `Status` failure as an HTTP response.
#[derive(Debug)]
pub struct Failure(pub ApiError);

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.0.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.0.to_status())
    }
}

/// A JSON body with a status code.
pub fn json_response(code: StatusCode, body: &Value) -> Response {
    json_with_type(code, body, "application/json")
}

/// A JSON body with an explicit content type.
pub fn json_with_type(code: StatusCode, body: &Value, content_type: &'static str) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The result type of handlers.
pub type HandlerResult = Result<Response, Failure>;

/// `body` (an object, a list or a Status) in `encoding`. An object the
/// protobuf tables cannot carry whole is answered in JSON rather than cut
/// down (clients that ask for protobuf also accept JSON).
pub fn encoded(code: StatusCode, body: &Value, encoding: crate::negotiate::Encoding) -> Response {
    if encoding == crate::negotiate::Encoding::Protobuf {
        match tessera_api::protobuf::encode(body) {
            Ok(bytes) => {
                let mut response = Response::new(Body::from(bytes));
                *response.status_mut() = code;
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::negotiate::PROTOBUF));
                return response;
            }
            Err(e) => tracing::debug!(error = %e, "answering JSON instead of protobuf"),
        }
    }
    json_response(code, body)
}

/// A failure as a protobuf `Status` when the client asked for protobuf.
pub fn failure_in(err: ApiError, encoding: crate::negotiate::Encoding) -> Response {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    encoded(code, &err.to_status(), encoding)
}

/// Bytes already encoded (by the watch cache) as a response.
pub fn bytes_response(code: StatusCode, bytes: axum::body::Bytes, content_type: &'static str) -> Response {
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A get's object in `encoding`: a cached object's bytes as they are,
/// encoded once for every reader.
pub fn encoded_object(body: &tessera_api::registry::cached::ObjectBody, encoding: crate::negotiate::Encoding) -> Result<Response, Failure> {
    use tessera_api::registry::cached::ObjectBody;
    match body {
        ObjectBody::Cached(object) => {
            if encoding == crate::negotiate::Encoding::Protobuf
                && let Some(bytes) = object.protobuf()
            {
                return Ok(bytes_response(StatusCode::OK, bytes, crate::negotiate::PROTOBUF));
            }
            if encoding == crate::negotiate::Encoding::Protobuf {
                // Not carried whole by the protobuf tables: JSON, as `encoded` does.
                tracing::debug!("answering JSON instead of protobuf");
            }
            Ok(bytes_response(StatusCode::OK, object.json(), "application/json"))
        }
        ObjectBody::Value(value) => Ok(encoded(StatusCode::OK, value, encoding)),
    }
}

/// A list from the watch cache in `encoding`, composed from its items'
/// cached encodings (JSON when an item has no protobuf form, as `encoded`).
pub fn cached_list(list: &tessera_api::registry::cached::CachedList, encoding: crate::negotiate::Encoding) -> Response {
    if encoding == crate::negotiate::Encoding::Protobuf
        && let Some(bytes) = list.to_protobuf()
    {
        return bytes_response(StatusCode::OK, bytes, crate::negotiate::PROTOBUF);
    }
    bytes_response(StatusCode::OK, list.to_json(), "application/json")
}
