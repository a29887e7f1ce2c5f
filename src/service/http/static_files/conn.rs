//! The connection loop: wait for a request, read its head within the limits, answer it,
//! keep the connection alive or close it gracefully.
//!
//! Per connection ([`serve`]): wait for the first byte of a request (`header_timeout` for the
//! first, `keep_alive` between requests; an idle connection closes at once when the worker
//! begins a graceful stop), then read the head within `header_timeout` (408 otherwise), answer,
//! and loop. Responses are written in request order, so pipelined requests are answered as they
//! come. An idle connection holds no buffer: memory is taken when bytes arrive.
//!
//! What to answer is [`super::resolve`]'s business, how bytes go out [`super::response`]'s.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use http::{Method, StatusCode};

use super::StaticService;
use super::request::Head;
use super::request::{self, HeadError};
use super::resolve;
use super::response::Sent;
use super::response::{OnShort, Reply};
use super::wire::{self, Fresh, Wire};
use crate::net::Stream;
use crate::service::ConnContext;
use crate::service::http::access_log::{HeaderValues, Record, RequestLine};
use crate::service::http::{LINGER, LINGER_BUF, LINGER_READS};
use crate::service::park::Spot;
use crate::service::reclaim::{IdleClass, Reclaim};

/// Read at least this much room when a head arrives.
const READ_CHUNK: usize = 4096;

/// Read buffers kept per worker thread between requests. An idle connection holds no buffer,
/// so each request used to allocate and free 4 KiB (beyond glibc's per-thread cache, which
/// stops at 1 KiB); a few pooled buffers cover the requests one thread has in progress at
/// once, and cost at most 64 KiB per worker.
const POOLED_BUFFERS: usize = 16;

thread_local! {
    static BUFFERS: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`READ_CHUNK`] bytes, pooled if one is free.
fn take_buffer() -> BytesMut {
    let mut buf = BUFFERS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK));
    buf.reserve(READ_CHUNK);
    buf
}

/// Returns a buffer no longer needed to the pool (if it is of the usual size and there is
/// room), else frees it.
fn give_back(mut buf: BytesMut) {
    buf.clear();
    // Only the usual size: an empty one is not worth keeping, one grown for a large head is
    // not kept.
    if buf.capacity() == 0 || buf.capacity() > 4 * READ_CHUNK {
        return;
    }
    BUFFERS.with_borrow_mut(|pool| {
        if pool.len() < POOLED_BUFFERS {
            pool.push(buf);
        }
    });
}

/// Serves HTTP on one connection until the client closes, a timeout, an error, or a graceful
/// stop finds it idle.
///
/// # Errors
/// I/O errors; they end this connection only.
///
/// Not an `async fn`: the future is [`serve_at`]'s own, without a wrapper's copy of the stream.
pub fn serve<'a>(
    stream: Stream,
    ctx: &'a ConnContext,
    svc: &'a StaticService,
) -> impl Future<Output = io::Result<()>> + 'a {
    serve_at(stream, ctx, svc, Spot::none(), None)
}

