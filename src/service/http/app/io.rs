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
//! | HTTP/1, part of a head pipelined behind the request that just ended (read while it was in flight) | `header_timeout` after that request's end | `408 Request Timeout`, then EOF |
//! | no request in flight since the last one ended (kept alive; HTTP/2: whatever frames come meanwhile, and from the accept before a first stream) | `keep_alive` after that | EOF |
//! | a request in flight, or the connection upgraded | none here (`request_timeout`, `client_body_timeout` and the worker's graceful deadline bound these) | – |
//! | any write blocked (the client stopped reading) | the service's idle timeout after the write first blocked (nginx's `send_timeout`; an HTTP/2 stream held by flow control has its own, [`super::stream`]) | the write fails with `TimedOut`: the connection ends |
//!
//! The 408 is written here, straight to the socket, because hyper has no way to be asked to.
//! It is only written when hyper has nothing half-written (its last write did not stall), so
//! it can never land inside another response; otherwise the connection just closes. So is a
//! 505 for a request line naming `HTTP/2.0` (or a later major version) as text, which hyper
//! would answer 400 (see `LineTail`). Once either is written, hyper reads EOF and nothing it
//! writes reaches the client: one answer per head.
//!
//! **Per request, the timer is rarely touched.** The request path records when a request
//! ends ([`ConnState::request_ended_at`], with the instant it reads anyway for the metrics),
//! and while a request is in flight the reader keeps its timer armed no later than one idle
//! limit from then (a check-in), re-arming it only when it has passed. When the request ends
//! in another task (an HTTP/2 stream's), or while no check-in is armed, the reader is woken
//! and arms the idle deadline from the recorded end. A request that ends inside the reader's
//! own task (HTTP/1: hyper drops the response body as it writes) wakes nobody: the task is
//! running, and the armed check-in, or the client's next bytes, bring the reader back to the
//! end it recorded (see `request_ended_at`).
//!
//! **A head pipelined behind a request.** hyper reads ahead: bytes that follow a request
//! (pipelined in the same write, or sent while it was in flight) sit in hyper's buffer, and
//! the clock, which sees them go by while the request is in flight, cannot ask hyper how many
//! it used. When the request ends and hyper waits for more, either its buffer is empty (the
//! connection is kept alive: keep-alive deadline, silent close) or it holds the start of the
//! next head (head deadline, then 408, as for a head that begins on an idle connection). Told
//! apart by the last three bytes received (`DeadlineIo::tail`): a message without a body ends
//! its head with an empty line, and so does a chunked one (its last chunk, trailers, then an
//! empty line, RFC 9112 §7.1), so if the bytes received end otherwise, hyper holds more than
//! the request it just finished, and, as it is waiting for bytes, not a whole head. The head's
//! deadline runs from the end of that request: the server turns to the head only then. The
//! safe side is kept where the bytes cannot tell: a request with a `Content-Length` body ends
//! with whatever its body ends with, so after one ([`ConnState::sized_body_began`]) the
//! connection is taken as kept alive, and a partial head pipelined behind it waits out
//! `keep_alive` and closes without a word (the residual case). So does a head whose bytes so
//! far are only empty lines (which a head may begin with, RFC 9112 §2.2). No client that sent
//! a complete request and nothing after it gets a 408. HTTP/2 has no heads: untouched.
//!
//! This module owns the stream's read and write paths and nothing else: it knows no request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::service::http::{LINGER, LINGER_BUF, LINGER_READS};
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
    /// The [`ConnState::started`] count of the last request that came with a `Content-Length`
    /// body (0: none): its bytes end with its body's, so they cannot tell whether a head
    /// followed (module docs, "A head pipelined behind a request").
    sized_body: AtomicU64,
    /// Set when the head deadline passed and a 408 was written, for the access log.
    pub head_timed_out: AtomicBool,
    /// Set when a request line named a later major version of HTTP (`HTTP/2.0` sent as text)
    /// and a 505 was written, for the access log.
    pub version_refused: AtomicBool,
    /// The task last left waiting for bytes while a request was in flight, woken by
    /// [`ConnState::request_ended`]: hyper does not read again after a read returned `Pending`
    /// until that read's waker fires, and the reader then arms the idle deadline from the
    /// recorded end.
    reader: Mutex<Option<Waker>>,
    /// Set while the connection's own task polls hyper ([`ConnState::polling`]): the task the
    /// reader waits in (hyper reads the stream only from there), so a request that ends then
    /// ends inside the reader's own task.
    polling: AtomicBool,
    /// Whether the reader's timer is armed no later than the idle deadline of a request that
    /// ends from now on (its `bounded`, [`DeadlineIo::set_bounded`]): then a request's end
    /// need not wake it from inside its own task.
    checkin: AtomicBool,
    /// The clock's origin for the two instants below (atomics hold no `Instant`).
    born: Instant,
    /// When the last request ended, in nanoseconds after `born`, plus one (0 = none yet): the
    /// start of the idle wait that follows it. Written by [`ConnState::request_ended`], so the
    /// reader need not be woken to learn it.
    ended_at: AtomicU64,
    /// Tells the worker when this connection may be closed to admit a newcomer at the
    /// connection cap: between requests (kept alive), or before a complete head; never with
    /// a request in flight or once upgraded. Here rather than in the stream because a request
    /// starting must say "busy" at once, before hyper next reads.
    reclaim: Reclaim,
    /// What `reclaim` was last told ([`TOLD_BUSY`] and so on), so it is told only of changes.
    told: AtomicU8,
    /// Notified (one stored permit) when a request starts once `closing` is set: a connection
    /// waiting out its stop grace shuts down as that request begins, so its answer says
    /// `connection: close`.
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
            sized_body: AtomicU64::new(0),
            upgraded: AtomicBool::new(false),
            head_timed_out: AtomicBool::new(false),
            version_refused: AtomicBool::new(false),
            reader: Mutex::new(None),
            polling: AtomicBool::new(false),
            checkin: AtomicBool::new(false),
            born: Instant::now(),
            ended_at: AtomicU64::new(0),
            reclaim,
            told: AtomicU8::new(TOLD_BUSY),
            request_began: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
        };
        state.tell(Some(IdleClass::NoRequest));
        state
    }

    /// Whether the stream answered a head itself (408 or 505, [`DeadlineIo`]). hyper then
    /// reads EOF, and whatever it writes after is dropped: it can only be a second answer (cut
    /// short inside the HTTP/2 preface, `PRI * HTTP/2.0\r\n`, hyper-util hands the bytes it
    /// holds to HTTP/1, which answers them 400), and the access log has that head's line.
    pub fn answered_a_head(&self) -> bool {
        self.head_timed_out.load(Ordering::Relaxed) || self.version_refused.load(Ordering::Relaxed)
    }

    /// Counts a request in: it is in flight until [`ConnState::request_ended`].
    pub fn request_started(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
        // SeqCst with `closing` (set, then `in_flight` read, by the stop): either this
        // request is seen in flight there, or the stop is seen here and notifies.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.tell(None);
        if self.closing.load(Ordering::SeqCst) {
            self.request_began.notify_one();
        }
    }

    /// Marks the request just counted in ([`ConnState::request_started`]) as one with a
    /// `Content-Length` body: after it, the clock takes the connection as kept alive whatever
    /// bytes it received last (module docs). Called by the request path, on the request's
    /// own task, for requests with such a body only (the mark is ignored on HTTP/2).
    pub fn sized_body_began(&self) {
        let started = self.started.load(Ordering::Acquire);
        self.sized_body.store(started, Ordering::Release);
    }

    /// Tells the worker's reclaim table what this connection is now (`None`: busy), if that
    /// changed.
    fn tell(&self, class: Option<IdleClass>) {
        let code = match class {
            None => TOLD_BUSY,
            Some(IdleClass::NoRequest) => TOLD_NO_REQUEST,
            Some(IdleClass::KeptAlive) => TOLD_KEPT_ALIVE,
        };
        // Looked at before it is swapped: most calls tell nothing new.
        if self.told.load(Ordering::Acquire) != code
            && self.told.swap(code, Ordering::AcqRel) != code
        {
            match class {
                Some(c) => self.reclaim.set_idle(c),
                None => self.reclaim.set_busy(),
            }
        }
    }

    /// Leaves `cx`'s waker with the reclaim table, so a request that ends while the reader
    /// waits (and makes the connection closable) can be chosen and woken.
    fn watch_eviction(&self, cx: &mut Context<'_>) {
        self.reclaim.watch(cx);
    }

    /// Whether the connection was chosen to close for a newcomer (only while it is idle). The
    /// reader is woken then if it left its waker ([`ConnState::watch_eviction`]).
    fn evicted(&self) -> bool {
        self.told.load(Ordering::Acquire) != TOLD_BUSY && self.reclaim.is_evicted()
    }

    /// Counts a request out, now.
    pub fn request_ended(&self) {
        self.request_ended_at(Instant::now());
    }

    /// Counts a request out that ended at `now`. The last one starts the idle wait: the
    /// connection becomes closable for a newcomer at once, and the reader is woken.
    pub fn request_ended_at(&self, now: Instant) {
        let at = self.since_born(now);
        // Before the count drops: a reader that sees no request in flight finds the end.
        self.ended_at.fetch_max(at, Ordering::AcqRel);
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if !self.upgraded.load(Ordering::Acquire) {
            // Idle since the end, read once by the caller.
            self.tell(Some(IdleClass::KeptAlive));
        }
        // Woken, unless this end runs inside the reader's own task (HTTP/1: hyper drops the
        // response body in the connection's task, as it writes) with a check-in armed. That
        // wake-up only had the running task polled once more, for a read that finds nothing
        // (the client has not had the answer yet): a whole poll of the connection per
        // request, ~0.3 us of a hello-world's ~9 (perf per request, 2026-11-30). Without it
        // the reader comes back with the client's next bytes, or at the check-in, and finds
        // the recorded end either way. From another task (an HTTP/2 stream's), or with no
        // check-in (upgraded, no idle limit), the reader is woken as before.
        // Told by a flag the connection's task sets (no lock, no task-id lookup: ~40
        // instructions and two locked operations per request, callgrind, 2026-11-30).
        if self.polling.load(Ordering::Relaxed) && self.checkin.load(Ordering::Acquire) {
            return;
        }
        let slot = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waker) = slot.as_ref() {
            waker.wake_by_ref();
        }
    }

    /// Marks the connection's own task as polling hyper until the guard is dropped: a request
    /// that ends meanwhile ends in the task the reader waits in (see `request_ended_at`).
    /// Only the connection's task may hold one, and only around its poll of the connection.
    pub fn polling(&self) -> Polling<'_> {
        self.polling.store(true, Ordering::Relaxed);
        Polling(self)
    }

    /// `t` as stored in `ended_at`: nanoseconds after `born`, plus one.
    fn since_born(&self, t: Instant) -> u64 {
        // Without `as_nanos`'s u128: 2^64 ns is 584 years.
        let d = t.saturating_duration_since(self.born);
        let ns = d
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()));
        ns.min(u64::MAX - 1) + 1
    }

    /// The last request's end as stored in `ended_at` (0: none yet), to be compared with an
    /// earlier one before it is made an instant ([`ConnState::end_instant`]).
    fn last_end_stored(&self) -> u64 {
        self.ended_at.load(Ordering::Acquire)
    }

    /// The instant of an end as [`ConnState::last_end_stored`] gave it; `None` for none.
    fn end_instant(&self, stored: u64) -> Option<Instant> {
        match stored {
            0 => None,
            n => Some(self.born + Duration::from_nanos(n - 1)),
        }
    }

    fn park_reader(&self, waker: &Waker) {
        let mut slot = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// The connection's task polling hyper ([`ConnState::polling`]); clears the mark when dropped.
pub struct Polling<'a>(&'a ConnState);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.polling.store(false, Ordering::Relaxed);
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

