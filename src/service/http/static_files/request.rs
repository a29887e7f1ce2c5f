//! Request heads: limits first, then `httparse`, then the few headers a file server reads.
//!
//! The limits are gunicorn's (`limit_request_line` → 414, `limit_request_fields` and
//! `limit_request_field_size` → 431) and are enforced on partial heads too, so a client cannot
//! make us buffer more than one legal head before it is refused.

use http::header::{self, HeaderName};
use http::{Method, StatusCode};

use crate::service::http::access_log::Captured;

/// The limits a head is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line, without its CRLF.
    pub request_line: usize,
    /// Most header fields.
    pub fields: usize,
    /// Longest field: name, `: ` and value.
    pub field_size: usize,
}

impl Limits {
    /// The most bytes a legal head can take, CRLFs included.
    pub fn max_head(&self) -> usize {
        self.request_line + 2 + self.fields * (self.field_size + 2) + 2
    }
}

/// Why a head was refused; each maps to one status and the connection is closed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400, with the reason for the debug log.
    Bad(&'static str),
    /// 414: the request line is over the limit.
    LineTooLong,
    /// 431: too many fields, or one too long.
    FieldsTooLarge,
    /// 505: a well-formed version with a major number above 1, such as `HTTP/2.0` sent as
    /// text (RFC 9110 §15.6.6; nginx answers the same).
    VersionNotSupported,
}

impl HeadError {
    /// The HTTP status that answers it.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::Bad(_) => StatusCode::BAD_REQUEST,
            HeadError::LineTooLong => StatusCode::URI_TOO_LONG,
            HeadError::FieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        }
    }
}

/// One parsed request head, owned, with the headers we act on.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// The method; only GET and HEAD are served, anything else is answered 405.
    pub method: Method,
    /// The request target as sent (origin-form or absolute-form).
    pub target: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor: u8,
    /// The client wants the connection kept open after this response.
    pub keep_alive: bool,
    /// A body follows (Content-Length > 0 or Transfer-Encoding): we do not read bodies, so the
    /// connection is closed after the response rather than misreading the body as a request.
    pub has_body: bool,
    /// `If-Match`.
    pub if_match: Option<String>,
    /// `If-None-Match`.
    pub if_none_match: Option<String>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<String>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<String>,
    /// `If-Range`.
    pub if_range: Option<String>,
    /// `Range`.
    pub range: Option<String>,
    /// `Accept-Encoding`.
    pub accept_encoding: Option<String>,
    /// `Referer`, for the access log, as received.
    pub referer: Option<Vec<u8>>,
    /// `User-Agent`, for the access log, as received.
    pub user_agent: Option<Vec<u8>>,
    /// The headers the access log's `%({name}i)s` atoms name, copied: empty, and
    /// unallocated, unless the format names some.
    pub logged: Captured,
}

