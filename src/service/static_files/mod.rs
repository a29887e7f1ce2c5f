//! `static`: files under a directory over HTTP/1.1 (and 1.0), keep-alive and pipelining.
//!
//! A small hand-written HTTP path rather than hyper: a file server reads one head, answers from
//! the filesystem and never reads a body, so the whole protocol surface is the head parser
//! ([`request`], on `httparse`), the path rules ([`path`], [`files`]) and a response writer
//! that sends headers and small files in one `write` and large files with `sendfile(2)`.
//!
//! Per connection ([`serve`]): wait for the first byte of a request (`header_timeout` for the
//! first, `keep_alive` between requests; an idle connection closes at once when the worker
//! begins a graceful stop), then read the head within `header_timeout` (408 otherwise), answer,
//! and loop. Responses are written in request order, so pipelined requests are answered as they
//! come. An idle connection holds no buffer: memory is taken when bytes arrive.
//!
//! A response's length is fixed from `fstat` on the descriptor we keep open; `sendfile` sends
//! at most that, and if the file shrank under us the connection is closed short, which every
//! client detects against Content-Length. A renamed-over or deleted file is still sent whole
//! from the open descriptor.

pub mod files;
pub mod listing;
pub mod path;
pub mod range;
pub mod request;

use std::fmt::Write as _;
use std::fs::File;
use std::future::Future;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Instant, SystemTime};

use bytes::{Buf, BytesMut};
use rustix::fs::FileType;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

use self::files::{OpenError, Opened};
use self::range::Ranges;
use self::request::{Head, HeadError, Limits, Method};
use super::reclaim::IdleClass;
use super::{ConnContext, idle};
use crate::config::StaticConfig;
use crate::net::{Peer, Stream};

/// Bodies up to this size are read into the response buffer and sent with the headers in one
/// `write`; larger ones go out with `sendfile`.
pub const INLINE_BODY: u64 = 64 * 1024;

/// Read at least this much room when a head arrives.
const READ_CHUNK: usize = 4096;

/// The `static` service, as opened in one worker.
#[derive(Debug)]
pub struct StaticService {
    config: StaticConfig,
    limits: Limits,
    /// The root directory (`O_PATH`), the anchor of every `openat2`. Opened after fork, so each
    /// worker has its own; closed with the service.
    root_fd: OwnedFd,
    /// The access log (`O_APPEND`, one `write` per line, so workers' lines never interleave).
    /// Behind a lock only so USR1 can swap in a reopened file; the runtime is single-threaded,
    /// so it is never contended.
    access_log: Option<Mutex<File>>,
    /// Open regular files, revalidated with `fstat` (see [`files::FileCache`]).
    cache: files::FileCache,
}

impl StaticService {
    /// Opens the root and the access log in a freshly booted worker.
    ///
    /// # Errors
    /// If either cannot be opened; the worker then fails to boot with the reason logged.
    pub fn open(config: &StaticConfig) -> io::Result<StaticService> {
        let root_fd = files::open_root(&config.root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", config.root.display()),
            )
        })?;
        let access_log = match &config.access_logfile {
            None => None,
            Some(p) if p.as_os_str() == "-" => {
                Some(File::from(io::stdout().as_fd().try_clone_to_owned()?))
            }
            Some(p) => Some(open_log(p)?),
        }
        .map(Mutex::new);
        Ok(StaticService {
            limits: Limits {
                request_line: config.limit_request_line,
                fields: config.limit_request_fields,
                field_size: config.limit_request_field_size,
            },
            config: config.clone(),
            root_fd,
            access_log,
            cache: files::FileCache::for_fd_limit(),
        })
    }
}