/// What the client gets when its request line names a later major version of HTTP.
const RESPONSE_505: &[u8] =
    b"HTTP/1.1 505 HTTP Version Not Supported\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// A stream with the connection's deadlines (module docs).
pub struct DeadlineIo<S> {
    inner: S,
    state: Arc<ConnState>,
    deadlines: Deadlines,
    proto: Proto,
    /// The one timer, reset to whichever deadline applies.
    sleep: Pin<Box<Sleep>>,
    /// The instant `sleep` is set to: the deadline that applies, or an earlier one (it then
    /// fires early and is set again).
    armed: Option<Instant>,
    /// Whether `armed` comes no later than the idle deadline of any request that ends from
    /// now on (an idle deadline, or a check-in): then a busy wait leaves the timer alone.
    bounded: bool,
    /// Whether `sleep` was polled with the `parked` waker since it was last reset: then,
    /// until it fires, polling it again only re-registers the same waker, and is skipped.
    timer_watched: bool,
    /// The waker last left with [`ConnState`]'s reader slot and with the reclaim table, so
    /// the same task's next wait takes no lock.
    parked: Option<Waker>,
    /// Where the current wait began: `(since, started)` where `since` is the accept, the end
    /// of the last request, or a head's first byte, and `started` is
    /// [`ConnState::started`] then (a change means a request began since).
    wait: Wait,
    /// The last request's end as [`DeadlineIo::settle`] last saw it stored
    /// ([`ConnState::last_end_stored`]).
    seen_end: u64,
    /// Whether hyper's last write stalled (it may hold half a response): no 408 then.
    write_stalled: bool,
    /// Armed at the first write that stalls, cleared by any write that makes progress:
    /// the [`Deadlines::write_stall`] deadline. Allocated on the first stall only.
    stall: Option<Pin<Box<Sleep>>>,
    /// The answer this stream writes itself (408 or 505) and how much of it is written; once
    /// it is, hyper reads EOF.
    sending: Option<(&'static [u8], usize)>,
    /// Where the close is (see `poll_shutdown`).
    linger: Linger,
    /// The end of the current head's request line while it arrives, to read its version.
    line: Option<LineTail>,
    /// The last three bytes received, the latest in the low byte (fewer, zero-padded, on a
    /// young connection): whether they end a head (module docs, "A head pipelined behind a
    /// request"). Kept at each read with bytes: a few instructions, where the bytes are.
    tail: u32,
    /// Whether `tail` ends in an empty line (`\n\n` or `\n\r\n`): a head's end, or a chunked
    /// body's, or nothing received yet.
    tail_ends_head: bool,
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
            bounded: false,
            timer_watched: false,
            parked: None,
            wait: Wait::Fresh(now),
            seen_end: 0,
            write_stalled: false,
            stall: None,
            sending: None,
            linger: Linger::Open,
            line: None,
            tail: 0,
            tail_ends_head: true,
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
        // Idle since the last request ended (as `ConnState::request_ended_at` recorded it),
        // or, when the end is not known, since this read. Made an instant only when it is
        // used: once per request, not at each of its reads.
        let stored = self.state.last_end_stored();
        let new_end = stored != self.seen_end;
        self.seen_end = stored;
        let ended = || self.state.end_instant(stored);
        let request_ended = match self.wait {
            Wait::Busy => true,
            // The head being timed became a request, which has ended.
            Wait::Head { started: s, .. } => s != started,
            Wait::Fresh(_) => started > 0,
            // A request may have come and gone (an HTTP/2 stream) since this wait began. An
            // end seen before is no later than the wait's start (each wait starts at an end
            // seen then, or at a clock read after it).
            Wait::Idle(Some(t)) if new_end => {
                if let Some(e) = ended().filter(|&e| e > t) {
                    self.wait = Wait::Idle(Some(e));
                }
                false
            }
            Wait::Idle(_) => false,
        };
        if request_ended {
            let end = ended();
            self.wait = Wait::Idle(end);
            // Idle, unless hyper holds part of the next head (only looked into when the
            // bytes received do not end in an empty line: not on the hot path).
            if !self.tail_ends_head {
                self.head_after(end, started);
            }
        }
        true
    }

