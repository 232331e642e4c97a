//! Deadlines on request and response bodies as they cross the connection.
//!
//! A request body must arrive in full within the body timeout, counted from
//! when its headers arrived: a total deadline, not an inactivity one, so a
//! client trickling a byte now and then is cut off too. A response body tells
//! its connection whose turn it is: a watch waiting for events is the server's
//! turn (the connection is busy), a frame the client does not take is the
//! client's (the connection is idle, and closed if that lasts).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tessera_api::ApiError;
use tessera_api::status::StatusDetails;
use tokio::time::{Instant, Sleep};

use super::admission::Request;

/// Why reading a request body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The connection failed or the client sent a malformed body.
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
    /// The client did not finish sending the body in time.
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
}

/// A request body that fails once its deadline passes.
#[derive(Debug)]
pub(crate) struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    /// Armed on the first read that has to wait, so bodies that are already
    /// here (most of them, and every GET) cost no timer.
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

/// Tells whether a request's body ran out of time (after the handler is done with it).
#[derive(Debug, Clone)]
pub(crate) struct BodyDeadline(Arc<AtomicBool>);

impl BodyDeadline {
    pub(crate) fn expired(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl DeadlineBody {
    /// Wraps a body whose headers arrived just now.
    pub(crate) fn new(inner: Incoming, timeout: Duration) -> (Self, BodyDeadline) {
        let timed_out = Arc::new(AtomicBool::new(false));
        let body = Self { inner, deadline: Instant::now() + timeout, timeout, timer: None, timed_out: timed_out.clone() };
        (body, BodyDeadline(timed_out))
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BodyError::Read))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.timed_out.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a client whose body ran out of time gets: kube-apiserver's answer to a
/// request that outlives its deadline (its timeout filter), 504 `Timeout`.
pub(crate) fn body_timeout_response() -> Response {
    crate::response::Failure(ApiError {
        code: 504,
        reason: "Timeout",
        message: "Timeout: request did not complete within requested timeout - context deadline exceeded".to_owned(),
        details: Some(Box::new(StatusDetails::default())),
        list_continue: None,
    })
    .into_response()
}

/// A response body that tells its request whose turn it is: the server's while
/// it produces a frame (a watch waiting for an event included), the client's
/// once a frame is handed over, until the connection asks for the next. Large
/// frames go out in slices so that a slow but steady reader shows progress.
#[derive(Debug)]
pub(crate) struct TurnTakingBody {
    inner: axum::body::Body,
    /// The rest of a large frame not yet handed over.
    rest: Bytes,
    request: Request,
}

/// Largest slice handed to the connection at once.
const SLICE: usize = 64 * 1024;

impl TurnTakingBody {
    pub(crate) fn new(inner: axum::body::Body, mut request: Request) -> Self {
        // The response is ready: the connection sends its head, then asks for the body.
        request.client_turn();
        Self { inner, rest: Bytes::new(), request }
    }

    fn hand_over(&mut self, mut data: Bytes) -> Frame<Bytes> {
        if data.len() > SLICE {
            self.rest = data.split_off(SLICE);
        }
        self.request.client_turn();
        Frame::data(data)
    }
}

impl Body for TurnTakingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        this.request.server_turn();
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            return Poll::Ready(Some(Ok(this.hand_over(rest))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(Ok(this.hand_over(data)))),
                Err(frame) => {
                    this.request.client_turn();
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            Poll::Ready(end) => {
                this.request.client_turn();
                Poll::Ready(end)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn large_frames_go_out_in_slices_and_whole() {
        let admission = super::super::admission::Admission::new(1, 1);
        let held = admission.admit("127.0.0.1".parse().unwrap()).unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let request = held.connection().begin_request();
        let mut body = TurnTakingBody::new(axum::body::Body::from(payload.clone()), request);
        assert_eq!(body.size_hint().exact(), Some(200_000));
        let mut sizes = Vec::new();
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            // Between frames it is the client's turn: the connection counts as idle.
            assert!(held.connection().idle_since().is_some());
            sizes.push(data.len());
            received.extend_from_slice(&data);
        }
        assert_eq!(sizes, [SLICE, SLICE, SLICE, 200_000 - 3 * SLICE]);
        assert_eq!(received, payload);
    }
}