impl StaticService {
    /// Reopens the access log file (USR1, after logrotate moved it); stdout is left alone.
    ///
    /// # Errors
    /// If the file cannot be opened; the old one stays in use.
    pub fn reopen_logs(&self) -> io::Result<()> {
        if let (Some(log), Some(path)) = (&self.access_log, &self.config.access_logfile)
            && path.as_os_str() != "-"
        {
            let fresh = open_log(path)?;
            *log.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        Ok(())
    }
}

/// Opens an access log for appending, creating it.
fn open_log(path: &std::path::Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
}

/// Serves HTTP on one connection until the client closes, a timeout, an error, or a graceful
/// stop finds it idle.
///
/// # Errors
/// I/O errors; they end this connection only.
pub async fn serve(mut stream: Stream, ctx: &ConnContext, svc: &StaticService) -> io::Result<()> {
    let cfg = &svc.config;
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        // Wait for the next request's first byte without holding a buffer.
        if buf.is_empty() {
            let wait = if first {
                cfg.header_timeout
            } else {
                cfg.keep_alive
            };
            let mut deadline = tokio::time::Instant::now() + wait;
            let mut stop = (!ctx.stop.is_cancelled()).then_some(&ctx.stop);
            if stop.is_none() {
                deadline = deadline.min(tokio::time::Instant::now() + STOP_GRACE);
            }
            // While it waits, the connection may be closed to admit a new client at the
            // worker's cap: a served one first, then one that never sent a request.
            ctx.reclaim.set_idle(if first {
                IdleClass::NoRequest
            } else {
                IdleClass::KeptAlive
            });
            loop {
                match wait_for_request(&stream, deadline, stop, &ctx.reclaim).await? {
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
                        deadline = deadline.min(tokio::time::Instant::now() + STOP_GRACE);
                    }
                }
                // Take what is there now. Readiness can be stale (set by an earlier read); then
                // this is Pending, and the wait goes on to the same deadline, so the head's own
                // timeout only starts with a real first byte. (One poll of `poll_read`, not
                // `try_read`: a short read through `poll_read` also clears stale readiness, so
                // the next idle wait does not begin with a wasted `read`.)
                buf.reserve(READ_CHUNK);
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
                    Poll::Pending => buf = BytesMut::new(),
                    Poll::Ready(Err(e)) => return Err(e),
                }
            }
        }
        // Boxed: a request's state (head, reply, timers) lives on the heap only while a request
        // is in progress, so an idle kept-alive connection costs a small future, not the
        // largest state of the whole exchange.
        match Box::pin(exchange(&mut stream, &mut buf, ctx, svc)).await? {
            Next::KeepAlive => {}
            Next::Close => return Box::pin(linger(stream)).await,
            Next::Abort => return Ok(()),
        }
        first = false;
        // Drop the buffer between requests unless a pipelined request is already in it.
        if buf.is_empty() {
            buf = BytesMut::new();
        }
    }
}

/// What to do with a connection after one exchange.
enum Next {
    /// Wait for the next request.
    KeepAlive,
    /// Close gracefully (after a final response).
    Close,
    /// Close at once: the peer is gone or the response was cut short.
    Abort,
}