    /// Turns the idle wait [`DeadlineIo::settle`] just began, at the end (`ended`) of the last
    /// of `started` requests, into a wait for the rest of a head from that end, when the bytes
    /// received (which do not end in an empty line) show hyper holds part of one (module docs,
    /// "A head pipelined behind a request"). Out of the way: `settle` runs twice per request.
    #[cold]
    #[inline(never)]
    fn head_after(&mut self, ended: Option<Instant>, started: u64) {
        if self.proto != Proto::Http1 || self.state.sized_body.load(Ordering::Acquire) == started {
            return;
        }
        // Begun inside a read: its request line is hyper's to judge (`LineTail`).
        self.line = None;
        self.wait = Wait::Head {
            since: ended,
            started,
        };
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
                self.set_bounded(false);
                t + self.deadlines.header
            }
            Wait::Idle(Some(t)) => {
                self.state.tell(Some(IdleClass::KeptAlive));
                // `t` is past, so any later end's idle deadline is later than this one.
                self.set_bounded(true);
                t + self.idle_limit()
            }
            Wait::Idle(None) | Wait::Head { since: None, .. } | Wait::Busy => {
                unreachable!("timed or returned above")
            }
        })
    }

    /// Sets `bounded`, and tells the request path ([`ConnState::request_ended_at`]).
    fn set_bounded(&mut self, bounded: bool) {
        self.bounded = bounded;
        self.state.checkin.store(bounded, Ordering::Release);
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

    /// The check-in interval while a request is in flight: the idle limit, so the reader looks
    /// again no later than the idle deadline of a request ending now (a fallback: the end wakes
    /// the reader); `None` when there is no idle limit (HTTP/1 without keep-alive).
    fn checkin_limit(&self) -> Option<Duration> {
        Some(self.idle_limit()).filter(|d| !d.is_zero())
    }

    /// Leaves `cx`'s waker in the reader slot and with the reclaim table, unless this task's
    /// already is (no lock then).
    fn park(&mut self, cx: &mut Context<'_>) {
        if self
            .parked
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return;
        }
        self.state.park_reader(cx.waker());
        self.state.watch_eviction(cx);
        self.parked = Some(cx.waker().clone());
        self.timer_watched = false;
    }

    /// Notes bytes hyper just read: the protocol, the start of a head, and the last bytes
    /// (`tail`, and whether they end in an empty line, so that `settle`, which runs twice per
    /// request, tests one flag: its own growth cost ~30 instructions per request, callgrind,
    /// 2026-11-30).
    fn saw(&mut self, bytes: &[u8]) {
        self.tail = match *bytes {
            // One load: the byte above the three is masked off below.
            [.., a, b, c, d] => u32::from_be_bytes([a, b, c, d]) & 0xFF_FFFF,
            _ => bytes
                .iter()
                .fold(self.tail, |t, &b| (t << 8 | u32::from(b)) & 0xFF_FFFF),
        };
        self.tail_ends_head = self.tail & 0xFFFF == 0x0A0A || self.tail == 0x0A_0D0A;
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
            // HTTP/2 frames between requests (pings, settings, a header block still open)
            // are not a head, and do not restart the idle clock either: an HTTP/2 connection
            // is idle from its last stream's end whatever else its client sends, or a PING
            // every second, or a header block dripped in CONTINUATION frames (HTTP/2's
            // slowloris), would hold it for ever.
            Wait::Idle(_) if self.proto == Proto::Http2 => {}
            Wait::Idle(_) => {
                self.wait = Wait::Head {
                    since: None,
                    started: self.state.started.load(Ordering::Acquire),
                };
                self.line = Some(LineTail::default());
            }
            // The first request's head is timed from the accept.
            Wait::Fresh(since) if self.proto != Proto::Http2 => {
                self.wait = Wait::Head {
                    since: Some(since),
                    started: self.state.started.load(Ordering::Acquire),
                };
                self.line = Some(LineTail::default());
            }
            // The preface is in: HTTP/2, idle since the accept until a first stream.
            Wait::Fresh(since) => self.wait = Wait::Idle(Some(since)),
            Wait::Head { .. } | Wait::Busy => {}
        }
    }

    /// Reads on through the current head's request line (the bytes hyper just read, after
    /// [`DeadlineIo::saw`]); true when it is complete and names a later major version of
    /// HTTP/1 on an HTTP/1 connection (the HTTP/2 preface's `PRI * HTTP/2.0` never counts).
    /// A later minor version of HTTP/1 in `bytes` is made `HTTP/1.1` on the way ([`LineTail`]).
    fn version_too_new(&mut self, bytes: &mut [u8]) -> bool {
        let Some(line) = &mut self.line else {
            return false;
        };
        match line.feed(bytes) {
            LineScan::More => false,
            LineScan::Done | LineScan::LaterMinor => {
                self.line = None;
                false
            }
            LineScan::TooNew => {
                self.line = None;
                self.proto == Proto::Http1
            }
        }
    }
}