/// [`serve`], parking a kept-alive connection at `spot` while it waits for its next request
/// ([`crate::service::park`]); a parked connection's task ends here, and it carries on here
/// again with `resumed`, the keep-alive deadline it parked with.
///
/// # Errors
/// As [`serve`].
pub async fn serve_at(
    mut stream: Stream,
    ctx: &ConnContext,
    svc: &StaticService,
    spot: Spot<'_>,
    mut resumed: Option<tokio::time::Instant>,
) -> io::Result<()> {
    let cfg = &svc.config;
    let mut buf = BytesMut::new();
    let mut first = resumed.is_none();
    loop {
        // Wait for the next request's first byte without holding a buffer.
        if buf.is_empty() {
            let wait = if first {
                cfg.header_timeout
            } else {
                cfg.keep_alive
            };
            let now = tokio::time::Instant::now();
            let mut deadline = resumed.take().unwrap_or(now + wait);
            let mut stop = (!ctx.stop.is_cancelled()).then_some(&ctx.stop);
            if stop.is_none() {
                deadline = deadline.min(now + STOP_GRACE);
            }
            // A kept-alive connection idle for a while parks: its task ends, and it costs only
            // its record until its client sends again (or its deadline closes it).
            let park_at = match stop {
                Some(_) if !first => spot.park_at(now, Some(deadline)),
                _ => None,
            };
            // The wait's timer: the moment to park, if the connection may (always before the
            // deadline), else the deadline.
            let mut parking = park_at.is_some();
            let mut wake_at = park_at.unwrap_or(deadline);
            // While it waits, the connection may be closed to admit a new client at the
            // worker's cap: a served one first, then one that never sent a request.
            ctx.reclaim.set_idle(if first {
                IdleClass::NoRequest
            } else {
                IdleClass::KeptAlive
            });
            loop {
                match wait_for_request(&stream, wake_at, parking, stop, &ctx.reclaim).await? {
                    Wake::Readable => {}
                    // Nothing sent at all, or closed to make room: close quietly, as nginx does.
                    Wake::Timeout | Wake::Evicted => return Ok(()),
                    // The worker is stopping and this connection is idle. Closing it this very
                    // moment races a request the client may be sending (it would see a reset
                    // and count a failed request); a short grace lets such a request in, to be
                    // answered with `Connection: close`, while a truly idle client is closed
                    // within the grace.
                    Wake::Stop => {
                        stop = None;
                        parking = false;
                        deadline = deadline.min(tokio::time::Instant::now() + STOP_GRACE);
                        wake_at = deadline;
                    }
                    Wake::Park => {
                        parking = false;
                        wake_at = deadline;
                        match spot.park(stream, Some(deadline), true) {
                            Ok(_) => return Ok(()),
                            // Not now (the worker is full or stopping): wait on in this task.
                            Err(s) => stream = s,
                        }
                        continue;
                    }
                }
                // Take what is there now. Readiness can be stale (set by an earlier read); then
                // this is Pending, and the wait goes on to the same deadline, so the head's own
                // timeout only starts with a real first byte. (One poll of `poll_read`, not
                // `try_read`: a short read through `poll_read` also clears stale readiness, so
                // the next idle wait does not begin with a wasted `read`.)
                if buf.capacity() < READ_CHUNK {
                    buf = take_buffer();
                }
                let read = std::future::poll_fn(|cx| {
                    Poll::Ready(tokio_util::io::poll_read_buf(
                        std::pin::Pin::new(&mut stream),
                        cx,
                        &mut buf,
                    ))
                })
                .await;
                match read {
                    Poll::Ready(Ok(0)) => return Ok(()),
                    Poll::Ready(Ok(_)) => {
                        ctx.reclaim.set_busy();
                        break;
                    }
                    // Give the buffer back while waiting on: idle connections hold none.
                    Poll::Pending => give_back(std::mem::take(&mut buf)),
                    Poll::Ready(Err(e)) => return Err(e),
                }
            }
        }
        // Boxed: a request's state (head, reply, timers) lives on the heap only while a request
        // is in progress, so an idle kept-alive connection costs a small future, not the
        // largest state of the whole exchange.
        let next = Box::pin(exchange(&mut stream, &mut buf, ctx, svc)).await?;
        if !matches!(next, Next::KeepAlive) {
            return end(stream, &mut buf, next).await;
        }
        first = false;
        // Drop the buffer between requests unless a pipelined request is already in it.
        if buf.is_empty() {
            give_back(std::mem::take(&mut buf));
        }
    }
}