/// Reads one request head (the first bytes may already be in `buf`) and answers it.
async fn exchange(
    stream: &mut Stream,
    buf: &mut BytesMut,
    ctx: &ConnContext,
    svc: &StaticService,
) -> io::Result<Next> {
    let cfg = &svc.config;
    let deadline = tokio::time::Instant::now() + cfg.header_timeout;
    let head = loop {
        match request::parse(buf, &svc.limits) {
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
                let sent = send(
                    stream,
                    ctx,
                    Reply::error(err.status()),
                    None,
                    true,
                    false,
                    false,
                )
                .await;
                log_access(svc, ctx, None, err.status(), sent.as_ref().ok(), started);
                return Ok(Next::Close);
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) => return Ok(Next::Abort),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            // The deadline passed with nothing buffered (a pipelined exchange ended exactly at
            // a request boundary and the client went quiet): no head begun, no 408.
            Err(_) if buf.is_empty() => return Ok(Next::Abort),
            Err(_) => {
                let started = Instant::now();
                let sent = send(stream, ctx, Reply::error(408), None, true, false, false).await;
                log_access(svc, ctx, None, 408, sent.as_ref().ok(), started);
                return Ok(Next::Close);
            }
        }
    };
    let started = Instant::now();
    ctx.slot.requests.fetch_add(1, Ordering::Relaxed);
    // Close after this response when the client asks, when it sent a body we will not read,
    // when keep-alive is off, or when the worker is stopping.
    let close =
        !head.keep_alive || head.has_body || cfg.keep_alive.is_zero() || ctx.stop.is_cancelled();
    let head_only = head.method() == &Method::Head;
    // A body that comes up short while still unsent (it is read before anything is written)
    // means the file changed between fstat and read: answer once more from a fresh fstat
    // rather than promise a length we cannot deliver. A second shortfall is sent short.
    let mut retry = true;
    let (status, sent) = loop {
        let (reply, file) = respond(&head, svc);
        let status = reply.status;
        let sent = send(stream, ctx, reply, file.as_deref(), close, head_only, retry).await;
        match sent {
            Ok(s) if s.unsent => retry = false,
            _ => break (status, sent),
        }
    };
    log_access(svc, ctx, Some(&head), status, sent.as_ref().ok(), started);
    match sent? {
        // The file shrank under us: cut short, the client sees fewer bytes than promised.
        s if !s.complete => Ok(Next::Abort),
        _ if close => Ok(Next::Close),
        _ => Ok(Next::KeepAlive),
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
}

/// Waits for the first byte of a request, the deadline or the stop, whichever comes first.
///
/// Hand-polled rather than `select!` over `timeout(stream.readable())`: `poll_read_ready` keeps
/// its waker in the socket's own slot, where `readable()` needs a waiter node stored in the
/// future. This future is what every idle kept-alive connection holds, so its size is the
/// per-connection memory figure. Readiness is checked first: bytes that arrived before a stop
/// are a request begun, and are served (with `Connection: close`) rather than cut.
async fn wait_for_request(
    stream: &Stream,
    deadline: tokio::time::Instant,
    stop: Option<&tokio_util::sync::CancellationToken>,
    reclaim: &crate::service::reclaim::Reclaim,
) -> io::Result<Wake> {
    let sleep = tokio::time::sleep_until(deadline);
    let cancelled = async {
        match stop {
            Some(stop) => stop.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep, cancelled);
    std::future::poll_fn(|cx| {
        let ready = match stream {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        };
        if let Poll::Ready(r) = ready {
            return Poll::Ready(r.map(|()| Wake::Readable));
        }
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(Wake::Stop));
        }
        if reclaim.poll_evicted(cx).is_ready() {
            return Poll::Ready(Ok(Wake::Evicted));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(Wake::Timeout));
        }
        Poll::Pending
    })
    .await
}

/// Closes after a final response the way nginx's lingering close does: shut our side, then read
/// and discard for a moment. Closing with unread bytes (a body we did not want, a pipelined
/// request) would send RST, which can destroy the response still in flight to the client.
async fn linger(mut stream: Stream) -> io::Result<()> {
    let _ = stream.shutdown().await;
    // On the heap: an array here would sit in every connection's future, idle or not.
    let mut sink = vec![0u8; 4096];
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    for _ in 0..64 {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
    }
    Ok(())
}

/// A response ready to be written. The body is a list of pieces so multipart ranges and plain
/// files share one writer.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Extra header lines, each ending in CRLF.
    headers: String,
    body: Vec<Piece>,
    /// The body's length (Content-Length), also for HEAD.
    len: u64,
}

#[derive(Debug)]
enum Piece {
    Bytes(Vec<u8>),
    /// A byte range of the response's file.
    File {
        offset: u64,
        len: u64,
    },
}

impl Reply {
    /// A short plain-text body naming the status.
    fn error(status: u16) -> Reply {
        Reply::text(status, format!("{status} {}\n", reason(status)))
    }

    fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            headers: "Content-Type: text/plain; charset=utf-8\r\n\
                      X-Content-Type-Options: nosniff\r\n"
                .to_string(),
            len: body.len() as u64,
            body: vec![Piece::Bytes(body.into_bytes())],
        }
    }

    fn with(mut self, name: &str, value: &str) -> Reply {
        let _ = write!(self.headers, "{name}: {value}\r\n");
        self
    }
}