/// The last bytes of a request line as it arrives: enough to read its version, whatever the
/// line's length and however it is cut into reads.
///
/// Why here and not in hyper: hyper's HTTP/1 parser (httparse) knows only `HTTP/1.0` and
/// `HTTP/1.1` and answers anything else with 400, while RFC 9110 §15.6.6 (and nginx, and the
/// static service) answer a well-formed later major version, `HTTP/2.0` sent as text, with
/// 505. It refuses a later minor version too (`HTTP/1.2`), which RFC 9112 §2.3 says a server
/// SHOULD take as the highest minor version it implements (as the static service does): such
/// a version's digit is made `1` in the bytes hyper is given (the read that completes the
/// token is judged before hyper sees it, so the digit is in it). Only the first request
/// line of a head that begins a read is looked at: a head pipelined behind another in the
/// same read is left to hyper (400).
#[derive(Debug, Default)]
struct LineTail {
    /// The line's last bytes (up to [`LineTail::KEEP`]), oldest first.
    tail: [u8; LineTail::KEEP],
    len: usize,
    /// How long the line is so far, to tell an empty line (skipped before a request line,
    /// as RFC 9112 §2.2 allows and httparse does) from a line longer than the tail.
    total: usize,
}

/// Where [`LineTail::feed`] got to.
#[derive(Debug, PartialEq, Eq)]
enum LineScan {
    /// The line has not ended yet.
    More,
    /// The line ended with a version hyper will judge.
    Done,
    /// The line ended with `HTTP/2.0` to `HTTP/9.9`.
    TooNew,
    /// The line ended with `HTTP/1.2` to `HTTP/1.9` (from [`LineTail::judge`] only: `feed`
    /// makes it `Done`, and the version `HTTP/1.1` where it can).
    LaterMinor,
}

impl LineTail {
    /// `" HTTP/2.0"` and the line's `\r`.
    const KEEP: usize = 10;

