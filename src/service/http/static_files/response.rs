//! The response writer: a [`Reply`] (status, header lines, body pieces, and how the connection
//! ends) and its one [`Reply::send`].
//!
//! Headers and bodies up to [`INLINE_BODY`] go out in one `write` (file pieces copied from the
//! bytes the open-file cache holds, else read with `pread`); larger file pieces go with
//! [`Wire::sendfile`]. The writer decides nothing about the request: `resolve` builds the
//! reply, `conn` decides keep-alive, and this module only puts bytes on the wire and counts them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use http::StatusCode;
use http::header::{self, HeaderName};
use tokio::io::AsyncWriteExt;

use super::wire::Wire;
use crate::service::http::date;
use crate::service::{ConnContext, idle};

/// Bodies up to this size are read into the response buffer and sent with the headers in one
/// `write`; larger ones go out with `sendfile`.
pub const INLINE_BODY: u64 = 64 * 1024;

/// A response ready to be written. The body is a list of pieces so multipart ranges and plain
/// files share one writer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// Extra header lines, each ending in CRLF (`Server`, `Date`, `Content-Length` and
    /// `Connection` are added by [`Reply::send`]).
    pub headers: String,
    /// What follows the head, in order.
    pub body: Vec<Piece>,
    /// The body's length (Content-Length), also for HEAD.
    pub len: u64,
    /// The file that [`Piece::File`] pieces read from.
    pub file: Option<Arc<File>>,
    /// The file's bytes, when the open-file cache holds them ([`super::files::Opened::bytes`]):
    /// [`Piece::File`] pieces are copied from here rather than read from `file`, so they can
    /// never come up short.
    pub bytes: Option<bytes::Bytes>,
    /// Send `Connection: close` (the connection ends after this response).
    pub close: bool,
    /// Send the head only (HEAD): `Content-Length` still says what GET would send.
    pub head_only: bool,
}

/// One stretch of a body.
#[derive(Debug)]
pub enum Piece {
    /// Bytes held in memory (a text body, a multipart boundary).
    Bytes(Vec<u8>),
    /// A byte range of the reply's file.
    File {
        /// First byte.
        offset: u64,
        /// Bytes to send.
        len: u64,
    },
}

/// What [`Reply::send`] does when the file turns out shorter than its `fstat` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShort {
    /// If nothing is written yet, write nothing and report [`Sent::unsent`], so the caller
    /// can answer again from a fresh `fstat`.
    Retry,
    /// Send what there is and report [`Sent::complete`] false (the connection must close).
    SendShort,
}

/// How a response went out.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Body bytes written.
    pub body: u64,
    /// The body was sent whole (false: the file shrank and the connection must close).
    pub complete: bool,
    /// Nothing was written because the file came up short before the first byte went out
    /// (only with [`OnShort::Retry`]): answer again.
    pub unsent: bool,
}

impl Reply {
    /// A short plain-text body naming the status.
    pub fn error(status: StatusCode) -> Reply {
        Reply::text(status, format!("{status}\n"))
    }

    /// A plain-text body.
    pub fn text(status: StatusCode, body: String) -> Reply {
        let mut headers = String::with_capacity(96);
        push_header(
            &mut headers,
            &header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        );
        push_header(&mut headers, &header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        Reply::bytes(status, headers, body.into_bytes())
    }

    /// An in-memory body with the given header lines.
    pub fn bytes(status: StatusCode, headers: String, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers,
            len: body.len() as u64,
            body: vec![Piece::Bytes(body)],
            file: None,
            bytes: None,
            close: false,
            head_only: false,
        }
    }

    /// Adds a header line.
    pub fn with(mut self, name: &HeaderName, value: &str) -> Reply {
        push_header(&mut self.headers, name, value);
        self
    }

    /// Sets whether the connection closes after this reply.
    pub fn closing(mut self, close: bool) -> Reply {
        self.close = close;
        self
    }