/// How a response went out.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Body bytes written.
    body: u64,
    /// The body was sent whole (false: the file shrank and the connection must close).
    complete: bool,
    /// Nothing was written because the file came up short before the first byte went out
    /// (only when the caller allowed a retry): answer again.
    unsent: bool,
}

/// Decides the response to one request: the reply and, when the body comes from a file, the
/// file. Never fails: every problem is a status.
fn respond(head: &Head, svc: &StaticService) -> (Reply, Option<Arc<File>>) {
    let cfg = &svc.config;
    match head.method() {
        Method::Get | Method::Head => {}
        Method::Other(_) => {
            return (Reply::error(405).with("Allow", "GET, HEAD"), None);
        }
    }
    let Some((path, query)) = split_target(&head.target) else {
        return (Reply::error(400), None);
    };
    let clean = match path::clean(path.as_bytes()) {
        Ok(c) => c,
        Err(path::BadPath(why)) => {
            tracing::debug!(target = %head.target, why, "refused path");
            return (Reply::error(400), None);
        }
    };
    if !cfg.show_hidden && clean.is_hidden() {
        return (Reply::error(404), None);
    }
    let rel = clean.relative();
    let opened = match svc
        .cache
        .open(&svc.root_fd, &cfg.root, &rel, cfg.follow_symlinks)
    {
        Ok(o) => o,
        Err(e) => return (open_error(e, &rel), None),
    };
    match opened.kind {
        // `/file.txt/` names a directory that does not exist (as open(2) says with ENOTDIR).
        FileType::RegularFile if clean.trailing_slash => (Reply::error(404), None),
        FileType::RegularFile => serve_file(head, svc, opened, &rel),
        FileType::Directory => {
            if !clean.trailing_slash {
                let mut to = clean.url(true);
                if let Some(q) = query {
                    to.push('?');
                    to.push_str(q);
                }
                return (Reply::error(301).with("Location", &to), None);
            }
            let index = if rel == "." {
                "index.html".to_string()
            } else {
                format!("{rel}/index.html")
            };
            match svc
                .cache
                .open(&svc.root_fd, &cfg.root, &index, cfg.follow_symlinks)
            {
                Ok(o) if o.kind == FileType::RegularFile => {
                    return serve_file(head, svc, o, &index);
                }
                Ok(_) | Err(OpenError::NotFound) => {}
                Err(e) => return (open_error(e, &index), None),
            }
            if !cfg.listing {
                return (Reply::error(404), None);
            }
            match listing::read(&opened.file, cfg.show_hidden) {
                Ok(entries) => {
                    let html = listing::render(&clean.url(true), &entries);
                    let mut r = Reply::text(200, html);
                    r.headers = "Content-Type: text/html; charset=utf-8\r\n\
                                 X-Content-Type-Options: nosniff\r\n\
                                 Cache-Control: no-cache\r\n"
                        .to_string();
                    (r, None)
                }
                Err(e) => {
                    tracing::warn!(cause = %e, dir = %rel, "cannot list directory");
                    (Reply::error(500), None)
                }
            }
        }
        // FIFOs, sockets, devices: never ours to stream.
        _ => (Reply::error(403), None),
    }
}

fn open_error(e: OpenError, rel: &str) -> Reply {
    match e {
        OpenError::NotFound => Reply::error(404),
        OpenError::Forbidden => Reply::error(403),
        OpenError::Other(err) => {
            tracing::warn!(cause = %err, path = %rel, "cannot open");
            Reply::error(500)
        }
    }
}

/// Splits a request target into its path and query; absolute-form (`http://host/p`) is reduced
/// to its path. `None` for anything else (`*`, authority-form).
fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    let t = target.split('#').next().unwrap_or("");
    let t = if t.starts_with('/') {
        t
    } else {
        let lower = t.get(..8).unwrap_or(t).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &t[7..]
        } else if lower.starts_with("https://") {
            &t[8..]
        } else {
            return None;
        };
        rest.find('/').map_or("/", |i| &rest[i..])
    };
    Some(match t.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (t, None),
    })
}