    /// Reads on through `bytes`, the next bytes of the connection, and says where the request
    /// line got to; a later minor version of HTTP/1 in them is made `HTTP/1.1` (type docs).
    fn feed(&mut self, bytes: &mut [u8]) -> LineScan {
        // Where the rest of `bytes` begins (empty lines before the request line skipped).
        let mut at = 0;
        loop {
            let rest = &bytes[at..];
            let Some(end) = memchr::memchr(b'\n', rest) else {
                self.push(rest);
                // hyper refuses a version it does not speak as soon as its token is there,
                // before the line ends (`GET / HTTP/2.0\r`, then `\n`): judged now, or it
                // would answer 400 first.
                let line = &self.tail[..self.len];
                let scan = Self::judge(line.strip_suffix(b"\r").unwrap_or(line));
                let here = rest.strip_suffix(b"\r").unwrap_or(rest).len();
                return match scan {
                    LineScan::LaterMinor => Self::mend_minor(&mut bytes[at..at + here]),
                    scan => scan.more_unless_too_new(),
                };
            };
            let here = rest[..end]
                .strip_suffix(b"\r")
                .unwrap_or(&rest[..end])
                .len();
            // The usual case, a line that arrives whole: judged where it lies, nothing kept.
            let scan = if self.total == 0 {
                let line = &rest[..here];
                if line.is_empty() {
                    at += end + 1;
                    continue;
                }
                Self::judge(line)
            } else {
                self.push(&rest[..end]);
                let mut line = &self.tail[..self.len];
                let mut total = self.total;
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                    total -= 1;
                }
                if total == 0 {
                    *self = LineTail::default();
                    at += end + 1;
                    continue;
                }
                Self::judge(line)
            };
            return match scan {
                LineScan::LaterMinor => Self::mend_minor(&mut bytes[at..at + here]),
                scan => scan,
            };
        }
    }

    /// Makes the version a line ends with `HTTP/1.1` when it ends `here` (this read's part of
    /// a line that [`LineTail::judge`] found to end with a later minor version): its last byte
    /// is the minor digit. `Done` either way: hyper judges the rest.
    fn mend_minor(here: &mut [u8]) -> LineScan {
        if let Some(minor) = here.last_mut() {
            *minor = b'1';
        }
        LineScan::Done
    }

    /// A whole request line (or its last [`LineTail::KEEP`] bytes), without its `\r\n`; also
    /// the start of one, whose version token may be complete already.
    fn judge(line: &[u8]) -> LineScan {
        // `SP HTTP/ DIGIT . DIGIT` ends a request line (RFC 9112 §3); a major above 1 is a
        // version this server does not speak as text, a minor above 1 of major 1 one hyper
        // does not take.
        let [.., b' ', b'H', b'T', b'T', b'P', b'/', major, b'.', minor] = line else {
            return LineScan::Done;
        };
        match (major, minor) {
            (b'2'..=b'9', b'0'..=b'9') => LineScan::TooNew,
            (b'1', b'2'..=b'9') => LineScan::LaterMinor,
            _ => LineScan::Done,
        }
    }

    fn push(&mut self, part: &[u8]) {
        self.total += part.len();
        if part.len() >= Self::KEEP {
            self.tail.copy_from_slice(&part[part.len() - Self::KEEP..]);
            self.len = Self::KEEP;
            return;
        }
        let keep = (Self::KEEP - part.len()).min(self.len);
        self.tail.copy_within(self.len - keep..self.len, 0);
        self.tail[keep..keep + part.len()].copy_from_slice(part);
        self.len = keep + part.len();
    }
}