/// Serves a TCP connection just accepted and not yet registered with the runtime (the socket
/// non-blocking): if its request is already there, as it is for most short connections under
/// load, it is read and answered on the descriptor itself ([`Fresh`]), and a connection that
/// ends there (`Connection: close`, HTTP/1.0) is closed without the runtime ever watching it:
/// no `epoll_ctl`, no wait, and no task when the accept loop polls this in place
/// ([`crate::service::Serve::serve_fresh`]). Anything that would block registers it, with the
/// bytes and the exchange in progress kept as they are, and from its first idle wait on it is
/// served by [`serve_at`]. The request goes through the same `exchange` either way, so
/// limits, timeouts, the access log and the counters are the same.
///
/// # Errors
/// As [`serve`].
pub async fn serve_fresh(
    sock: std::net::TcpStream,
    ctx: &ConnContext,
    svc: &StaticService,
    spot: Spot<'_>,
) -> io::Result<()> {
    let mut buf = take_buffer();
    match wire::recv_buf(&sock, &mut buf) {
        // Connected and closed without a request: closed quietly, as `serve_at` does.
        Ok(0) => {
            give_back(buf);
            return Ok(());
        }
        Ok(_) => {}
        // Nothing yet: wait for it as for any connection (one `recv` spent on finding out).
        // Looking once more after the runtime's other ready work (the rest of the accept
        // queue) found the request in too few more cases to pay for the `recv`: on a loaded
        // machine, 53 % of the benchmark's short connections still had to wait, against 55 %.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            give_back(buf);
            let stream = Fresh::new(sock).into_stream()?;
            return serve_at(stream, ctx, svc, spot, None).await;
        }
        Err(e) => return Err(e),
    }
    // A new connection is busy (never closed for a newcomer) until it first waits idle.
    let mut fresh = Fresh::new(sock);
    loop {
        // Boxed for the same reason as in `serve_at`.
        match Box::pin(exchange(&mut fresh, &mut buf, ctx, svc)).await? {
            // A pipelined request (begun) is answered at once, as `serve_at` would.
            Next::KeepAlive if !buf.is_empty() => {}
            Next::KeepAlive => break,
            next => return end(fresh, &mut buf, next).await,
        }
    }
    give_back(buf);
    // Kept alive: the rest of its life is `serve_at`'s, starting with the wait for its next
    // request (the keep-alive wait, as after any exchange there).
    let deadline = tokio::time::Instant::now() + svc.config.keep_alive;
    serve_at(fresh.into_stream()?, ctx, svc, spot, Some(deadline)).await
}

/// Ends a connection after an exchange that did not keep it alive (`next` is not
/// [`Next::KeepAlive`]): its buffer goes back to the pool, or every short connection would pay
/// a 4 KiB `malloc` and `free` (past glibc's per-thread cache, so each also consolidated the
/// heap's fast bins); then it closes at once or lingers.
///
/// # Errors
/// As [`linger`].
async fn end<W: Wire>(stream: W, buf: &mut BytesMut, next: Next) -> io::Result<()> {
    let pending = !buf.is_empty();
    give_back(std::mem::take(buf));
    match next {
        // Nothing more from the client in our buffer or the kernel's: nothing to discard, so
        // closing cannot reset the response; skip the lingering (as nginx does when no more
        // data is expected). One `read` attempt instead of a shutdown, a wait for the client's
        // FIN and a timer: a third of a short connection's syscalls. A client that ended the
        // connection itself (`Connection: close`, or HTTP/1.0 without keep-alive) sends
        // nothing after this request (RFC 9112 §9.6: it MUST NOT), so with nothing buffered
        // there is nothing to look for; the `read` attempt is for closes the client did not
        // ask for (a stopping worker, keep-alive off), where its next request may be on its
        // way.
        Next::Finished { client_closes } if !pending && client_closes => Ok(()),
        Next::Finished { .. } if !pending && nothing_pending(stream.fd()) => Ok(()),
        Next::Close | Next::Finished { .. } => Box::pin(linger(stream)).await,
        Next::Abort | Next::KeepAlive => Ok(()),
    }
}

/// What to do with a connection after one exchange.
enum Next {
    /// Wait for the next request.
    KeepAlive,
    /// Close gracefully (after a final response).
    Close,
    /// Close after a final response to a request without a body: gracefully only if the
    /// client sent more.
    Finished {
        /// The client asked for the close itself (its request said the connection ends).
        client_closes: bool,
    },
    /// Close at once: the peer is gone or the response was cut short.
    Abort,
}