/// Precompressed siblings, in order of preference: (token, file suffix).
const ENCODINGS: [(&str, &str); 3] = [("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz")];

/// The answer for a regular file: variant, validators, conditionals, ranges.
fn serve_file(
    head: &Head,
    svc: &StaticService,
    opened: Opened,
    rel: &str,
) -> (Reply, Option<Arc<File>>) {
    let cfg = &svc.config;
    let content_type = content_type(rel);
    // Look for siblings only when the client takes encodings: identity needs no Vary for a
    // client that accepts nothing else, and this keeps the common path to one open.
    let mut vary = false;
    let mut encoding = None;
    let mut opened = opened;
    if let Some(ae) = &head.accept_encoding {
        for (token, suffix) in ENCODINGS {
            let sibling = format!("{rel}{suffix}");
            if let Ok(o) = svc
                .cache
                .open(&svc.root_fd, &cfg.root, &sibling, cfg.follow_symlinks)
                && o.kind == FileType::RegularFile
            {
                vary = true;
                if encoding.is_none() && accepts(ae, token) {
                    encoding = Some(token);
                    opened = o;
                }
            }
        }
    }
    let etag = opened.etag();
    let last_modified = httpdate::fmt_http_date(opened.mtime);
    let mut headers = String::with_capacity(256);
    let _ = write!(
        headers,
        "Last-Modified: {last_modified}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n"
    );
    if vary {
        headers.push_str("Vary: Accept-Encoding\r\n");
    }
    let validators = headers.clone();
    let _ = write!(
        headers,
        "Content-Type: {content_type}\r\nX-Content-Type-Options: nosniff\r\n"
    );
    if let Some(enc) = encoding {
        let _ = write!(headers, "Content-Encoding: {enc}\r\n");
    }

    match preconditions(head, &etag, opened.mtime) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            let reply = Reply {
                status: 304,
                headers: validators,
                body: Vec::new(),
                len: 0,
            };
            return (reply, None);
        }
        Precondition::Failed => return (Reply::error(412), None),
    }

    let len = opened.len;
    let ranges = match &head.range {
        Some(r) if if_range_holds(head, &etag, opened.mtime) => range::parse(r, len),
        _ => Ranges::Full,
    };
    let reply = match ranges {
        Ranges::Full => Reply {
            status: 200,
            headers,
            body: vec![Piece::File { offset: 0, len }],
            len,
        },
        Ranges::Unsatisfiable => {
            return (
                Reply::error(416).with("Content-Range", &format!("bytes */{len}")),
                None,
            );
        }
        Ranges::Parts(parts) if parts.len() == 1 => {
            let (a, b) = parts[0];
            let _ = write!(headers, "Content-Range: bytes {a}-{b}/{len}\r\n");
            Reply {
                status: 206,
                headers,
                body: vec![Piece::File {
                    offset: a,
                    len: b - a + 1,
                }],
                len: b - a + 1,
            }
        }
        Ranges::Parts(parts) => multipart(headers, &content_type, &parts, len),
    };
    (reply, Some(opened.file))
}

/// A `multipart/byteranges` body (RFC 9110 §14.6): each part its own Content-Type and
/// Content-Range. The headers given lose their Content-Type for the multipart one.
fn multipart(headers: String, content_type: &str, parts: &[(u64, u64)], len: u64) -> Reply {
    static BOUNDARIES: AtomicU64 = AtomicU64::new(0);
    let boundary = format!(
        "oxicorn{:08x}{:012x}",
        std::process::id(),
        BOUNDARIES.fetch_add(1, Ordering::Relaxed)
    );
    let mut headers: String = headers
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("Content-Type:"))
        .collect();
    let _ = write!(
        headers,
        "Content-Type: multipart/byteranges; boundary={boundary}\r\n"
    );
    let mut body = Vec::new();
    let mut total = 0;
    for &(a, b) in parts {
        let part = format!(
            "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {a}-{b}/{len}\r\n\r\n"
        );
        total += part.len() as u64 + (b - a + 1);
        body.push(Piece::Bytes(part.into_bytes()));
        body.push(Piece::File {
            offset: a,
            len: b - a + 1,
        });
    }
    let end = format!("\r\n--{boundary}--\r\n");
    total += end.len() as u64;
    body.push(Piece::Bytes(end.into_bytes()));
    Reply {
        status: 206,
        headers,
        body,
        len: total,
    }
}