impl LineScan {
    /// For a line not ended yet: `TooNew` stays, anything else waits for more.
    fn more_unless_too_new(self) -> LineScan {
        match self {
            LineScan::TooNew => LineScan::TooNew,
            LineScan::Done | LineScan::More | LineScan::LaterMinor => LineScan::More,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> DeadlineIo<S> {
    /// Writes what is left of this stream's own answer (408, 505), closes in stages (as
    /// [`DeadlineIo::poll_close`]: what the client still sends is read and dropped, so its
    /// late bytes do not meet a reset that can destroy the answer), then reports EOF to hyper.
    fn poll_send(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, sent)) = self.sending {
            if sent == answer.len() {
                ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                ready!(self.poll_close(cx))?;
                self.sending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sending = Some((answer, sent + n));
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
        if this.sending.is_some() || this.state.answered_a_head() {
            return this.poll_send(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled().len();
                if filled > before && !this.state.upgraded.load(Ordering::Relaxed) {
                    // Settle the wait against the request path before counting these bytes.
                    this.settle();
                    let bytes = &mut buf.filled_mut()[before..filled];
                    this.saw(bytes);
                    // A later HTTP version: hyper never sees these bytes (any earlier part
                    // of the line it holds ends in EOF, which it closes on without a word),
                    // and the client gets 505, unless a response may be half-written.
                    if this.version_too_new(bytes) && !this.write_stalled {
                        buf.set_filled(before);
                        this.state.version_refused.store(true, Ordering::Relaxed);
                        this.sending = Some((RESPONSE_505, 0));
                        return this.poll_send(cx, buf);
                    }
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        // Parked before the state is read, so a request ending after the read still wakes
        // this task and its next read arms the idle deadline.
        this.park(cx);
        let Some(deadline) = this.deadline(Instant::now) else {
            return this.wait_busy(cx);
        };
        // A timer set earlier than the deadline is left as it is: it fires early, and is set
        // again then (below). So a kept-alive connection, whose idle deadline moves later
        // with every request, touches its timer about once per keep-alive period rather
        // than once per request (a reset was ~1% of a hello-world request's instructions,
        // callgrind, 2026-11-30).
        if this.armed.is_none_or(|armed| deadline < armed) {
            this.arm(deadline);
        }
        // Chosen to make room for a newcomer: close as if the client had (only ever chosen
        // while idle or before a complete head, so no request is cut).
        if this.state.evicted() {
            return Poll::Ready(Ok(()));
        }
        if this.poll_timer(cx).is_pending() {
            return Poll::Pending;
        }
        if Instant::now() < deadline {
            // It fired early (set for an earlier deadline): set it for this one.
            this.arm(deadline);
            if this.poll_timer(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // The deadline passed with hyper still waiting for bytes.
        if matches!(this.wait, Wait::Head { .. })
            && this.proto != Proto::Http2
            && !this.write_stalled
        {
            this.state.head_timed_out.store(true, Ordering::Relaxed);
            this.sending = Some((RESPONSE_408, 0));
            return this.poll_send(cx, buf);
        }
        // Idle or silent: EOF, so hyper closes the connection as if the client had.
        Poll::Ready(Ok(()))
    }
}

impl<S> DeadlineIo<S> {
    /// Sets the timer for `deadline`.
    fn arm(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.timer_watched = false;
        self.armed = Some(deadline);
    }

    /// Waits with a request in flight (or upgraded): no deadline applies, but the timer stays
    /// armed as a check-in no later than the idle limit from now, so that when the request
    /// ends the reader would look again by itself in time to arm the idle deadline from that
    /// end ([`ConnState::request_ended_at`] wakes it earlier). hyper reads while a response is
    /// being written (to notice a client that went away), so on a busy connection this runs
    /// once per request; it touches the timer only when the armed deadline is a head
    /// deadline (later than an idle one could be) or has passed.
    fn wait_busy(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let limit = self
            .checkin_limit()
            .filter(|_| !self.state.upgraded.load(Ordering::Acquire));
        let Some(limit) = limit else {
            // Upgraded (the app owns the stream), or no idle limit: no check-in; a request
            // ending wakes the reader.
            self.set_bounded(false);
            return Poll::Pending;
        };
        if !self.bounded || self.sleep.is_elapsed() {
            self.arm(Instant::now() + limit);
            self.set_bounded(true);
        }
        if self.poll_timer(cx).is_ready() {
            // Passed as it was armed (a paused or jumping clock): look again at once rather
            // than be left without a timer.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Polls the timer, unless it is known to hold this task's waker already and has not
    /// fired (a wake-up after a request's end, or hyper reading again, leaves the deadline as
    /// it was): a timer poll re-registers the waker with atomics each time (perf: ~0.2% of a
    /// hello-world worker, 2026-11-30). Called after [`DeadlineIo::park`], which clears the
    /// mark when the task's waker changes.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer_watched && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        let polled = self.sleep.as_mut().poll(cx);
        self.timer_watched = polled.is_pending();
        polled
    }

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
        if this.state.answered_a_head() {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.answered_a_head() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
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

    /// Shuts the write side, then lingers until the client's EOF: a socket closed with the
    /// client's bytes unread, or that receives more after its close, answers them with a
    /// reset, and a client still sending (a body over `--limit-request-body` answered 413,
    /// pipelined requests behind a `connection: close`, a bad head with more behind it)
    /// gets `EPIPE`/`ECONNRESET` on its next write and may never read the answer (curl
    /// reports "Send failure: Connection reset by peer"). RFC 9112 §9.6 has a server close
    /// in stages for this reason; like nginx's `lingering_close` (and the static service's),
    /// what arrives is read and dropped until the client's EOF, 2 s (`http::LINGER`), or
    /// 64 reads (`LINGER_READS`), or until the connection is chosen to make room at the
    /// connection cap. A client that closes when it reads the answer (the usual case) ends it
    /// at once. Not once upgraded: the app owns the stream and may still be
    /// reading it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_close(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> DeadlineIo<S> {
    /// Shuts the write side, then reads and drops what the client still sends until its EOF,
    /// for at most [`LINGER`] and [`LINGER_READS`] reads (nginx's lingering close, RFC 9112
    /// §9.6), or until the connection is chosen to make room at the connection cap; at once
    /// for an upgraded stream. Ready when the socket may close; again at once
    /// after that.
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.linger == Linger::Open {
            std::task::ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
            if self.state.upgraded.load(Ordering::Acquire) {
                self.linger = Linger::Done;
                return Poll::Ready(Ok(()));
            }
            self.linger = Linger::Draining(LINGER_READS);
            self.sleep.as_mut().reset(Instant::now() + LINGER);
            self.armed = None;
            self.timer_watched = false;
            // The timer is the linger's now, no check-in.
            self.set_bounded(false);
        }
        let mut sink = [0u8; LINGER_BUF];
        while let Linger::Draining(left) = self.linger {
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() && left > 1 => {
                    self.linger = Linger::Draining(left - 1);
                }
                // EOF, an error, or the last read allowed: close now.
                Poll::Ready(_) => self.linger = Linger::Done,
                Poll::Pending => {
                    // Chosen to make room for a newcomer at the connection cap: close now.
                    // A lingering connection is still idle for the reclaim table (its answer
                    // is out; a 408's is the oldest that sent no request), and the accept loop
                    // waits for the one it chose to close: not for the rest of the linger.
                    self.park(cx);
                    if self.state.evicted() || self.sleep.as_mut().poll(cx).is_ready() {
                        self.linger = Linger::Done;
                    } else {
                        return Poll::Pending;
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Where a stream is in its close ([`DeadlineIo::poll_shutdown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Linger {
    /// Not shut yet.
    Open,
    /// Write side shut; reading and dropping what the client sends, this many reads left.
    Draining(u8),
    /// Shut and drained (or nothing to drain): the socket may close.
    Done,
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

    /// One read with `waker`: `None` while pending, else the bytes it filled.
    fn read_with(io: &mut DeadlineIo<tokio::io::DuplexStream>, waker: &Waker) -> Option<usize> {
        let mut buf = [0u8; 64];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(io).poll_read(&mut Context::from_waker(waker), &mut rb) {
            Poll::Ready(Ok(())) => Some(rb.filled().len()),
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => None,
        }
    }

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

    /// A connection whose first request's head has been read and picked up by the request
    /// path (in flight): the client's end, the state, the stream and its release signal.
    async fn a_request_in_flight() -> (
        tokio::io::DuplexStream,
        Arc<ConnState>,
        DeadlineIo<tokio::io::DuplexStream>,
        oneshot::Receiver<()>,
    ) {
        let (mut client, server) = duplex(1024);
        let state = Arc::new(ConnState::default());
        let (mut io, gone) = DeadlineIo::new(server, Arc::clone(&state), D);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        state.request_started();
        (client, state, io, gone)
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_and_upgrades_have_no_deadline_and_idle_ones_do() {
        let (_client, state, mut io, _gone) = a_request_in_flight().await;
        let mut buf = [0u8; 64];
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

    /// After a request ends, the bytes received tell a kept-alive wait (keep-alive, EOF) from
    /// part of a head hyper holds (header timeout from the end, 408): an empty line last,
    /// however the reads cut it, is a complete request; anything else is a head begun, unless
    /// the request had a `Content-Length` body (module docs, "A head pipelined behind a
    /// request").
    #[tokio::test(start_paused = true)]
    async fn bytes_left_after_a_request_are_a_head_unless_an_empty_line_ends_them() {
        let cases: [(&[&[u8]], bool, bool); 5] = [
            (&[b"GET / HTTP/1.1\r\n\r\n"], false, false),
            (&[b"GET / HTTP/1.1\r\n\r", b"\n"], false, false),
            (&[b"GET / HTTP/1.1\n\n"], false, false),
            (&[b"GET / HTTP/1.1\r\n\r\nGE", b"T"], false, true),
            (
                &[b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"],
                true,
                false,
            ),
        ];
        for (reads, sized, head) in cases {
            let (mut client, server) = duplex(1024);
            let state = Arc::new(ConnState::default());
            let (mut io, _gone) = DeadlineIo::new(server, Arc::clone(&state), D);
            let mut buf = [0u8; 64];
            for (i, read) in reads.iter().enumerate() {
                client.write_all(read).await.unwrap();
                assert_eq!(io.read(&mut buf).await.unwrap(), read.len());
                if i == 0 {
                    state.request_started();
                    if sized {
                        state.sized_body_began();
                    }
                }
            }
            state.request_ended();
            let start = Instant::now();
            assert_eq!(io.read(&mut buf).await.unwrap(), 0, "{reads:?}");
            // After the 408, the close lingers for the client's EOF, which this one never sends.
            let (wait, timed_out) = if head {
                (D.header + LINGER, true)
            } else {
                (D.keep_alive, false)
            };
            assert_eq!(start.elapsed(), wait, "{reads:?}");
            assert_eq!(
                state.head_timed_out.load(Ordering::Relaxed),
                timed_out,
                "{reads:?}"
            );
        }
    }

    /// Counts wake-ups.
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request that ends while its connection's reader waits (hyper's detect-EOF read)
    /// wakes the reader at once, and the idle deadline counts from the request's end.
    #[tokio::test(start_paused = true)]
    async fn a_request_ending_wakes_the_reader_and_idle_counts_from_its_end() {
        let (_client, state, mut io, _gone) = a_request_in_flight().await;
        let mut buf = [0u8; 64];
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        state.request_ended();
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "woken at the end");
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_pending());
        tokio::time::advance(Duration::from_millis(4900)).await;
        let mut rb = ReadBuf::new(&mut buf);
        assert!(
            Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_pending(),
            "idle for 4.9 s of the 5 allowed since the request ended"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        let mut rb = ReadBuf::new(&mut buf);
        let read = Pin::new(&mut io).poll_read(&mut cx, &mut rb);
        assert!(matches!(read, Poll::Ready(Ok(()))) && rb.filled().is_empty());
    }

    /// A request that ends inside the reader's own task (HTTP/1: hyper drops the response
    /// body in the connection's task, while that task polls hyper: `ConnState::polling`)
    /// wakes nobody: the check-in armed while it was in flight brings the reader back, and
    /// the idle deadline still counts from the end.
    #[tokio::test(start_paused = true)]
    async fn an_end_in_the_readers_own_task_wakes_nobody_and_idle_counts_from_it() {
        let (_client, state, mut io, _gone) = a_request_in_flight().await;
        let in_task = tokio::spawn(async move {
            let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
            let waker = Waker::from(Arc::clone(&wakes));
            assert_eq!(read_with(&mut io, &waker), None);
            tokio::time::advance(Duration::from_secs(1)).await;
            {
                let _polling = state.polling();
                state.request_ended();
            }
            assert_eq!(
                wakes.0.load(Ordering::Relaxed),
                0,
                "not woken from its own task"
            );
            // The check-in, armed 5 s after the read while busy, fires first.
            tokio::time::advance(Duration::from_secs(4)).await;
            assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "woken by the check-in");
            assert_eq!(
                read_with(&mut io, &waker),
                None,
                "idle for 4 s of the 5 allowed since the request ended"
            );
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(
                read_with(&mut io, &waker),
                Some(0),
                "EOF at the idle deadline"
            );
        });
        in_task.await.unwrap();
    }

    /// The timer is left set for an earlier idle deadline when a later request moves the
    /// deadline on: it fires early, is set again, and the connection lives to the new one.
    #[tokio::test(start_paused = true)]
    async fn a_later_request_moves_the_idle_deadline_though_the_timer_fires_early() {
        let (mut client, state, mut io, _gone) = a_request_in_flight().await;
        let read = |io: &mut DeadlineIo<tokio::io::DuplexStream>| read_with(io, Waker::noop());
        state.request_ended();
        assert_eq!(read(&mut io), None, "idle until 5 s");
        // A second request at 3 s, over at once: idle until 8 s.
        tokio::time::advance(Duration::from_secs(3)).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(read(&mut io).is_some_and(|n| n > 0));
        state.request_started();
        state.request_ended();
        assert_eq!(read(&mut io), None);
        // Past the first deadline: the timer set for it fired, the wait goes on.
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(read(&mut io), None, "5.5 s: idle 2.5 s of 5");
        tokio::time::advance(Duration::from_millis(2400)).await;
        assert_eq!(read(&mut io), None, "7.9 s: idle 4.9 s of 5");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(read(&mut io), Some(0), "EOF at 8 s");
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

    #[test]
    fn a_later_major_version_is_found_however_the_line_is_cut() {
        let scan = |parts: &[&[u8]]| {
            let mut t = LineTail::default();
            let mut last = LineScan::More;
            for p in parts {
                last = t.feed(&mut p.to_vec());
                if last != LineScan::More {
                    break;
                }
            }
            last
        };
        assert_eq!(scan(&[b"GET / HTTP/2.0\r\nhost: x\r\n"]), LineScan::TooNew);
        assert_eq!(scan(&[b"GET /a HTTP/3.0\n"]), LineScan::TooNew);
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\n"]), LineScan::Done);
        assert_eq!(scan(&[b"GET / HTTP/1.0\r\n"]), LineScan::Done);
        // Malformed versions are hyper's to refuse (400).
        for v in ["HTTP/2", "HTTP/2.10", "http/2.0", "HTTP/x.0", "HTTP/0.9"] {
            let line = format!("GET / {v}\r\n");
            assert_eq!(scan(&[line.as_bytes()]), LineScan::Done, "{v}");
        }
        // Cut anywhere, a long target, empty lines before the request line.
        let long = format!("GET /{} HTTP/2.0\r\n", "x".repeat(5000));
        for cut in [1, 5, 4990, 5006, 5010, 5013, 5014] {
            let (a, b) = long.as_bytes().split_at(cut);
            assert_eq!(scan(&[a, b]), LineScan::TooNew, "cut at {cut}");
        }
        assert_eq!(
            scan(&[b"\r\n", b"\r", b"\nGET / HTTP/2", b".0", b"\r", b"\n"]),
            LineScan::TooNew
        );
        assert_eq!(scan(&[b"\r\n\nGET / HTTP/2.0\r\n"]), LineScan::TooNew);
        assert_eq!(scan(&[b"\r\n\r\nGET / HTTP/1.1\r\n"]), LineScan::Done);
        // A version token complete before the line ends is judged then (hyper refuses it
        // then); a shorter cut is not (`HTTP/2` then `\r\n` is malformed: hyper's 400).
        assert_eq!(scan(&[b"GET / HTTP/2.0"]), LineScan::TooNew);
        assert_eq!(scan(&[b"GET / HTTP/3.1\r"]), LineScan::TooNew);
        assert_eq!(scan(&[b"GET / HTTP/1.1"]), LineScan::More);
        assert_eq!(scan(&[b"GET / HTTP/1.1\r"]), LineScan::More);
        assert_eq!(scan(&[b"GET / HTTP/2"]), LineScan::More);
        assert_eq!(scan(&[b"GET / HTTP/2."]), LineScan::More);
        assert_eq!(scan(&[b"GET /x", b" HTTP/2", b".0"]), LineScan::TooNew);
        // Whole in one read (judged where it lies), however long, with or without what
        // follows it; and empty lines whose request line is cut after them.
        assert_eq!(scan(&[long.as_bytes()]), LineScan::TooNew);
        let long_ok = long.replace("HTTP/2.0", "HTTP/1.1");
        assert_eq!(scan(&[long_ok.as_bytes()]), LineScan::Done);
        assert_eq!(scan(&[b"GET / HTTP/2.0\nhost: x\n\n"]), LineScan::TooNew);
        assert_eq!(scan(&[b"\r\nGET / HT", b"TP/2.0\r\n"]), LineScan::TooNew);
        assert_eq!(
            scan(&[b"\r\n", b"\r\n", b"GET / HTTP/2.0\r\n"]),
            LineScan::TooNew
        );
        assert_eq!(scan(&[b"\r\n", b"GET / HTTP/1.1\r\n"]), LineScan::Done);
        // A line cut just before its `\n`: the `\r` is the tail's, not the version's.
        assert_eq!(scan(&[b"GET / HTTP/2.0\r", b"\n"]), LineScan::TooNew);
        assert_eq!(scan(&[b"GET / HTTP/1.1\r", b"\n"]), LineScan::Done);
    }

    /// A later minor version of HTTP/1 is made `HTTP/1.1` in the bytes hyper is given, where
    /// its digit lies in them (RFC 9112 §2.3), however the line is cut; other lines and the
    /// bytes after the line are left as they are.
    #[test]
    fn a_later_minor_version_is_made_1_1_where_it_lies() {
        // The reads as hyper gets them, after the line was fed through.
        let fed = |parts: &[&[u8]]| {
            let mut t = LineTail::default();
            let mut out = Vec::new();
            let mut done = false;
            for p in parts {
                let mut read = p.to_vec();
                if !done {
                    done = t.feed(&mut read) != LineScan::More;
                }
                out.extend_from_slice(&read);
            }
            String::from_utf8(out).unwrap()
        };
        let line = "GET /a HTTP/1.2\r\nhost: x.2\r\n\r\n";
        let mended = "GET /a HTTP/1.1\r\nhost: x.2\r\n\r\n";
        for cut in 0..=line.len() {
            let (a, b) = line.as_bytes().split_at(cut);
            // The token is judged in the read that completes it, so its digit is always there.
            assert_eq!(fed(&[a, b]), mended, "cut at {cut}");
        }
        assert_eq!(fed(&[b"\r\nGET / HTTP/1.9\n\n"]), "\r\nGET / HTTP/1.1\n\n");
        assert_eq!(
            fed(&[b"GET / HT", b"TP/1.", b"5", b"\r\n"]),
            "GET / HTTP/1.1\r\n"
        );
        for same in [
            "GET / HTTP/1.1\r\n",
            "GET / HTTP/1.0\r\n",
            "GET / HTTP/2.0\r\n",
            "GET / HTTP/1.12\r\n",
            "GET / HTTP/1.2x\r\n",
            "GET /HTTP/1.2\r\n",
            "GET / HTTP/1.1\r\nx: HTTP/1.2\r\n",
        ] {
            assert_eq!(fed(&[same.as_bytes()]), same);
        }
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

    /// Frames with no stream to show for them (a PING every so often, a header block dripped
    /// in CONTINUATION frames) do not keep an HTTP/2 connection: it is closed `keep_alive`
    /// after the accept (or its last stream's end) whatever bytes came meanwhile.
    #[tokio::test(start_paused = true)]
    async fn http2_frames_without_a_stream_do_not_hold_the_connection() {
        let (mut client, server) = duplex(1024);
        let (mut io, _gone) = DeadlineIo::new(server, Arc::default(), D);
        let accepted = Instant::now();
        client.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        // A PING frame (8 bytes of payload) every tenth of the keep-alive limit.
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut frames = 0;
        loop {
            tokio::time::sleep(D.keep_alive / 10).await;
            // Bounded: the limit passes after ten.
            assert!(frames <= 20, "the connection was held");
            if client.write_all(&ping).await.is_err() {
                break;
            }
            assert_eq!(io.read(&mut buf).await.unwrap(), ping.len());
            frames += 1;
            // Waits for more, as hyper does: EOF once the limit has passed.
            if read_with(&mut io, Waker::noop()) == Some(0) {
                break;
            }
        }
        assert_eq!(accepted.elapsed(), D.keep_alive);
    }
}