/// Reads one request head (the first bytes may already be in `buf`) and answers it.
async fn exchange<W: Wire>(
    stream: &mut W,
    buf: &mut BytesMut,
    ctx: &ConnContext,
    svc: &StaticService,
) -> io::Result<Next> {
    let cfg = &svc.config;
    // The head's deadline, set the first time the head is found incomplete: at once, unless
    // what was read already holds it whole, as it usually does, and then the clock is not read
    // at all (one read fewer per request, of about eight; parsing takes microseconds).
    let mut deadline: Option<tokio::time::Instant> = None;
    let head = loop {
        match request::parse(buf, &svc.limits, svc.logged_request_headers()) {
            Ok(Some((head, n))) => {
                buf.advance(n);
                break head;
            }
            Ok(None) => {}
            Err(err) => {
                if let HeadError::Bad(why) = err {
                    tracing::debug!(peer = %ctx.peer, why, "bad request");
                }
                let started = Instant::now();
                let reply = Reply::error(err.status()).closing(true);
                let sent = reply.send(stream, ctx, OnShort::SendShort).await;
                log_access(svc, ctx, None, &reply, sent.as_ref().ok(), started);
                return Ok(Next::Close);
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let until =
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + cfg.header_timeout);
        match tokio::time::timeout_at(until, stream.read_buf(buf)).await {
            Ok(Ok(0)) => return Ok(Next::Abort),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            // The deadline passed with nothing buffered (a pipelined exchange ended exactly at
            // a request boundary and the client went quiet): no head begun, no 408.
            Err(_) if buf.is_empty() => return Ok(Next::Abort),
            Err(_) => {
                let started = Instant::now();
                let reply = Reply::error(StatusCode::REQUEST_TIMEOUT).closing(true);
                let sent = reply.send(stream, ctx, OnShort::SendShort).await;
                log_access(svc, ctx, None, &reply, sent.as_ref().ok(), started);
                return Ok(Next::Close);
            }
        }
    };
    let started = Instant::now();
    // Close after this response when the client asks, when it sent a body we will not read,
    // when keep-alive is off, or when the worker is stopping.
    let close =
        !head.keep_alive || head.has_body || cfg.keep_alive.is_zero() || ctx.stop.is_cancelled();
    let head_only = head.method == Method::HEAD;
    // A body that comes up short while still unsent (it is read before anything is written)
    // means the file changed between fstat and read: answer once more from a fresh fstat
    // rather than promise a length we cannot deliver. A second shortfall is sent short.
    // Either way the cache stops trusting the length it served (with `open_file_cache_valid`
    // it would otherwise answer from it again, and fall short again, until the window ends).
    let mut on_short = OnShort::Retry;
    // The request's start stands for "now" in the open-file cache; a second answer reads the
    // clock again.
    let mut now = started;
    let (reply, sent) = loop {
        let reply = resolve::respond_at(&head, svc, now)
            .closing(close)
            .head_only(head_only);
        let sent = reply.send(stream, ctx, on_short).await;
        if let (Ok(s), Some(file)) = (&sent, &reply.file)
            && (s.unsent || !s.complete)
        {
            svc.distrust(file);
        }
        match sent {
            Ok(s) if s.unsent => {
                on_short = OnShort::SendShort;
                now = Instant::now();
            }
            _ => break (reply, sent),
        }
    };
    ctx.metrics.request(reply.status, started.elapsed());
    log_access(svc, ctx, Some(&head), &reply, sent.as_ref().ok(), started);
    match sent? {
        // The file shrank under us: cut short, the client sees fewer bytes than promised.
        s if !s.complete => Ok(Next::Abort),
        _ if close && !head.has_body => Ok(Next::Finished {
            client_closes: !head.keep_alive,
        }),
        _ if close => Ok(Next::Close),
        _ => Ok(Next::KeepAlive),
    }
}

/// True when the client has sent nothing that is still unread: a non-blocking peek finds
/// nothing, or the client's FIN. A real `recv` (not tokio's `try_read`, which answers from
/// readiness the runtime may not have updated yet), so bytes that arrived a moment ago are
/// seen and the connection lingers for them.
fn nothing_pending(fd: std::os::fd::RawFd) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut probe = [0u8; 1];
    match recv(fd, &mut probe, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e == nix::errno::Errno::EAGAIN,
    }
}