/// RFC 9110 §13.2.2's order: If-Match, else If-Unmodified-Since (412); then If-None-Match,
/// else If-Modified-Since (304).
#[derive(Debug, PartialEq, Eq)]
enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

fn preconditions(head: &Head, etag: &str, mtime: SystemTime) -> Precondition {
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    if let Some(list) = &head.if_match {
        if !etag_matches(list, etag, false) {
            return Precondition::Failed;
        }
    } else if let Some(date) = head
        .if_unmodified_since
        .as_deref()
        .and_then(|d| httpdate::parse_http_date(d).ok())
        && secs(mtime) > secs(date)
    {
        return Precondition::Failed;
    }
    if let Some(list) = &head.if_none_match {
        if etag_matches(list, etag, true) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = head
        .if_modified_since
        .as_deref()
        .and_then(|d| httpdate::parse_http_date(d).ok())
        && secs(mtime) <= secs(date)
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// `*` or a comma-separated list of entity tags; weak comparison ignores `W/`, strong
/// comparison never matches a weak tag.
fn etag_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        match t.strip_prefix("W/") {
            Some(t) => weak && t == etag,
            None => t == etag,
        }
    })
}

/// `If-Range`: apply the range only if the representation is unchanged, judged by a strong
/// ETag or the exact Last-Modified date.
fn if_range_holds(head: &Head, etag: &str, mtime: SystemTime) -> bool {
    match head.if_range.as_deref() {
        None => true,
        Some(v) if v.starts_with('"') => v == etag,
        Some(v) if v.starts_with("W/") => false,
        Some(v) => v == httpdate::fmt_http_date(mtime),
    }
}

/// Whether `Accept-Encoding` takes `token` (q > 0, directly or through `*`).
fn accepts(accept_encoding: &str, token: &str) -> bool {
    let mut star = None;
    for item in accept_encoding.split(',') {
        let mut params = item.split(';');
        let name = params.next().unwrap_or("").trim();
        let q = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f32>().ok())
            .next()
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(token) {
            return q > 0.0;
        }
        if name == "*" {
            star = Some(q > 0.0);
        }
    }
    star.unwrap_or(false)
}