    /// Sets whether only the head is sent (HEAD).
    pub fn head_only(mut self, head_only: bool) -> Reply {
        self.head_only = head_only;
        self
    }

    /// Writes the head, then the body unless [`Reply::head_only`], and counts the bytes.
    ///
    /// # Errors
    /// I/O errors and the idle timeout (`TimedOut`); a file piece without a file.
    pub async fn send<W: Wire>(
        &self,
        stream: &mut W,
        ctx: &ConnContext,
        on_short: OnShort,
    ) -> io::Result<Sent> {
        let inline = !self.head_only && self.len <= INLINE_BODY;
        let mut out =
            take_out(256 + self.headers.len() + if inline { self.len as usize } else { 0 });
        // Pieces appended rather than `write!`: the formatting machinery was a tenth of a
        // short request's user time (issue 12).
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\nServer: oxicorn\r\nDate: ");
        date::with_now(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.headers.as_bytes());
        if self.status != StatusCode::NOT_MODIFIED {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(&mut out, self.len);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(if self.close {
            b"Connection: close\r\n\r\n"
        } else {
            b"Connection: keep-alive\r\n\r\n"
        });
        let head_len = out.len() as u64;
        let mut written = 0u64;
        let mut complete = true;
        if !self.head_only {
            'pieces: for piece in &self.body {
                match *piece {
                    Piece::Bytes(ref b) => out.extend_from_slice(b),
                    Piece::File { offset, len } => {
                        let Some(file) = self.file.as_deref() else {
                            return Err(io::Error::other("file piece without a file"));
                        };
                        let held = self.bytes.as_ref().and_then(|b| {
                            let from = usize::try_from(offset).ok()?;
                            b.get(from..from.checked_add(usize::try_from(len).ok()?)?)
                        });
                        if let Some(held) = held {
                            out.extend_from_slice(held);
                        } else if len <= INLINE_BODY {
                            let start = out.len();
                            out.resize(start + len as usize, 0);
                            let got = read_at_full(file, &mut out[start..], offset)?;
                            if got < len as usize {
                                if on_short == OnShort::Retry && written == 0 {
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
                            at_once_or_idle(ctx, stream.write_all(&out)).await?;
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
            if self.close {
                at_once_or_idle(ctx, stream.write_all_before_close(&out)).await?;
            } else {
                at_once_or_idle(ctx, stream.write_all(&out)).await?;
            }
            written += out.len() as u64;
        }
        give_out(out);
        ctx.metrics.bytes_out(written);
        if !complete {
            tracing::warn!(peer = %ctx.peer, "file shrank while being sent; connection closed short");
        }
        Ok(Sent {
            body: written.saturating_sub(head_len),
            complete,
            unsent: false,
        })
    }
}

/// `fut` bounded by the connection's idle timeout, as [`idle`] does, but polled once before
/// the timeout is armed: a response's write to a socket with room in its buffer (nearly every
/// one) completes at once, and arming the timeout first read the clock for nothing (one of a
/// kept-alive request's seven clock reads, ~0.3% of its CPU). The timeout starts after that
/// first poll, a moment later than before.
///
/// # Errors
/// As `fut`, and `TimedOut` as for [`idle`].
async fn at_once_or_idle<T>(
    ctx: &ConnContext,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => idle(ctx.idle_timeout, fut).await,
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Output buffers kept per worker thread: a 1 KiB file's response (head and body, ~1.3 KiB)
/// is past glibc's per-thread cache, so each response paid a full `malloc` and `free`.
const POOLED_OUT: usize = 16;
/// Buffers larger than this are freed, not pooled (so at most 256 KiB per worker).
const POOLED_OUT_MOST: usize = 16 * 1024;

thread_local! {
    static OUT: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty buffer with room for `cap` bytes, pooled if one is free.
fn take_out(cap: usize) -> Vec<u8> {
    let mut out = OUT.with_borrow_mut(Vec::pop).unwrap_or_default();
    out.reserve(cap);
    out
}

/// Returns an output buffer to the pool when it is of a usual size and there is room.
fn give_out(mut out: Vec<u8>) {
    if out.capacity() == 0 || out.capacity() > POOLED_OUT_MOST {
        return;
    }
    out.clear();
    OUT.with_borrow_mut(|pool| {
        if pool.len() < POOLED_OUT {
            pool.push(out);
        }
    });
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
///
/// # Errors
/// What `pread` returns other than `EINTR` (which is retried).
pub(super) fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
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

/// Sends `len` bytes of `file` from `offset` with `sendfile(2)`, each call bounded by the idle
/// timeout; stops early only if the file ends first. Returns the bytes sent.
async fn sendfile_all<W: Wire>(
    stream: &mut W,
    ctx: &ConnContext,
    file: &File,
    offset: u64,
    len: u64,
) -> io::Result<u64> {
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let chunk = usize::try_from((end - pos).min(1 << 24)).unwrap_or(1 << 24);
        let n = idle(ctx.idle_timeout, stream.sendfile(file, &mut pos, chunk)).await?;
        if n == 0 {
            break;
        }
    }
    Ok(pos - offset)
}

/// Appends `Name: value\r\n` with the name in the usual title case (`Content-Type`, `ETag`):
/// HTTP/1.1 names are case-insensitive, but this is how nginx, curl and every log reader spell
/// them, and the `http` crate's constants are lower case (as HTTP/2 requires).
pub fn push_header(headers: &mut String, name: &HeaderName, value: &str) {
    // The names every file response carries, spelled out: title-casing them a character at a
    // time was a visible share of a short request's user time (issue 12).
    let known = [
        (&header::CONTENT_TYPE, "Content-Type"),
        (&header::LAST_MODIFIED, "Last-Modified"),
        (&header::ETAG, "ETag"),
        (&header::ACCEPT_RANGES, "Accept-Ranges"),
        (&header::X_CONTENT_TYPE_OPTIONS, "X-Content-Type-Options"),
        (&header::VARY, "Vary"),
        (&header::CACHE_CONTROL, "Cache-Control"),
        (&header::CONTENT_ENCODING, "Content-Encoding"),
    ];
    // `HeaderName` equality on standard names compares an enum tag, not bytes.
    if let Some((_, spelled)) = known.iter().find(|(n, _)| *n == name) {
        headers.push_str(spelled);
    } else {
        let mut upper = true;
        for c in name.as_str().chars() {
            headers.push(if upper { c.to_ascii_uppercase() } else { c });
            upper = c == '-';
        }
    }
    headers.push_str(": ");
    headers.push_str(value);
    headers.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn header_names_are_title_cased() {
        let mut h = String::new();
        push_header(&mut h, &header::CONTENT_TYPE, "a");
        push_header(&mut h, &header::ETAG, "\"b\"");
        push_header(&mut h, &header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        assert_eq!(
            h,
            "Content-Type: a\r\nETag: \"b\"\r\nX-Content-Type-Options: nosniff\r\n"
        );
    }

    #[test]
    fn every_header_name_is_title_cased_known_or_not() {
        let mut h = String::new();
        for name in [
            &header::CONTENT_TYPE,
            &header::LAST_MODIFIED,
            &header::ACCEPT_RANGES,
            &header::VARY,
            &header::CACHE_CONTROL,
            &header::CONTENT_ENCODING,
            &header::CONTENT_RANGE,
            &header::LOCATION,
        ] {
            push_header(&mut h, name, "v");
        }
        assert_eq!(
            h,
            "Content-Type: v\r\nLast-Modified: v\r\nAccept-Ranges: v\r\nVary: v\r\n\
             Cache-Control: v\r\nContent-Encoding: v\r\nContent-Range: v\r\nLocation: v\r\n"
        );
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 1024, 65_536, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn every_status_sent_has_its_reason() {
        for code in [
            200, 206, 301, 304, 400, 403, 404, 405, 408, 412, 414, 416, 431, 500,
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(status.canonical_reason().is_some(), "{code}");
        }
    }
}
