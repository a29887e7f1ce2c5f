//! The connection's own clock: idle, first-byte and head deadlines around the socket.
//!
//! hyper cannot be trusted with these (FACTS.md §2.6): its HTTP/1 `header_read_timeout` closes
//! without a 408, it runs no timer at all while hyper-util's `auto` builder sniffs for the
//! HTTP/2 preface (a silent client would be held forever), and HTTP/2 has no idle timeout. So
//! [`DeadlineIo`] wraps the stream and decides, each time hyper waits for bytes, which deadline
//! applies, from what it has seen and from [`ConnState`], which the request path updates:
//!
//! | state | deadline | when it passes |
//! |---|---|---|
//! | no byte yet on a fresh connection | `header_timeout` after the accept | EOF to hyper: the connection closes without a word |
//! | HTTP/1, bytes of a head received, no request in flight | `header_timeout` after the head's first byte (or the accept) | `408 Request Timeout`, then EOF |
//! | no request in flight since the last one ended (kept alive) | `keep_alive` after that | EOF |
//! | a request in flight, or the connection upgraded | none here (`request_timeout`, `client_body_timeout` and the worker's graceful deadline bound these) | – |
//! | any write blocked (the client stopped reading) | the service's idle timeout after the write first blocked (nginx's `send_timeout`; an HTTP/2 stream held by flow control has its own, [`super::stream`]) | the write fails with `TimedOut`: the connection ends |
//!
//! The 408 is written here, straight to the socket, because hyper has no way to be asked to.
//! It is only written when hyper has nothing half-written (its last write did not stall), so
//! it can never land inside another response; otherwise the connection just closes.
//!
//! This module owns the stream's read and write paths and nothing else: it knows no request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::service::reclaim::{IdleClass, Reclaim};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// What the request path tells the connection's clock. One per connection, shared by the
/// [`DeadlineIo`] and every request (HTTP/2 requests run in their own tasks, hence atomics;
/// on the worker's single thread they are never contended).
#[derive(Debug)]
pub struct ConnState {
    /// Requests whose handler was called and whose response body has not been dropped yet.
    pub in_flight: AtomicUsize,
    /// Requests started on this connection, ever: tells the clock a head it was timing was
    /// completed.
    pub started: AtomicU64,
    /// Set when a response switched protocols (101): the stream now belongs to the app and has
    /// no HTTP deadlines any more.
    pub upgraded: AtomicBool,
    /// Set when the head deadline passed and a 408 was written, for the access log.
    pub head_timed_out: AtomicBool,
    /// The task last left waiting for bytes, woken by [`ConnState::request_ended`] so it
    /// re-arms the idle deadline: hyper does not read again after a read returned `Pending`
    /// until that read's waker fires, and the deadline chosen then (the head's, or none while
    /// a request was in flight) is stale once the request has ended.
    reader: Mutex<Option<Waker>>,
    /// Tells the worker when this connection may be closed to admit a newcomer at the
    /// connection cap: between requests (kept alive), or before a complete head; never with
    /// a request in flight or once upgraded. Here rather than in the stream because a request
    /// starting must say "busy" at once, before hyper next reads.
    reclaim: Reclaim,
    /// What `reclaim` was last told ([`TOLD_BUSY`] and so on), so it is told only of changes.
    told: AtomicU8,
    /// Notified (one stored permit) when a request starts: a connection waiting out its stop
    /// grace shuts down as that request begins, so its answer says `connection: close`.
    pub request_began: tokio::sync::Notify,
    /// Set when a graceful stop begins: every HTTP/1 response from now on says
    /// `connection: close`, so the client learns it before it sends another request.
    pub closing: AtomicBool,
}

const TOLD_BUSY: u8 = 0;
const TOLD_NO_REQUEST: u8 = 1;
const TOLD_KEPT_ALIVE: u8 = 2;

impl Default for ConnState {
    /// A connection no worker knows ([`Reclaim::detached`]).
    fn default() -> Self {
        ConnState::new(Reclaim::detached())
    }
}

impl ConnState {
    /// A fresh connection, reclaimable as one without a request yet.
    pub fn new(reclaim: Reclaim) -> ConnState {
        let state = ConnState {
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            head_timed_out: AtomicBool::new(false),
            reader: Mutex::new(None),
            reclaim,
            told: AtomicU8::new(TOLD_BUSY),
            request_began: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
        };
        state.tell(Some(IdleClass::NoRequest));
        state
    }

