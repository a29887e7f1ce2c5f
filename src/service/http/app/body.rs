//! The bodies an application reads and writes.
//!
//! [`RequestBody`] is hyper's body under two limits. `--limit-request-body`: it fails at the
//! first byte too many, so the app never holds more than the limit. `--client-body-timeout`:
//! it fails when the client leaves it silent for that long while the app waits to read
//! (nginx's `client_body_timeout`). Either way it records what happened (`BodyOutcome`), so
//! the request path can turn the response into 413 or 408 whatever the app made of the
//! error. [`ResponseBody`] is the app's body (or the request path's own short answer),
//! counted for the access log and the scoreboard, with a guard that tells the connection's
//! clock the request ended when hyper drops it, and (HTTP/2) a mark for the stream's send
//! timeout ([`super::stream`]).

use std::error::Error as StdError;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::stream::SendWatch;

/// Errors of boxed bodies: what tower and axum use.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The error a [`RequestBody`] fails with when the client sent nothing for
/// `--client-body-timeout` while the app was waiting to read (downcast the [`BoxError`] to
/// tell it from a client that went away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientBodyTimeout {
    /// The limit that passed.
    pub limit: Duration,
}

impl fmt::Display for ClientBodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the client sent no request body for {:?} (client_body_timeout)",
            self.limit
        )
    }
}

impl StdError for ClientBodyTimeout {}

/// How a request body ended, as far as the request path must know once the app has answered.
/// Shared by the body and the request path; only requests with a body have one.
#[derive(Debug, Default)]
pub(crate) struct BodyOutcome {
    /// The body went over `--limit-request-body`: the answer becomes 413.
    pub exceeded: AtomicBool,
    /// The body stayed silent for `--client-body-timeout`: the answer becomes 408.
    pub timed_out: AtomicBool,
}

/// The request body every application is handed: hyper's, limited to
/// [`super::HttpSettings::limit_request_body`] bytes and to
/// [`super::HttpSettings::client_body_timeout`] of silence between reads.
///
/// # Errors
/// Reading fails with [`LengthLimitError`] (in the box) at the first byte over the limit
/// (axum's extractors answer 413 for it), with [`ClientBodyTimeout`] when the client stalls,
/// and otherwise with hyper's errors (the client went away).
#[derive(Debug)]
pub struct RequestBody {
    /// `Limited` makes the error axum recognises; no limit is `usize::MAX`.
    inner: Limited<Incoming>,
    /// Read by the request path once the app has answered; `None` for a request without a
    /// body (nothing can go wrong with it, and no allocation is spent on it).
    outcome: Option<Arc<BodyOutcome>>,
    /// `--client-body-timeout`; `None` = no limit.
    timeout: Option<Duration>,
    /// The silence deadline: created at the first read that has to wait, re-armed by the
    /// first wait after each frame (`armed` false), polled with the app's waker so it fires
    /// while the app waits.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` times the current wait.
    armed: bool,
}

impl RequestBody {
    pub(crate) fn new(
        inner: Incoming,
        limit: Option<u64>,
        timeout: Option<Duration>,
        outcome: Option<Arc<BodyOutcome>>,
    ) -> Self {
        let limit = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        RequestBody {
            inner: Limited::new(inner, limit),
            outcome,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// The client has been silent since the current wait began: has the limit passed?
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<ClientBodyTimeout> {
        let Some(limit) = self.timeout else {
            return Poll::Pending;
        };
        // A body polled outside any tokio runtime (an app that moved it to a thread of its
        // own) has no timer to wait on: no limit then, rather than a panic.
        if tokio::runtime::Handle::try_current().is_err() {
            return Poll::Pending;
        }
        let deadline = Instant::now() + limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(ClientBodyTimeout { limit }),
            Poll::Pending => Poll::Pending,
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
        let this = &mut *self;
        if let Some(o) = &this.outcome
            && o.timed_out.load(Ordering::Relaxed)
        {
            let limit = this.timeout.unwrap_or_default();
            return Poll::Ready(Some(Err(Box::new(ClientBodyTimeout { limit }))));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(e))) if e.is::<LengthLimitError>() => {
                if let Some(o) = &this.outcome {
                    o.exceeded.store(true, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => this.armed = false,
            Poll::Pending => {
                if let Poll::Ready(err) = this.poll_silence(cx) {
                    if let Some(o) = &this.outcome {
                        o.timed_out.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Some(Err(Box::new(err))));
                }
            }
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

pin_project! {
    /// The body hyper writes: the app's (`B`) or the request path's own short answer (a 413,
    /// say), counted, caught if it panics, with the request's end run when hyper drops it.
    /// Unboxed: hyper keeps the body of the response it is writing in one place per
    /// connection (HTTP/1), so a request costs no allocation here.
    pub struct ResponseBody<B> {
        #[pin]
        inner: Either<B, Full<Bytes>>,
        // The request's end, run on drop with what was sent.
        end: EndGuard,
        // HTTP/2 with a send timeout: told when hyper takes a frame and when it asks for the
        // next, so the stream's task can tell a client that stopped reading from an app that
        // has nothing to send yet ([`super::stream`]).
        send: Option<Arc<SendWatch>>,
    }
}

impl<B> ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(
        inner: Either<B, Full<Bytes>>,
        end: super::RequestEnd,
        send: Option<Arc<SendWatch>>,
    ) -> Self {
        ResponseBody {
            inner,
            end: EndGuard {
                end: Some(end),
                bytes: 0,
            },
            send,
        }
    }
}

/// Runs the request's end when the body is dropped, however it ends (sent whole, cut by a
/// client that left, dropped by a closing connection).
struct EndGuard {
    end: Option<super::RequestEnd>,
    /// Body bytes produced so far.
    bytes: u64,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            end.end(self.bytes);
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let inner = this.inner;
        if let Some(w) = this.send {
            w.asked();
        }
        // A body that panics (a stream's closure, say) ends this response, not the connection's
        // task: hyper sees an error and aborts the response.
        let polled = crate::child::catch_reported(AssertUnwindSafe(|| inner.poll_frame(cx)));
        match polled {
            Ok(Poll::Ready(Some(Ok(frame)))) => {
                if let Some(d) = frame.data_ref() {
                    this.end.bytes += d.len() as u64;
                    if let Some(w) = this.send {
                        w.gave();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Ok(other) => other,
            Err(panic) => Poll::Ready(Some(Err(body_panicked(this.end.end.as_ref(), panic)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Logs the one line for a response body's panic (the hook left it to this catcher, see
/// `child::catch_reported`) and gives the error that ends the response. The request line is
/// kept for the access log only (not paid per request for this line): named when the log is
/// on. Out of line: the hot path stays small.
#[cold]
#[inline(never)]
fn body_panicked(
    end: Option<&super::RequestEnd>,
    payload: Box<dyn std::any::Any + Send>,
) -> BoxError {
    let panic = crate::child::CaughtPanic::new(payload);
    super::log_caught_panic(
        "response body panicked",
        end.and_then(|e| e.logged.as_ref()).map(|l| &l.line),
        end.map(|e| &e.conn.peer),
        &panic,
    );
    let why = super::panic_message(&*panic.payload);
    format!("response body panicked: {why}").into()
}