/// Parses the head at the start of `buf`, keeping the values of the headers in `logged` (the
/// access log format's [`LogFormat::request_headers`](crate::service::http::access_log::LogFormat::request_headers))
/// in [`Head::logged`].
///
/// `Ok(None)` means "incomplete, read more" (mini-redis's `Incomplete` is not an error either).
/// `Ok(Some((head, n)))`: the head took the first `n` bytes.
///
/// # Errors
/// A [`HeadError`] when the bytes can never become an acceptable head.
pub fn parse(
    buf: &[u8],
    limits: &Limits,
    logged: &[HeaderName],
) -> Result<Option<(Head, usize)>, HeadError> {
    // RFC 9112 §2.2: ignore empty lines before the request line.
    let skip = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    if skip > 64 {
        return Err(HeadError::Bad("empty lines before the request line"));
    }
    let body = &buf[skip..];
    match memchr::memchr(b'\n', body) {
        Some(end) => {
            let line = end - usize::from(end > 0 && body[end - 1] == b'\r');
            if line > limits.request_line {
                return Err(HeadError::LineTooLong);
            }
        }
        None if body.len() > limits.request_line + 1 => return Err(HeadError::LineTooLong),
        None => return Ok(None),
    }
    if !contains_end(body) {
        // The field being received must fit, and so must the whole head.
        let last = body.rsplit(|&b| b == b'\n').next().map_or(0, <[u8]>::len);
        if last > limits.field_size + 1 || body.len() > limits.max_head() {
            return Err(HeadError::FieldsTooLarge);
        }
        return Ok(None);
    }

    // On the stack for the usual limits: parsing allocates nothing but the owned copies.
    // Left uninitialized: httparse writes the slots it fills, and zeroing all of them (3.2 KiB
    // with the default 100 fields) for every request cost more than parsing a short head.
    let mut stack = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut heap;
    let slots: &mut [std::mem::MaybeUninit<httparse::Header<'_>>] = if limits.fields <= stack.len()
    {
        &mut stack[..limits.fields]
    } else {
        heap = Vec::new();
        heap.resize_with(limits.fields, std::mem::MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let n = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::FieldsTooLarge),
        Err(httparse::Error::Version) => {
            // A later HTTP/1 minor version is read as 1.1 (RFC 9112 §2.3); httparse knows only
            // 1.0 and 1.1, so the head is parsed again from a copy that says 1.1. Only such
            // clients pay for it. Same length, so the consumed count stays right.
            if let Some(at) = later_minor_version(body) {
                let mut copy = buf.to_vec();
                copy[skip + at] = b'1';
                return parse(&copy, limits, logged);
            }
            if version_major_above_1(body) {
                return Err(HeadError::VersionNotSupported);
            }
            return Err(HeadError::Bad("unsupported HTTP version"));
        }
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    let minor = req.version.unwrap_or(1);
    let mut head = Head {
        // httparse has checked the token, so this cannot fail; GET is a placeholder only.
        method: Method::from_bytes(req.method.unwrap_or("GET").as_bytes()).unwrap_or_default(),
        target: req.path.unwrap_or("").to_string(),
        minor,
        keep_alive: minor == 1,
        ..Head::default()
    };
    let mut hosts = 0;
    let mut content_length: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.len() + 2 + h.value.len() > limits.field_size {
            return Err(HeadError::FieldsTooLarge);
        }
        let text = || {
            std::str::from_utf8(h.value)
                .ok()
                .map(|s| s.trim().to_string())
        };
        let is = |known: &HeaderName| h.name.eq_ignore_ascii_case(known.as_str());
        for (i, name) in logged.iter().enumerate() {
            if is(name) {
                head.logged.push(i, h.value.to_vec());
            }
        }
        if is(&header::HOST) {
            hosts += 1;
        } else if is(&header::CONNECTION) {
            let v = String::from_utf8_lossy(h.value);
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && minor == 0 {
                    head.keep_alive = true;
                }
            }
        } else if is(&header::CONTENT_LENGTH) {
            if content_length.is_some_and(|v| v != h.value) {
                return Err(HeadError::Bad("conflicting Content-Length"));
            }
            content_length = Some(h.value);
        } else if is(&header::TRANSFER_ENCODING) {
            head.has_body = true;
        } else if is(&header::IF_MATCH) {
            head.if_match = join(head.if_match.take(), text());
        } else if is(&header::IF_NONE_MATCH) {
            head.if_none_match = join(head.if_none_match.take(), text());
        } else if is(&header::IF_MODIFIED_SINCE) {
            head.if_modified_since = text();
        } else if is(&header::IF_UNMODIFIED_SINCE) {
            head.if_unmodified_since = text();
        } else if is(&header::IF_RANGE) {
            head.if_range = text();
        } else if is(&header::RANGE) {
            if head.range.is_some() {
                return Err(HeadError::Bad("more than one Range"));
            }
            head.range = text();
        } else if is(&header::ACCEPT_ENCODING) {
            head.accept_encoding = join(head.accept_encoding.take(), text());
        } else if is(&header::REFERER) {
            head.referer = Some(h.value.to_vec());
        } else if is(&header::USER_AGENT) {
            head.user_agent = Some(h.value.to_vec());
        }
    }
    if let Some(v) = content_length {
        let v = std::str::from_utf8(v).ok().map(str::trim);
        match v.filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())) {
            Some(s) if s.bytes().all(|b| b == b'0') => {}
            Some(_) => head.has_body = true,
            None => return Err(HeadError::Bad("invalid Content-Length")),
        }
    }
    if minor == 1 && hosts != 1 {
        return Err(HeadError::Bad("HTTP/1.1 needs exactly one Host"));
    }
    Ok(Some((head, n)))
}

/// A blank line ends the head: `\n\n` or `\n\r\n`.
fn contains_end(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n")
}

/// Repeated list headers are one comma-separated list (RFC 9110 §5.3).
fn join(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}, {b}")),
        (a, b) => a.or(b),
    }
}

/// The version token of the request line that starts `head` (`HTTP/x.y`), if it has that shape:
/// `HTTP-version = HTTP-name "/" DIGIT "." DIGIT` (RFC 9112 §2.3).
fn version_token(head: &[u8]) -> Option<(usize, [u8; 2])> {
    let end = memchr::memchr(b'\n', head)?;
    let line = &head[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let start = line.iter().rposition(|&b| b == b' ')? + 1;
    match &line[start..] {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Some((start, [*major, *minor]))
        }
        _ => None,
    }
}