/// How long an idle kept-alive connection stays open once a graceful stop begins: long enough
/// for a request already on its way to arrive (and be answered with `Connection: close`).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why an idle connection woke up.
enum Wake {
    /// Bytes (or EOF) to read.
    Readable,
    /// The deadline passed in silence.
    Timeout,
    /// The worker began a graceful stop.
    Stop,
    /// The worker closes this idle connection to admit a new client at its cap.
    Evicted,
    /// It has waited long enough to park.
    Park,
}

/// Waits for the first byte of a request, `wake_at` (the moment to park if `parking`, else the
/// deadline) or the stop, whichever comes first.
///
/// Hand-polled rather than `select!` over `timeout(stream.readable())`: `poll_read_ready` keeps
/// its waker in the socket's own slot, where `readable()` needs a waiter node stored in the
/// future. This future is what every idle kept-alive connection in a task holds. Readiness is
/// checked first: bytes that arrived before a stop are a request begun, and are served (with
/// `Connection: close`) rather than cut. A request that comes first never registers the timer.
async fn wait_for_request(
    stream: &Stream,
    wake_at: tokio::time::Instant,
    parking: bool,
    stop: Option<&tokio_util::sync::CancellationToken>,
    reclaim: &Reclaim,
) -> io::Result<Wake> {
    let sleep = tokio::time::sleep_until(wake_at);
    let cancelled = async {
        match stop {
            Some(stop) => stop.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep, cancelled);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = stream.poll_read_ready(cx) {
            return Poll::Ready(r.map(|()| Wake::Readable));
        }
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(Wake::Stop));
        }
        if reclaim.poll_evicted(cx).is_ready() {
            return Poll::Ready(Ok(Wake::Evicted));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(if parking { Wake::Park } else { Wake::Timeout }));
        }
        Poll::Pending
    })
    .await
}

/// Closes after a final response the way nginx's lingering close does: shut our side, then read
/// and discard for a moment. Closing with unread bytes (a body we did not want, a pipelined
/// request) would send RST, which can destroy the response still in flight to the client.
async fn linger<W: Wire>(mut stream: W) -> io::Result<()> {
    let _ = stream.shutdown().await;
    // On the heap: an array here would sit in every connection's future, idle or not.
    let mut sink = vec![0u8; LINGER_BUF];
    let until = tokio::time::Instant::now() + LINGER;
    for _ in 0..LINGER_READS {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}

/// Writes the access-log line for one exchange (`reply` answered `head`), if the service
/// keeps a log.
fn log_access(
    svc: &StaticService,
    ctx: &ConnContext,
    head: Option<&Head>,
    reply: &Reply,
    sent: Option<&Sent>,
    started: Instant,
) {
    let Some(log) = &svc.access_log else {
        return;
    };
    let response_headers = ReplyHeaders {
        names: log.format().response_headers(),
        lines: &reply.headers,
    };
    let status = reply.status;
    log.log(&Record {
        peer: &ctx.peer,
        request: head.map(|h| RequestLine {
            method: &h.method,
            target: &h.target,
            version: if h.minor == 0 {
                http::Version::HTTP_10
            } else {
                http::Version::HTTP_11
            },
        }),
        status,
        body_bytes: sent.map(|s| s.body),
        referer: head.and_then(|h| h.referer.as_deref()),
        user_agent: head.and_then(|h| h.user_agent.as_deref()),
        request_headers: head.map(|h| &h.logged as &dyn HeaderValues),
        response_headers: Some(&response_headers),
        elapsed: started.elapsed(),
    });
}

/// A reply's own header lines (`Name: value\r\n` each: what `resolve` set, not the framing
/// [`Reply::send`] adds) as the access log's `%({name}o)s` atoms read them.
#[derive(Debug)]
struct ReplyHeaders<'a> {
    /// The format's [`LogFormat::response_headers`](crate::service::http::access_log::LogFormat::response_headers).
    names: &'a [http::HeaderName],
    lines: &'a str,
}