/// The Content-Type for a path, by extension, with `charset=utf-8` for text.
fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let texty = mime.starts_with("text/")
        || matches!(
            mime,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/xhtml+xml"
                | "image/svg+xml"
                | "application/manifest+json"
        );
    if texty {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

/// Writes `reply` (headers, then the body unless `head_only`).
async fn send(
    stream: &mut Stream,
    ctx: &ConnContext,
    reply: Reply,
    file: Option<&File>,
    close: bool,
    head_only: bool,
    may_retry: bool,
) -> io::Result<Sent> {
    let inline = !head_only && reply.len <= INLINE_BODY;
    let mut out =
        Vec::with_capacity(256 + reply.headers.len() + if inline { reply.len as usize } else { 0 });
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: oxicorn\r\nDate: ",
        reply.status,
        reason(reply.status)
    );
    with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(reply.headers.as_bytes());
    if reply.status != 304 {
        let _ = write!(out, "Content-Length: {}\r\n", reply.len);
    }
    out.extend_from_slice(if close {
        b"Connection: close\r\n\r\n"
    } else {
        b"Connection: keep-alive\r\n\r\n"
    });
    let head_len = out.len() as u64;
    let mut written = 0u64;
    let mut complete = true;
    if !head_only {
        'pieces: for piece in &reply.body {
            match *piece {
                Piece::Bytes(ref b) => out.extend_from_slice(b),
                Piece::File { offset, len } => {
                    let Some(file) = file else {
                        return Err(io::Error::other("file piece without a file"));
                    };
                    if len <= INLINE_BODY {
                        let start = out.len();
                        out.resize(start + len as usize, 0);
                        let got = read_at_full(file, &mut out[start..], offset)?;
                        if got < len as usize {
                            if may_retry && written == 0 {
                                return Ok(Sent {
                                    body: 0,
                                    complete: false,
                                    unsent: true,
                                });
                            }
                            out.truncate(start + got);
                            complete = false;
                            break 'pieces;
                        }
                    } else {
                        idle(ctx.idle_timeout, stream.write_all(&out)).await?;
                        written += out.len() as u64;
                        out.clear();
                        let sent = sendfile_all(stream, ctx, file, offset, len).await?;
                        written += sent;
                        if sent < len {
                            complete = false;
                            break 'pieces;
                        }
                    }
                }
            }
        }
    }
    if !out.is_empty() {
        idle(ctx.idle_timeout, stream.write_all(&out)).await?;
        written += out.len() as u64;
    }
    ctx.slot.bytes_out.fetch_add(written, Ordering::Relaxed);
    if !complete {
        tracing::warn!(peer = %ctx.peer, "file shrank while being sent; connection closed short");
    }
    Ok(Sent {
        body: written.saturating_sub(head_len),
        complete,
        unsent: false,
    })
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Sends `len` bytes of `file` from `offset` with `sendfile(2)`, waiting for the socket to be
/// writable between calls; stops early only if the file ends first. Returns the bytes sent.
async fn sendfile_all(
    stream: &Stream,
    ctx: &ConnContext,
    file: &File,
    offset: u64,
    len: u64,
) -> io::Result<u64> {
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let chunk = usize::try_from((end - pos).min(1 << 24)).unwrap_or(1 << 24);
        let n = idle(
            ctx.idle_timeout,
            sendfile_once(stream, file, &mut pos, chunk),
        )
        .await?;
        if n == 0 {
            break;
        }
    }
    Ok(pos - offset)
}

async fn sendfile_once(stream: &Stream, file: &File, pos: &mut u64, n: usize) -> io::Result<usize> {
    // The closure runs when tokio believes the socket writable; EAGAIN (mapped to WouldBlock)
    // clears the readiness and waits again.
    match stream {
        Stream::Tcp(s) => {
            s.async_io(Interest::WRITABLE, || {
                Ok(rustix::fs::sendfile(s, file, Some(&mut *pos), n)?)
            })
            .await
        }
        Stream::Unix(s) => {
            s.async_io(Interest::WRITABLE, || {
                Ok(rustix::fs::sendfile(s, file, Some(&mut *pos), n)?)
            })
            .await
        }
    }
}

thread_local! {
    /// The `Date` header value, rebuilt at most once a second (one runtime thread per worker).
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut d = cell.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(d.1.as_bytes());
    });
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

/// One access-log line in gunicorn's default format
/// (`%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"`) plus the response time in
/// microseconds (gunicorn's `%(D)s`). Client-supplied text is escaped so a request cannot
/// forge log lines.
fn log_access(
    svc: &StaticService,
    ctx: &ConnContext,
    head: Option<&Head>,
    status: u16,
    sent: Option<&Sent>,
    started: Instant,
) {
    let Some(log) = svc.access_log.as_ref() else {
        return;
    };
    let host = match &ctx.peer {
        Peer::Tcp(a) => a.ip().to_string(),
        Peer::Unix => "-".to_string(),
    };
    let date = httpdate::fmt_http_date(SystemTime::now());
    let p: Vec<&str> = date.split_whitespace().collect();
    let when = if p.len() >= 5 {
        format!("{}/{}/{}:{} +0000", p[1], p[2], p[3], p[4])
    } else {
        date.clone()
    };
    let request = head.map_or("-".to_string(), |h| {
        format!("{} {} HTTP/1.{}", h.method(), h.target, h.minor)
    });
    let field = |v: Option<&String>| v.map_or("-".to_string(), |s| escape_log(s));
    let bytes = sent.map_or("-".to_string(), |s| s.body.to_string());
    let line = format!(
        "{host} - - [{when}] \"{}\" {status} {bytes} \"{}\" \"{}\" {}\n",
        escape_log(&request),
        field(head.and_then(|h| h.referer.as_ref())),
        field(head.and_then(|h| h.user_agent.as_ref())),
        started.elapsed().as_micros()
    );
    // A panic elsewhere cannot leave a File half-updated: a poisoned lock is used as it is.
    let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = file.write_all(line.as_bytes()) {
        tracing::debug!(cause = %e, "cannot write the access log");
    }
}