    /// Counts a request in: it is in flight until [`ConnState::request_ended`].
    pub fn request_started(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.tell(None);
        self.request_began.notify_one();
    }

    /// Tells the worker's reclaim table what this connection is now (`None`: busy), if that
    /// changed.
    fn tell(&self, class: Option<IdleClass>) {
        let code = match class {
            None => TOLD_BUSY,
            Some(IdleClass::NoRequest) => TOLD_NO_REQUEST,
            Some(IdleClass::KeptAlive) => TOLD_KEPT_ALIVE,
        };
        if self.told.swap(code, Ordering::AcqRel) != code {
            match class {
                Some(c) => self.reclaim.set_idle(c),
                None => self.reclaim.set_busy(),
            }
        }
    }

    /// Whether the connection was chosen to close for a newcomer (only while it is idle).
    fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.told.load(Ordering::Acquire) == TOLD_BUSY {
            return Poll::Pending;
        }
        self.reclaim.poll_evicted(cx)
    }

    /// Counts a request out; the last one wakes the reader.
    pub fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    fn park_reader(&self, waker: &Waker) {
        let mut slot = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// The deadlines, from [`super::HttpSettings`].
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From the accept to the first request's head, and from a later head's first byte to
    /// its end.
    pub header: Duration,
    /// Silence allowed between requests.
    pub keep_alive: Duration,
    /// How long a write may stay blocked (a client that stops reading its response, or its
    /// WebSocket) before the connection fails with `TimedOut`; `None` = as long as it likes.
    /// This is the service's idle timeout.
    pub write_stall: Option<Duration>,
}

/// What the connection is, as far as the bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// Fewer bytes than the HTTP/2 preface so far, all matching it.
    Sniffing(usize),
    Http1,
    Http2,
}

/// The HTTP/2 client preface (RFC 9113 §3.4), which hyper-util also looks for.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the client gets when its head is too slow.
const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// A stream with the connection's deadlines (module docs).
pub struct DeadlineIo<S> {
    inner: S,
    state: Arc<ConnState>,
    deadlines: Deadlines,
    proto: Proto,
    /// The one timer, reset to whichever deadline applies.
    sleep: Pin<Box<Sleep>>,
    /// The deadline `sleep` is set to now.
    armed: Option<Instant>,
    /// Where the current wait began: `(since, started)` where `since` is the accept, the end
    /// of the last request, or a head's first byte, and `started` is
    /// [`ConnState::started`] then (a change means a request began since).
    wait: Wait,
    /// Whether hyper's last write stalled (it may hold half a response): no 408 then.
    write_stalled: bool,
    /// Armed at the first write that stalls, cleared by any write that makes progress:
    /// the [`Deadlines::write_stall`] deadline. Allocated on the first stall only.
    stall: Option<Pin<Box<Sleep>>>,
    /// The 408 bytes still to write, once the head deadline passed.
    sending_408: Option<usize>,
    /// Dropped with the stream: tells [`super::AppService::serve`] an upgraded stream was let
    /// go.
    _dropped: oneshot::Sender<()>,
}

/// The wait the clock is timing. A wait that begins as bytes arrive has no time yet
/// (`None`): the next read that has to wait reads the clock for it, a few microseconds later.
/// Most heads arrive whole and become a request before any read waits, so the data path
/// never reads the clock (a `clock_gettime` costs ~50 ns on this VM, ~1% of a hello-world
/// request; measured with perf).
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// For the first byte of a fresh connection, since the accept.
    Fresh(Instant),
    /// Between requests, since the last one ended (as first seen from here).
    Idle(Option<Instant>),
    /// For the rest of a head whose first byte came at this instant; `started` as it was then.
    Head {
        since: Option<Instant>,
        started: u64,
    },
    /// A request is in flight.
    Busy,
}

impl<S> DeadlineIo<S> {
    /// Wraps a freshly accepted stream; the first-byte deadline starts now. The receiver
    /// completes when the returned stream is dropped (by hyper, or by the app that took it in
    /// an upgrade).
    pub fn new(
        inner: S,
        state: Arc<ConnState>,
        deadlines: Deadlines,
    ) -> (DeadlineIo<S>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let io = DeadlineIo {
            inner,
            state,
            deadlines,
            proto: Proto::Sniffing(0),
            sleep: Box::pin(tokio::time::sleep_until(now + deadlines.header)),
            armed: Some(now + deadlines.header),
            wait: Wait::Fresh(now),
            write_stalled: false,
            stall: None,
            sending_408: None,
            _dropped: tx,
        };
        (io, rx)
    }