impl HeaderValues for ReplyHeaders<'_> {
    fn each_value(&self, index: usize, each: &mut dyn FnMut(&[u8])) {
        let Some(name) = self.names.get(index) else {
            return;
        };
        for line in self.lines.split("\r\n") {
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name.as_str())
            {
                each(v.trim().as_bytes());
            }
        }
    }
}

/// [`serve_fresh`] in-process, where the test decides what the client has sent by the time the
/// connection is served: answered within one poll when the request is there (what lets the
/// accept loop skip the task and the runtime's registration), carried on by the runtime when
/// it is not, and the same answers, limits and access log either way.
#[cfg(test)]
mod fresh {
    use std::future::Future;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::task::Poll;
    use std::time::Duration;

    use super::serve_fresh;
    use crate::service::ConnContext;
    use crate::service::http::static_files::StaticService;
    use crate::service::park::Spot;
    use crate::service::test_support::{runtime, static_config};

    /// The service over a root holding `a.txt` ("hello\n"), with usual limits, and an access
    /// log in `dir/access.log`.
    fn service(dir: &std::path::Path) -> StaticService {
        let root = dir.join("www");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.txt"), "hello\n").unwrap();
        let mut cfg = static_config(&root);
        cfg.limit_request_line = 4094;
        cfg.limit_request_fields = 100;
        cfg.limit_request_field_size = 8190;
        cfg.access_logfile = Some(dir.join("access.log"));
        StaticService::open(&cfg).unwrap()
    }

    /// A connection as the accept loop hands it over (the server's end non-blocking), after
    /// the client sent `first`.
    fn accepted_after(first: &[u8]) -> (std::net::TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(first).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        // Loopback queues what was written before `write` returns; wait for it all the same.
        let mut probe = vec![0u8; first.len().max(1)];
        for _ in 0..500 {
            if first.is_empty() || server.peek(&mut probe).unwrap_or(0) >= first.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (server, client)
    }

    fn ctx() -> ConnContext {
        ConnContext::detached(
            crate::net::Peer::Tcp("127.0.0.1:1".parse().unwrap()),
            Default::default(),
        )
    }

    /// Everything the client receives until the server closes.
    fn read_to_end(mut client: TcpStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Polls `fut` once: true when it finished within that poll.
    async fn done_in_one_poll(fut: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        let mut fut = fut;
        std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_ready())).await
    }

    fn statuses(text: &str) -> Vec<&str> {
        text.match_indices("HTTP/1.1 ")
            .map(|(i, _)| &text[i + 9..i + 12])
            .collect()
    }

    /// Serves `sock` as a fresh connection: true when it was answered and ended within the
    /// first poll.
    fn served_in_one_poll(svc: &StaticService, sock: std::net::TcpStream) -> bool {
        runtime().block_on(async {
            let ctx = ctx();
            let fut =
                std::pin::pin!(async { serve_fresh(sock, &ctx, svc, Spot::none()).await.unwrap() });
            done_in_one_poll(fut).await
        })
    }