/// `"`, `\` and control characters as `\xNN`.
fn escape_log(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            let mut b = [0u8; 4];
            for byte in c.encode_utf8(&mut b).bytes() {
                let _ = write!(out, "\\x{byte:02x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(split_target("/a?b=1"), Some(("/a", Some("b=1"))));
        assert_eq!(split_target("/a#x"), Some(("/a", None)));
        assert_eq!(split_target("http://h:1/x/y?q"), Some(("/x/y", Some("q"))));
        assert_eq!(split_target("HTTPS://h"), Some(("/", None)));
        assert_eq!(split_target("*"), None);
        assert_eq!(split_target("h:80"), None);
    }

    #[test]
    fn accept_encoding_q_values() {
        assert!(accepts("gzip, br", "br"));
        assert!(accepts("gzip;q=0.5", "gzip"));
        assert!(!accepts("gzip;q=0", "gzip"));
        assert!(!accepts("gzip", "br"));
        assert!(accepts("*", "zstd"));
        assert!(!accepts("*, br;q=0", "br"));
    }

    #[test]
    fn etag_comparison() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\"", false));
        assert!(etag_matches("*", "\"b\"", false));
        assert!(!etag_matches("W/\"b\"", "\"b\"", false));
        assert!(etag_matches("W/\"b\"", "\"b\"", true));
        assert!(!etag_matches("\"c\"", "\"b\"", true));
    }

    #[test]
    fn text_types_get_a_charset() {
        assert_eq!(content_type("a.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a.png"), "image/png");
        assert_eq!(content_type("a.unknownext"), "application/octet-stream");
    }

    #[test]
    fn log_fields_cannot_forge_lines() {
        assert_eq!(escape_log("a\"b\nc"), "a\\x22b\\x0ac");
    }
}
#[cfg(test)]
mod memory {
    /// Every idle kept-alive connection holds one `serve` future; the benchmark counts 10,000
    /// of them. Request state is boxed inside, so this stays small; a stack buffer or a timer
    /// added to the wrong place shows here.
    #[test]
    fn an_idle_connection_future_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let stream = crate::net::Stream::Tcp(c);
            let slot: &'static crate::scoreboard::Slot = Box::leak(Box::default());
            let ctx = super::ConnContext {
                peer: crate::net::Peer::Unix,
                stop: Default::default(),
                idle_timeout: None,
                slot,
                reclaim: crate::service::reclaim::Reclaim::detached(),
                listener: 0,
            };
            let dir = tempfile::tempdir().unwrap();
            let cfg = crate::config::StaticConfig {
                root: dir.path().into(),
                keep_alive: std::time::Duration::from_secs(1),
                header_timeout: std::time::Duration::from_secs(1),
                limit_request_line: 10,
                limit_request_fields: 10,
                limit_request_field_size: 10,
                follow_symlinks: false,
                show_hidden: false,
                listing: true,
                access_logfile: None,
            };
            let svc = super::StaticService::open(&cfg).unwrap();
            let f = super::serve(stream, &ctx, &svc);
            let size = std::mem::size_of_val(&f);
            assert!(size <= 512, "serve future is {size} bytes");
        });
    }
}
