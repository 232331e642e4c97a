//! Deadlines on request and response bodies as they cross the connection.
//!
//! A request body must arrive in full within the body timeout, counted from
//! when its headers arrived: a total deadline, not an inactivity one, so a
//! client trickling a byte now and then is cut off too. A response body keeps
//! its request counted as in flight until it has been sent (or abandoned), so
//! a long watch is never mistaken for an idle connection.

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

use super::admission::InFlight;

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
    })
    .into_response()
}

/// A response body that keeps its request counted as in flight until it is dropped.
#[derive(Debug)]
pub(crate) struct InFlightBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> InFlightBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self { inner, _in_flight: in_flight }
    }
}

impl<B: Body + Unpin> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