    /// Serves `sock` as a fresh connection that must still be waiting after its first poll,
    /// runs `client` (the peer's next moves) on a blocking thread meanwhile, and returns what
    /// `client` returned once both have ended.
    fn serve_while<T: Send + 'static>(
        svc: &StaticService,
        sock: std::net::TcpStream,
        client: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        runtime().block_on(async {
            let ctx = ctx();
            let mut fut =
                std::pin::pin!(async { serve_fresh(sock, &ctx, svc, Spot::none()).await.unwrap() });
            assert!(!done_in_one_poll(fut.as_mut()).await);
            let client = tokio::task::spawn_blocking(client);
            let (got, ()) = tokio::join!(async { client.await.unwrap() }, fut);
            got
        })
    }

    /// `Connection: close` with the request there: answered and closed within one poll, the
    /// access log written.
    #[test]
    fn a_request_already_there_is_answered_and_closed_within_one_poll() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let (sock, client) =
            accepted_after(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert!(served_in_one_poll(&svc, sock));
        let got = read_to_end(client);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("Connection: close\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nhello\n"), "{got}");
        let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(log.contains("\"GET /a.txt HTTP/1.1\" 200 6"), "{log}");
    }

    /// HTTP/1.0 without keep-alive closes after its answer, within one poll too.
    #[test]
    fn http_1_0_is_answered_and_closed_within_one_poll() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let (sock, client) = accepted_after(b"GET /a.txt HTTP/1.0\r\n\r\n");
        assert!(served_in_one_poll(&svc, sock));
        let got = read_to_end(client);
        assert_eq!(statuses(&got), ["200"]);
        assert!(got.contains("Connection: close\r\n") && got.ends_with("hello\n"));
    }

    /// Pipelined requests on a fresh connection are answered in order, all within the poll
    /// when they are all there.
    #[test]
    fn pipelined_requests_on_a_fresh_connection_are_answered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let (sock, client) = accepted_after(
            b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /none HTTP/1.1\r\nHost: t\r\n\r\n\
              HEAD /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert!(served_in_one_poll(&svc, sock));
        let got = read_to_end(client);
        assert_eq!(statuses(&got), ["200", "404", "200"]);
        let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
        assert_eq!(log.lines().count(), 3, "{log}");
    }

    /// A kept-alive first request is answered at once; the connection then waits (as a task
    /// would) for its next request, which is answered the usual way.
    #[test]
    fn a_kept_alive_first_request_is_answered_then_the_connection_waits() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let (sock, mut client) = accepted_after(b"GET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        let (first, client) = serve_while(&svc, sock, move || {
            let mut buf = vec![0u8; 4096];
            let n = client.read(&mut buf).unwrap();
            let first = String::from_utf8(buf[..n].to_vec()).unwrap();
            client
                .write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            (first, client)
        });
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(first.contains("Connection: keep-alive\r\n"), "{first}");
        let second = read_to_end(client);
        assert_eq!(statuses(&second), ["200"]);
        assert!(second.contains("Connection: close\r\n"));
    }

    /// A head split over two packets, the second arriving after the accept: the connection
    /// waits for the rest within the header timeout, then answers it.
    #[test]
    fn a_head_split_over_two_packets_is_completed_then_answered() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let (sock, mut client) = accepted_after(b"GET /a.txt HTTP/1.1\r\nHo");
        let client = serve_while(&svc, sock, move || {
            std::thread::sleep(Duration::from_millis(20));
            client
                .write_all(b"st: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            client
        });
        let got = read_to_end(client);
        assert_eq!(statuses(&got), ["200"]);
        assert!(got.ends_with("hello\n"));
    }

    /// Nothing sent yet: the connection waits for its request as any other would.
    #[test]
    fn a_connection_without_its_request_yet_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let (sock, mut client) = accepted_after(b"");
        let client = serve_while(&svc, sock, move || {
            std::thread::sleep(Duration::from_millis(20));
            client.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap();
            client
        });
        assert_eq!(statuses(&read_to_end(client)), ["200"]);
    }

    /// The limits hold on the first request as on any: an over-long request line gets 414
    /// and the connection closes, within the poll; one that closes without a request gets
    /// nothing.
    #[test]
    fn limits_hold_on_the_first_request() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(5000));
        let (sock, client) = accepted_after(long.as_bytes());
        runtime().block_on(async {
            let ctx = ctx();
            let fut = std::pin::pin!(async {
                serve_fresh(sock, &ctx, &svc, Spot::none()).await.unwrap()
            });
            // Lingers for the unread rest of the head, so not necessarily within the poll.
            fut.await;
        });
        let got = read_to_end(client);
        assert_eq!(statuses(&got), ["414"]);
        assert!(got.contains("Connection: close\r\n"));

        let (sock, client) = accepted_after(b"");
        client.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(served_in_one_poll(&svc, sock));
        assert_eq!(read_to_end(client), "");
    }
}