    /// Brings `wait` up to date with the request path; `false` when no deadline applies (a
    /// request in flight, or the stream upgraded). A wait that begins here has no time yet.
    fn settle(&mut self) -> bool {
        if self.state.upgraded.load(Ordering::Acquire) {
            self.state.tell(None);
            return false;
        }
        let started = self.state.started.load(Ordering::Acquire);
        if self.state.in_flight.load(Ordering::Acquire) > 0 {
            self.wait = Wait::Busy;
            self.state.tell(None);
            return false;
        }
        match self.wait {
            Wait::Busy => self.wait = Wait::Idle(None),
            // The head being timed became a request, which has ended: now idle.
            Wait::Head { started: s, .. } if s != started => self.wait = Wait::Idle(None),
            Wait::Fresh(_) if started > 0 => self.wait = Wait::Idle(None),
            _ => {}
        }
        true
    }

    /// Settles `wait` and returns its deadline; a wait without a time yet starts at `now()`
    /// (read only then).
    fn deadline(&mut self, now: impl FnOnce() -> Instant) -> Option<Instant> {
        if !self.settle() {
            return None;
        }
        if let Wait::Idle(t @ None)
        | Wait::Head {
            since: t @ None, ..
        } = &mut self.wait
        {
            *t = Some(now());
        }
        Some(match self.wait {
            Wait::Fresh(t) | Wait::Head { since: Some(t), .. } => {
                self.state.tell(Some(IdleClass::NoRequest));
                t + self.deadlines.header
            }
            Wait::Idle(Some(t)) => {
                self.state.tell(Some(IdleClass::KeptAlive));
                t + self.idle_limit()
            }
            Wait::Idle(None) | Wait::Head { since: None, .. } | Wait::Busy => {
                unreachable!("timed or returned above")
            }
        })
    }

    /// HTTP/2 has no "one request per connection": with keep-alive off, an idle HTTP/2
    /// connection gets the head deadline instead of none.
    fn idle_limit(&self) -> Duration {
        if self.proto == Proto::Http2 && self.deadlines.keep_alive.is_zero() {
            self.deadlines.header
        } else {
            self.deadlines.keep_alive
        }
    }

