//! Answers that follow a cache, as the destination and inbound-policy APIs
//! serve them to proxies: the answer as JSON, or with `watch=true` a stream of
//! newline-delimited JSON snapshots, one at once and one whenever the answer
//! changes, until the watch's deadline (kube's watch timeout, with jitter).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::Response;
use http::{StatusCode, header};
use serde_json::Value;
use tessera_api::ApiError;
use tessera_store::Revision;
use tokio::sync::watch;

use crate::response::{HandlerResult, json_response};

/// Answers with `resolve()`, followed when `follow` is set. `changes` ticks
/// when the cache behind `resolve` moves; the caller subscribes before this
/// resolves the first answer, so no change between the two is missed.
pub fn respond<F>(follow: bool, changes: watch::Receiver<Revision>, resolve: F) -> HandlerResult
where
    F: Fn() -> Result<Value, ApiError> + Send + Sync + 'static,
{
    let first = resolve()?;
    if !follow {
        return Ok(json_response(StatusCode::OK, &first));
    }
    let deadline = tokio::time::Instant::now() + crate::watch::MIN_REQUEST_TIMEOUT.mul_f64(rand::random_range(1.0..2.0));
    let resolve = Arc::new(resolve);
    let stream = futures::stream::unfold(Some((Some(first), None::<Value>, changes)), move |step| {
        let resolve = Arc::clone(&resolve);
        async move {
            let (pending, mut last, mut changes) = step?;
            if let Some(snapshot) = pending {
                let line = line_of(&snapshot);
                return Some((Ok::<Bytes, std::convert::Infallible>(line), Some((None, Some(snapshot), changes))));
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return None,
                    changed = changes.changed() => if changed.is_err() { return None },
                }
                match resolve() {
                    Ok(snapshot) if Some(&snapshot) == last.as_ref() => continue,
                    Ok(snapshot) => {
                        let line = line_of(&snapshot);
                        last = Some(snapshot);
                        return Some((Ok(line), Some((None, last, changes))));
                    }
                    // The question stopped resolving (its pod or Service is
                    // gone): say why as a Status line, then end.
                    Err(e) => return Some((Ok(line_of(&e.to_status())), None)),
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache, private"));
    Ok(response)
}

fn line_of(value: &Value) -> Bytes {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}