/// The offset in `head` of the minor digit of an `HTTP/1.x` version with x above 1.
fn later_minor_version(head: &[u8]) -> Option<usize> {
    match version_token(head)? {
        (start, [b'1', minor]) if minor > b'1' => Some(start + 7),
        _ => None,
    }
}

/// Whether the request line names a well-formed HTTP version with a major number above 1.
fn version_major_above_1(head: &[u8]) -> bool {
    version_token(head).is_some_and(|(_, [major, _])| major > b'1')
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        request_line: 40,
        fields: 4,
        field_size: 30,
    };

    /// Header names the random test asks the parser to keep, as an access log format would.
    static LOGGED: std::sync::LazyLock<[HeaderName; 2]> = std::sync::LazyLock::new(|| {
        [
            HeaderName::from_static("range"),
            HeaderName::from_static("x-custom"),
        ]
    });

    fn parse_str(s: &str) -> Result<Option<(Head, usize)>, HeadError> {
        parse(s.as_bytes(), &LIMITS, &[])
    }

    #[test]
    fn complete_partial_and_pipelined() {
        let two = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n";
        let (head, n) = parse_str(two).unwrap().unwrap();
        assert_eq!(head.target, "/a");
        assert!(head.keep_alive);
        assert_eq!(&two[n..], "GET /b HTTP/1.1\r\n");
        assert!(parse_str(&two[n..]).unwrap().is_none());
        assert!(parse_str("GET / HT").unwrap().is_none());
        let (head, _) = parse_str("\r\nHEAD / HTTP/1.0\n\n").unwrap().unwrap();
        assert_eq!(head.method, Method::HEAD);
        assert!(!head.keep_alive);
    }

    /// RFC 9112 §2.3: a later HTTP/1 minor version is served as 1.1; RFC 9110 §15.6.6 and
    /// nginx: a major version above 1 sent as text is answered 505; anything else is a 400.
    #[test]
    fn http_versions() {
        let (head, n) = parse_str("GET /a HTTP/1.2\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((head.minor, head.keep_alive, n), (1, true, 28));
        for v in ["HTTP/2.0", "HTTP/3.0", "HTTP/9.9"] {
            let line = format!("GET /a {v}\r\nHost: x\r\n\r\n");
            assert!(
                matches!(parse_str(&line), Err(HeadError::VersionNotSupported)),
                "{v}"
            );
        }
        for v in [
            "HTTP/0.9",
            "HTTP/1.10",
            "http/1.1",
            "HTTP/1",
            "HTTP/x.1",
            "HTTP/2",
        ] {
            let line = format!("GET /a {v}\r\nHost: x\r\n\r\n");
            assert!(matches!(parse_str(&line), Err(HeadError::Bad(_))), "{v}");
        }
    }

    #[test]
    fn connection_and_body() {
        let h = |s: &str| parse_str(s).unwrap().unwrap().0;
        assert!(!h("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(h("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(h("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").has_body);
        assert!(!h("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").has_body);
        assert!(h("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").has_body);
    }

    #[test]
    fn limits_and_malformed_heads() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(40));
        assert_eq!(parse_str(&long_line).err(), Some(HeadError::LineTooLong));
        assert_eq!(
            parse_str(&"a".repeat(50)).err(),
            Some(HeadError::LineTooLong)
        );
        let long_field = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "x".repeat(30));
        assert_eq!(
            parse_str(&long_field).err(),
            Some(HeadError::FieldsTooLarge)
        );
        let partial_field = format!("GET / HTTP/1.1\r\nX: {}", "x".repeat(40));
        assert_eq!(
            parse_str(&partial_field).err(),
            Some(HeadError::FieldsTooLarge)
        );
        let many = "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n";
        assert_eq!(parse_str(many).err(), Some(HeadError::FieldsTooLarge));
        for bad in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            "\u{1}GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(parse_str(bad), Err(HeadError::Bad(_))), "{bad:?}");
        }
    }

    /// Garbage never panics: every prefix of random and mutated heads is either incomplete,
    /// a head, or an error (a deterministic xorshift, so a failure reproduces).
    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seed = b"GET /a%20b?c HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n";
        for _ in 0..5000 {
            let mut buf = seed.to_vec();
            for _ in 0..(next() % 6) {
                let i = (next() as usize) % buf.len();
                buf[i] = next() as u8;
            }
            let cut = (next() as usize) % (buf.len() + 1);
            let _ = parse(&buf[..cut], &LIMITS, &*LOGGED);
            let noise: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
            let _ = parse(&noise, &LIMITS, &*LOGGED);
            let _ = crate::service::http::static_files::path::clean(&buf[4..cut.max(4)]);
        }
    }
}