    /// Notes bytes hyper just read: the protocol, and the start of a head.
    fn saw(&mut self, bytes: &[u8]) {
        if let Proto::Sniffing(n) = self.proto {
            let take = bytes.len().min(H2_PREFACE.len() - n);
            self.proto = if bytes[..take] != H2_PREFACE[n..n + take] {
                Proto::Http1
            } else if n + take == H2_PREFACE.len() {
                Proto::Http2
            } else {
                Proto::Sniffing(n + take)
            };
        }
        match self.wait {
            // HTTP/2 frames between requests (pings, settings) are not a head: the idle
            // clock restarts instead.
            Wait::Idle(_) if self.proto == Proto::Http2 => self.wait = Wait::Idle(None),
            Wait::Idle(_) => {
                self.wait = Wait::Head {
                    since: None,
                    started: self.state.started.load(Ordering::Acquire),
                }
            }
            // The first request's head is timed from the accept.
            Wait::Fresh(since) if self.proto != Proto::Http2 => {
                self.wait = Wait::Head {
                    since: Some(since),
                    started: self.state.started.load(Ordering::Acquire),
                }
            }
            Wait::Fresh(_) => self.wait = Wait::Idle(None),
            Wait::Head { .. } | Wait::Busy => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> DeadlineIo<S> {
    /// Writes what is left of the 408, then reports EOF to hyper.
    fn poll_send_408(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while let Some(sent) = self.sending_408 {
            if sent == RESPONSE_408.len() {
                ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                self.sending_408 = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &RESPONSE_408[sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sending_408 = Some(sent + n);
        }
        let _ = buf; // Nothing filled: EOF.
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for DeadlineIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sending_408.is_some() || this.state.head_timed_out.load(Ordering::Relaxed) {
            return this.poll_send_408(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled().len();
                if filled > before && !this.state.upgraded.load(Ordering::Relaxed) {
                    // Settle the wait against the request path before counting these bytes.
                    this.settle();
                    let bytes = &buf.filled()[before..filled];
                    this.saw(bytes);
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Parked before the state is read, so a request ending after the read still wakes
        // this task and its next read arms the idle deadline.
        this.state.park_reader(cx.waker());
        let Some(deadline) = this.deadline(Instant::now) else {
            return Poll::Pending;
        };
        if this.armed != Some(deadline) {
            this.sleep.as_mut().reset(deadline);
            this.armed = Some(deadline);
        }
        // Chosen to make room for a newcomer: close as if the client had (only ever chosen
        // while idle or before a complete head, so no request is cut).
        if this.state.poll_evicted(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The deadline passed with hyper still waiting for bytes.
        if matches!(this.wait, Wait::Head { .. })
            && this.proto != Proto::Http2
            && !this.write_stalled
        {
            this.state.head_timed_out.store(true, Ordering::Relaxed);
            this.sending_408 = Some(0);
            return this.poll_send_408(cx, buf);
        }
        // Idle or silent: EOF, so hyper closes the connection as if the client had.
        Poll::Ready(Ok(()))
    }
}

impl<S> DeadlineIo<S> {
    /// Notes how a write went: progress clears the stall clock, a stall starts it (once), and
    /// a stall past [`Deadlines::write_stall`] fails the write.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.write_stalled = r.is_pending();
        if r.is_ready() {
            if let Some(stall) = self.stall.as_mut() {
                // Disarmed by pushing it far out; reset again at the next stall.
                stall.as_mut().reset(Instant::now() + FAR);
            }
            return r;
        }
        let Some(limit) = self.deadlines.write_stall else {
            return r;
        };
        let now = Instant::now();
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(now + limit)));
        if stall.deadline() > now + limit {
            stall.as_mut().reset(now + limit);
        }
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// "Not armed" for the write-stall timer.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for DeadlineIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const D: Deadlines = Deadlines {
        header: Duration::from_secs(10),
        keep_alive: Duration::from_secs(5),
        write_stall: Some(Duration::from_secs(60)),
    };

    #[tokio::test(start_paused = true)]
    async fn a_silent_fresh_connection_is_closed_at_the_header_deadline() {
        let (client, server) = duplex(1024);
        let (mut io, _gone) = DeadlineIo::new(server, Arc::default(), D);
        let start = Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(start.elapsed(), D.header);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_gets_408() {
        let (mut client, server) = duplex(1024);
        let state = Arc::new(ConnState::default());
        let (mut io, _gone) = DeadlineIo::new(server, Arc::clone(&state), D);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0, "EOF after the 408");
        assert!(state.head_timed_out.load(Ordering::Relaxed));
        let mut got = vec![0u8; RESPONSE_408.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, RESPONSE_408);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_and_upgrades_have_no_deadline_and_idle_ones_do() {
        let (mut client, server) = duplex(1024);
        let state = Arc::new(ConnState::default());
        let (mut io, _gone) = DeadlineIo::new(server, Arc::clone(&state), D);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        // The request path picks the head up.
        state.request_started();
        let read = tokio::time::timeout(Duration::from_secs(3600), io.read(&mut buf)).await;
        assert!(read.is_err(), "no deadline while a request is in flight");
        state.request_ended();
        let start = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(start.elapsed(), D.keep_alive, "idle after the response");
        state.upgraded.store(true, Ordering::Release);
        let read = tokio::time::timeout(Duration::from_secs(3600), io.read(&mut buf)).await;
        assert!(read.is_err(), "an upgraded stream has no deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_fails_the_write_after_the_stall_limit() {
        let (client, server) = duplex(64);
        let (mut io, _gone) = DeadlineIo::new(server, Arc::default(), D);
        let start = Instant::now();
        let big = vec![b'x'; 1024];
        let err = io.write_all(&big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_frames_between_requests_are_not_a_head() {
        let (mut client, server) = duplex(1024);
        let (mut io, _gone) = DeadlineIo::new(server, Arc::default(), D);
        client.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let start = Instant::now();
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(
            start.elapsed(),
            D.keep_alive,
            "idle, and no 408 into an HTTP/2 stream"
        );
        let mut rest = [0u8; 8];
        drop(io);
        assert_eq!(client.read(&mut rest).await.unwrap(), 0);
    }
}
