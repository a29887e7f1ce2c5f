//! The bodies an application reads and writes.
//!
//! [`RequestBody`] is hyper's body under `--limit-request-body`: it fails at the first byte too
//! many, so the app never holds more than the limit, and records that it did so the response
//! can be turned into 413 whatever the app made of the error. [`ResponseBody`] is the app's
//! body, boxed, counted for the access log and the scoreboard, with a guard that tells the
//! connection's clock the request ended when hyper drops it.

use std::error::Error as StdError;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Errors of boxed bodies: what tower and axum use.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The request body every application is handed: hyper's, limited to
/// [`super::HttpSettings::limit_request_body`] bytes.
///
/// # Errors
/// Reading fails with [`LengthLimitError`] (in the box) at the first byte over the limit;
/// axum's extractors answer 413 for it. Otherwise hyper's errors (the client went away).
#[derive(Debug)]
pub struct RequestBody {
    /// `Limited` makes the error axum recognises; no limit is `usize::MAX`.
    inner: Limited<Incoming>,
    /// Set when the limit was hit, read by the request path once the app has answered.
    exceeded: Arc<AtomicBool>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, limit: Option<u64>, exceeded: Arc<AtomicBool>) -> Self {
        let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        RequestBody {
            inner: Limited::new(inner, limit),
            exceeded,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled
            && e.is::<LengthLimitError>()
        {
            self.exceeded.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once when a response body is dropped, with the body bytes produced.
pub(crate) trait OnBodyEnd: Send {
    fn end(self: Box<Self>, bytes: u64, complete: bool);
}

/// The body hyper writes: the app's, boxed, counted, and caught if it panics.
pub struct ResponseBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    bytes: u64,
    complete: bool,
    /// Runs on drop: the access-log line, the in-flight count.
    on_end: Option<Box<dyn OnBodyEnd>>,
}

impl ResponseBody {
    pub(crate) fn new(inner: UnsyncBoxBody<Bytes, BoxError>, on_end: Box<dyn OnBodyEnd>) -> Self {
        ResponseBody {
            inner,
            bytes: 0,
            complete: false,
            on_end: Some(on_end),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // A body that panics (a stream's closure, say) ends this response, not the connection's
        // task: hyper sees an error and aborts the response.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Pin::new(&mut this.inner).poll_frame(cx)
        }));
        match polled {
            Ok(Poll::Ready(Some(Ok(frame)))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Ok(Poll::Ready(None)) => {
                this.complete = true;
                Poll::Ready(None)
            }
            Ok(other) => other,
            Err(panic) => {
                let why = super::panic_message(&*panic);
                tracing::error!(cause = why, "response body panicked");
                Poll::Ready(Some(Err(format!("response body panicked: {why}").into())))
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

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let complete = self.complete || self.inner.is_end_stream();
        if let Some(on_end) = self.on_end.take() {
            on_end.end(self.bytes, complete);
        }
    }
}
