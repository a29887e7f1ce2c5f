//! The access log: one line per answered request, in a format given as gunicorn's
//! `--access-logformat` (its `%(atom)s` syntax and atom letters), for any HTTP service.
//!
//! The format is parsed once (at config check and when a worker opens the log) into a list of
//! [`Part`]s; an unknown atom is a configuration error, not a line with a hole in it. A line is
//! built in memory and written with one `write(2)` on an `O_APPEND` file, so lines from
//! several workers never interleave. Text the client chose (request line, path, query, referer,
//! user agent) is escaped (`"`, `\`, control characters and the Unicode characters that break
//! a line or reorder its text as shown, [`crate::log::must_escape`], as `\xNN`), so a request
//! cannot forge a line, break a field out of its quotes, or make one field look like another.
//!
//! Header atoms (`%({name}i)s` for a request header, `%({name}o)s` for a response header, as
//! gunicorn's) name their headers in the format, so a service keeps only those: a format
//! without one costs nothing per request ([`LogFormat::request_headers`],
//! [`LogFormat::response_headers`], [`Captured`]). gunicorn writes such a value raw; here it
//! is escaped as the other atoms are (bytes that are not UTF-8 as `\xNN` too), and what one
//! atom adds to a line is bounded ([`HEADER_ATOM_MAX`]): a client controls its headers, an
//! application its response headers, and neither may make one line arbitrarily long.
//!
//! Owns the format, the file and its reopening (USR1); knows nothing of how a service reads
//! requests: services fill a [`Record`].

use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method, StatusCode, Version};

use super::date::Utc;
use crate::net::Peer;

/// The format when none is given: gunicorn's default plus the response time in microseconds
/// (`%(D)s`), the line oxicorn has always written.
pub const DEFAULT_FORMAT: &str =
    r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s"#;

/// The most one header atom adds to a line, in bytes of escaped text: a longer value is cut
/// there and ends with `\...` (which no escaped value can contain: a `\` of the value is
/// written `\x5c`). Request headers are bounded by `--limit-request-field-size` already; a
/// response header, set by the application, by nothing else.
pub const HEADER_ATOM_MAX: usize = 1024;

/// One value a line can show: gunicorn's atom letters, with gunicorn's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atom {
    /// `h`: the client's address (`-` on a Unix socket).
    RemoteAddr,
    /// `l`: always `-` (identd).
    Ident,
    /// `u`: the user name; `-` (no authentication here).
    User,
    /// `t`: `[06/Nov/1994:08:49:37 +0000]`, when the line is written.
    Time,
    /// `r`: the request line, `GET /a?b HTTP/1.1`.
    RequestLine,
    /// `m`: the method.
    Method,
    /// `U`: the path, without the query, as sent (still percent-encoded).
    Path,
    /// `q`: the query string, without `?` (empty when none).
    Query,
    /// `H`: the protocol, `HTTP/1.1`.
    Protocol,
    /// `s`: the status code.
    Status,
    /// `b`: body bytes sent, `-` when nothing was sent.
    BodyBytesOrDash,
    /// `B`: body bytes sent, `0` when nothing was sent.
    BodyBytes,
    /// `f`: the `Referer` header.
    Referer,
    /// `a`: the `User-Agent` header.
    UserAgent,
    /// `T`: request time in whole seconds.
    Seconds,
    /// `M`: request time in whole milliseconds.
    Millis,
    /// `D`: request time in whole microseconds.
    Micros,
    /// `L`: request time in seconds with six decimals (`0.000123`).
    DecimalSeconds,
    /// `p`: the worker's pid, as gunicorn writes it: `<1234>`.
    Pid,
}

impl Atom {
    /// The atom for a letter, as gunicorn names them.
    fn from_letter(name: &str) -> Option<Atom> {
        Some(match name {
            "h" => Atom::RemoteAddr,
            "l" => Atom::Ident,
            "u" => Atom::User,
            "t" => Atom::Time,
            "r" => Atom::RequestLine,
            "m" => Atom::Method,
            "U" => Atom::Path,
            "q" => Atom::Query,
            "H" => Atom::Protocol,
            "s" => Atom::Status,
            "b" => Atom::BodyBytesOrDash,
            "B" => Atom::BodyBytes,
            "f" => Atom::Referer,
            "a" => Atom::UserAgent,
            "T" => Atom::Seconds,
            "M" => Atom::Millis,
            "D" => Atom::Micros,
            "L" => Atom::DecimalSeconds,
            "p" => Atom::Pid,
            _ => return None,
        })
    }
}

/// A piece of a parsed format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text copied as is (`%%` already turned into `%`).
    Literal(String),
    /// A value of the request.
    Atom(Atom),
    /// `%({name}i)s`: the request header at this index of [`LogFormat::request_headers`].
    RequestHeader(usize),
    /// `%({name}o)s`: the response header at this index of [`LogFormat::response_headers`].
    ResponseHeader(usize),
}

/// Why a format was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// `%(x)s` with an `x` that is not one of the atoms.
    #[error(
        "unknown atom `%({0})s`: use h l u t r m U q H s b B f a T M D L p, {{header}}i or \
         {{header}}o, as gunicorn's access_log_format"
    )]
    UnknownAtom(String),
    /// A `%` not followed by `(name)s` or `%`.
    #[error("`%` at byte {0} starts no atom: write atoms as %(h)s and a literal percent as %%")]
    BadPercent(usize),
    /// `%({…}i)s` or `%({…}o)s` whose braces hold no header name (empty, or not a token).
    #[error(
        "`%({0})s` names no header: put a header name between the braces, as in \
         %({{user-agent}}i)s or %({{content-type}}o)s"
    )]
    BadHeaderName(String),
    /// A format with nothing in it (or only spaces): every request would log an empty line.
    #[error(
        "an empty format would write an empty line per request: give atoms, such as \
         '%(h)s \"%(r)s\" %(s)s', or leave the access log file unset for no access log"
    )]
    Empty,
    /// `%({name}e)s`: gunicorn's WSGI environ variable, which no oxicorn service has.
    #[error(
        "`%({0})s` is a WSGI environ variable, which means nothing outside WSGI: log a request \
         header with %({{name}}i)s or a response header with %({{name}}o)s"
    )]
    EnvironAtom(String),
}

/// A parsed access-log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    parts: Vec<Part>,
    /// The request headers `%({name}i)s` atoms name, each once, lowercase.
    request_headers: Vec<HeaderName>,
    /// The response headers `%({name}o)s` atoms name, each once, lowercase.
    response_headers: Vec<HeaderName>,
}

impl Default for LogFormat {
    fn default() -> LogFormat {
        // `expect`: the default is a constant checked by a unit test.
        LogFormat::parse(DEFAULT_FORMAT).expect("the default access log format parses")
    }
}

impl LogFormat {
    /// Parses gunicorn's syntax: `%(name)s` for an atom, `%%` for `%`, anything else as is.
    /// `%({name}i)s` and `%({name}o)s` name a request and a response header, case-insensitively
    /// (gunicorn lowercases them too).
    ///
    /// # Errors
    /// A [`FormatError`] naming the unknown atom, the malformed header atom, or the position
    /// of a stray `%`; [`FormatError::Empty`] for a format of nothing but spaces.
    pub fn parse(format: &str) -> Result<LogFormat, FormatError> {
        // `OXICORN_ACCESS_LOGFORMAT=` or `access_logformat = ""` is a slip, not a wish for
        // blank lines.
        if format.trim().is_empty() {
            return Err(FormatError::Empty);
        }
        let mut request_headers: Vec<HeaderName> = Vec::new();
        let mut response_headers: Vec<HeaderName> = Vec::new();
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = format;
        while let Some(i) = rest.find('%') {
            literal.push_str(&rest[..i]);
            let at = format.len() - rest.len() + i;
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
                continue;
            }
            let Some((name, tail)) = after
                .strip_prefix('(')
                .and_then(|a| a.split_once(')'))
                .and_then(|(name, t)| Some((name, t.strip_prefix('s')?)))
            else {
                return Err(FormatError::BadPercent(at));
            };
            let part = match header_atom(name)? {
                Some((header, 'i')) => Part::RequestHeader(index_of(&mut request_headers, header)),
                Some((header, _)) => Part::ResponseHeader(index_of(&mut response_headers, header)),
                None => Part::Atom(
                    Atom::from_letter(name)
                        .ok_or_else(|| FormatError::UnknownAtom(name.to_string()))?,
                ),
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = tail;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(LogFormat {
            parts,
            request_headers,
            response_headers,
        })
    }

    /// The parsed pieces, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The request headers the format shows (`%({name}i)s`), each once, lowercase: what a
    /// service keeps of a request for its line, in this order ([`Captured`]). Empty for most
    /// formats, the default included.
    pub fn request_headers(&self) -> &[HeaderName] {
        &self.request_headers
    }

    /// The response headers the format shows (`%({name}o)s`), each once, lowercase.
    pub fn response_headers(&self) -> &[HeaderName] {
        &self.response_headers
    }

    /// The values of [`LogFormat::request_headers`] in `headers` (shared rather than copied:
    /// a `HeaderValue` hyper parsed is a slice of its read buffer, and its clone a reference
    /// count). Allocates nothing when the format names no request header.
    ///
    /// `authority` is the request target's (`uri.authority()`): an HTTP/2 or HTTP/3 request
    /// carries its host there, in `:authority`, and usually no `Host` line (RFC 9113
    /// §8.3.1), so `%({host}i)s` shows it when the request has no `Host`, as a proxy turning
    /// the request into HTTP/1.1 would write it. Without it every HTTP/2 line showed `-`.
    pub fn capture_request(
        &self,
        headers: &HeaderMap,
        authority: Option<&http::uri::Authority>,
    ) -> Captured<http::HeaderValue> {
        let mut kept = Captured::from_map(&self.request_headers, headers);
        if let Some(i) = self
            .request_headers
            .iter()
            .position(|n| n == http::header::HOST)
            && !headers.contains_key(http::header::HOST)
            && let Some(value) =
                authority.and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        {
            kept.push(i, value);
        }
        kept
    }

    /// The values of [`LogFormat::response_headers`] in `headers`, as
    /// [`LogFormat::capture_request`].
    pub fn capture_response(&self, headers: &HeaderMap) -> Captured<http::HeaderValue> {
        Captured::from_map(&self.response_headers, headers)
    }

    /// The line for `rec` at time `now`, with its newline.
    pub fn render(&self, rec: &Record<'_>, now: SystemTime) -> String {
        let mut line = String::with_capacity(160);
        for part in &self.parts {
            match part {
                Part::Literal(s) => line.push_str(s),
                Part::Atom(atom) => rec.write_atom(*atom, now, &mut line),
                Part::RequestHeader(i) => write_header(
                    rec.request_headers,
                    *i,
                    joiner(&self.request_headers[*i]),
                    &mut line,
                ),
                Part::ResponseHeader(i) => write_header(rec.response_headers, *i, ", ", &mut line),
            }
        }
        line.push('\n');
        line
    }
}

/// The header and kind (`i` or `o`) of a header atom's name (`{user-agent}i`), `None` for a
/// name that is not one (`h`, `{x}` alone: the caller reports it as unknown).
///
/// # Errors
/// An empty or malformed header name, or gunicorn's `{name}e` (WSGI environ).
fn header_atom(name: &str) -> Result<Option<(HeaderName, char)>, FormatError> {
    let Some(inner) = name.strip_prefix('{') else {
        return Ok(None);
    };
    let Some((header, kind)) = inner.rsplit_once('}') else {
        return Err(FormatError::BadHeaderName(name.to_string()));
    };
    let kind = match kind {
        "i" => 'i',
        "o" => 'o',
        "e" => return Err(FormatError::EnvironAtom(name.to_string())),
        _ => return Ok(None),
    };
    // `from_bytes` refuses anything but a token (RFC 9110 §5.1) and lowercases the rest.
    HeaderName::from_bytes(header.as_bytes())
        .map(|h| Some((h, kind)))
        .map_err(|_| FormatError::BadHeaderName(name.to_string()))
}

/// The index of `header` in `names`, added at the end if missing.
fn index_of(names: &mut Vec<HeaderName>, header: HeaderName) -> usize {
    names.iter().position(|n| *n == header).unwrap_or_else(|| {
        names.push(header);
        names.len() - 1
    })
}

/// Header values a service kept for the log: for each header a format names (by its index in
/// [`LogFormat::request_headers`] or [`LogFormat::response_headers`]), every value received,
/// in order. `V` is the value's storage: `HeaderValue` where the service has a `HeaderMap`
/// (shared with it), `Vec<u8>` where it copies out of its read buffer.
/// Empty (and unallocated) when the format names none.
#[derive(Debug, Clone)]
pub struct Captured<V = Vec<u8>> {
    values: Vec<(usize, V)>,
}

impl<V> Default for Captured<V> {
    fn default() -> Captured<V> {
        Captured { values: Vec::new() }
    }
}

impl<V: AsRef<[u8]>> Captured<V> {
    /// Keeps `value` as one of the values of the header at `index`.
    pub fn push(&mut self, index: usize, value: V) {
        self.values.push((index, value));
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl Captured<http::HeaderValue> {
    /// The values of `names` in `headers`, in `names`' order.
    fn from_map(names: &[HeaderName], headers: &HeaderMap) -> Captured<http::HeaderValue> {
        let mut kept = Captured::default();
        for (i, name) in names.iter().enumerate() {
            for value in headers.get_all(name) {
                kept.push(i, value.clone());
            }
        }
        kept
    }
}

/// Where a line finds the values of its header atoms.
pub trait HeaderValues: fmt::Debug {
    /// Calls `each` with every value of the header at `index` (of the format's list), in the
    /// order received; not at all when it is absent.
    fn each_value(&self, index: usize, each: &mut dyn FnMut(&[u8]));
}

impl<V: AsRef<[u8]> + fmt::Debug> HeaderValues for Captured<V> {
    fn each_value(&self, index: usize, each: &mut dyn FnMut(&[u8])) {
        for (i, v) in &self.values {
            if *i == index {
                each(v.as_ref());
            }
        }
    }
}

/// What joins the values of a request header received several times: `; ` for `Cookie`,
/// whose lines HTTP/2 clients send one per cookie and RFC 9113 §8.2.3 joins so (`a=1; b=2`,
/// one Cookie header's own syntax); `, ` for any other (RFC 9110 §5.3).
fn joiner(name: &HeaderName) -> &'static str {
    if name == http::header::COOKIE {
        "; "
    } else {
        ", "
    }
}

/// Writes the header at `index` of `values`: `-` when absent (as gunicorn) or empty, repeated
/// values joined with `joiner` (`, ` as RFC 9110 §5.3 combines field lines, see [`joiner`];
/// gunicorn keeps only the last), escaped and bounded as [`escape_value_into`] does.
fn write_header(values: Option<&dyn HeaderValues>, index: usize, joiner: &str, out: &mut String) {
    let start = out.len();
    let mut budget = HEADER_ATOM_MAX;
    let mut cut = false;
    let mut first = true;
    if let Some(values) = values {
        values.each_value(index, &mut |v| {
            if cut {
                return;
            }
            if !std::mem::take(&mut first) {
                if budget < joiner.len() {
                    cut = true;
                    return;
                }
                out.push_str(joiner);
                budget -= joiner.len();
            }
            cut = !escape_value_into(v, &mut budget, out);
        });
    }
    if cut {
        out.push_str("\\...");
    } else if out.len() == start {
        out.push('-');
    }
}

/// The request line of a [`Record`], when a head was read.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// The method.
    pub method: &'a Method,
    /// The target as sent (path and query, or absolute-form).
    pub target: &'a str,
    /// The protocol version.
    pub version: Version,
}

/// What one line is about: filled by the service that answered.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The client.
    pub peer: &'a Peer,
    /// `None` when the head could not be read (a 400, 408, 414 or 431 on the head itself).
    pub request: Option<RequestLine<'a>>,
    /// The status sent.
    pub status: StatusCode,
    /// Body bytes written; `None` when the response could not be written at all.
    pub body_bytes: Option<u64>,
    /// The `Referer` header, as received (escaped when written, bytes that are not UTF-8 as
    /// `\xNN`).
    pub referer: Option<&'a [u8]>,
    /// The `User-Agent` header, as received.
    pub user_agent: Option<&'a [u8]>,
    /// The request's headers that `%({name}i)s` atoms show ([`LogFormat::request_headers`]);
    /// `None` (every such atom `-`) when the head could not be read.
    pub request_headers: Option<&'a dyn HeaderValues>,
    /// The response's headers that `%({name}o)s` atoms show ([`LogFormat::response_headers`]):
    /// those the service set, not the framing the server adds as it writes (`Date`,
    /// `Content-Length`, `Connection`, ...); `None` when unknown.
    pub response_headers: Option<&'a dyn HeaderValues>,
    /// From a complete head to the last byte written.
    pub elapsed: Duration,
}

impl Record<'_> {
    fn write_atom(&self, atom: Atom, now: SystemTime, out: &mut String) {
        let dash = |v: Option<&str>, out: &mut String| match v {
            Some(s) => escape_into(s, out),
            None => out.push('-'),
        };
        // Unbounded: a request header is bounded by `--limit-request-field-size` already.
        let dash_bytes = |v: Option<&[u8]>, out: &mut String| match v {
            Some(b) => {
                let mut unbounded = usize::MAX;
                escape_value_into(b, &mut unbounded, out);
            }
            None => out.push('-'),
        };
        let (path, query) = match self.request.map(|r| r.target) {
            Some(t) => match t.split_once('?') {
                Some((p, q)) => (Some(p), Some(q)),
                None => (Some(t), Some("")),
            },
            None => (None, None),
        };
        let us = self.elapsed.as_micros();
        let _ = match atom {
            Atom::RemoteAddr => match self.peer {
                Peer::Tcp(a) => write!(out, "{}", a.ip()),
                Peer::Unix => write!(out, "-"),
            },
            Atom::Ident | Atom::User => write!(out, "-"),
            Atom::Time => write!(out, "{}", Utc::from_system(now).clf()),
            Atom::RequestLine => {
                match self.request {
                    Some(r) => {
                        escape_into(&format!("{} {} {:?}", r.method, r.target, r.version), out)
                    }
                    None => out.push('-'),
                }
                Ok(())
            }
            Atom::Method => {
                dash(self.request.map(|r| r.method.as_str()), out);
                Ok(())
            }
            Atom::Path => {
                dash(path, out);
                Ok(())
            }
            Atom::Query => {
                dash(query, out);
                Ok(())
            }
            Atom::Protocol => match self.request {
                Some(r) => write!(out, "{:?}", r.version),
                None => write!(out, "-"),
            },
            Atom::Status => write!(out, "{}", self.status.as_str()),
            Atom::BodyBytesOrDash => match self.body_bytes {
                Some(n) => write!(out, "{n}"),
                None => write!(out, "-"),
            },
            Atom::BodyBytes => write!(out, "{}", self.body_bytes.unwrap_or(0)),
            Atom::Referer => {
                dash_bytes(self.referer, out);
                Ok(())
            }
            Atom::UserAgent => {
                dash_bytes(self.user_agent, out);
                Ok(())
            }
            Atom::Seconds => write!(out, "{}", self.elapsed.as_secs()),
            Atom::Millis => write!(out, "{}", self.elapsed.as_millis()),
            Atom::Micros => write!(out, "{us}"),
            Atom::DecimalSeconds => write!(out, "{}.{:06}", us / 1_000_000, us % 1_000_000),
            Atom::Pid => write!(out, "<{}>", std::process::id()),
        };
    }
}

/// Appends the header value `v` as [`escape_into`] writes text, with bytes that are not UTF-8
/// as `\xNN` too, while it fits in `budget` bytes of output (decremented). Returns false when
/// the value was cut there.
fn escape_value_into(v: &[u8], budget: &mut usize, out: &mut String) -> bool {
    for chunk in v.utf8_chunks() {
        for c in chunk.valid().chars() {
            let escaped = c == '"' || c == '\\' || crate::log::must_escape(c);
            let len = if escaped {
                4 * c.len_utf8()
            } else {
                c.len_utf8()
            };
            if len > *budget {
                return false;
            }
            *budget -= len;
            if escaped {
                let mut b = [0u8; 4];
                for byte in c.encode_utf8(&mut b).bytes() {
                    let _ = write!(out, "\\x{byte:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            if *budget < 4 {
                return false;
            }
            *budget -= 4;
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    true
}

/// Appends `s` with `"`, `\` and the characters that would change how the line reads
/// ([`crate::log::must_escape`]: control characters, line separators, bidirectional
/// controls) as `\xNN` (each UTF-8 byte).
fn escape_into(s: &str, out: &mut String) {
    let mut unbounded = usize::MAX;
    escape_value_into(s.as_bytes(), &mut unbounded, out);
}

/// An open access log: where lines go and how they look.
#[derive(Debug)]
pub struct AccessLog {
    format: LogFormat,
    /// The file's path; `None` for stdout, which is never reopened.
    path: Option<PathBuf>,
    /// `O_APPEND`, one `write` per line. Behind a lock only so USR1 can swap in a reopened
    /// file; the runtime is single-threaded, so it is never contended.
    file: Mutex<File>,
}

impl AccessLog {
    /// Opens `path` for appending (created if missing); `-` is stdout.
    ///
    /// # Errors
    /// If the file cannot be opened; the message names it.
    pub fn open(path: &Path, format: LogFormat) -> io::Result<AccessLog> {
        let (file, path) = if path.as_os_str() == "-" {
            (File::from(io::stdout().as_fd().try_clone_to_owned()?), None)
        } else {
            (open_append(path)?, Some(path.to_path_buf()))
        };
        Ok(AccessLog {
            format,
            path,
            file: Mutex::new(file),
        })
    }

    /// Reopens the file (USR1, after logrotate moved it); stdout is left alone.
    ///
    /// # Errors
    /// If the file cannot be opened; the old one stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        if let Some(path) = &self.path {
            let fresh = open_append(path)?;
            *self.file.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        Ok(())
    }

    /// The format lines are written in (which headers to keep for them).
    pub fn format(&self) -> &LogFormat {
        &self.format
    }

    /// Writes the line for `rec`. A failed write is logged at debug level and dropped: the
    /// request has been answered, and a full disk must not take the service down.
    pub fn log(&self, rec: &Record<'_>) {
        let line = self.format.render(rec, SystemTime::now());
        // A panic elsewhere cannot leave a File half-updated: a poisoned lock is used as it is.
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::debug!(cause = %e, "cannot write the access log");
        }
    }
}

/// Opens an access log for appending, creating it.
fn open_append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(peer: &'a Peer, method: &'a Method) -> Record<'a> {
        Record {
            peer,
            request: Some(RequestLine {
                method,
                target: "/a b?x=\"1\"",
                version: Version::HTTP_11,
            }),
            status: StatusCode::PARTIAL_CONTENT,
            body_bytes: Some(42),
            referer: None,
            user_agent: Some(b"curl/8\n"),
            request_headers: None,
            response_headers: None,
            elapsed: Duration::from_micros(1_234_567),
        }
    }

    #[test]
    fn the_default_is_gunicorns_line_plus_microseconds() {
        let peer = Peer::Tcp("10.0.0.1:5555".parse().unwrap());
        let line = LogFormat::default().render(
            &record(&peer, &Method::GET),
            SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777),
        );
        assert_eq!(
            line,
            "10.0.0.1 - - [06/Nov/1994:08:49:37 +0000] \"GET /a b?x=\\x221\\x22 HTTP/1.1\" 206 42 \
             \"-\" \"curl/8\\x0a\" 1234567\n"
        );
    }

    #[test]
    fn every_atom() {
        let peer = Peer::Unix;
        let f = LogFormat::parse("%(m)s|%(U)s|%(q)s|%(H)s|%(T)s|%(M)s|%(L)s|%(B)s|%(h)s|100%%")
            .unwrap();
        let line = f.render(&record(&peer, &Method::HEAD), SystemTime::UNIX_EPOCH);
        assert_eq!(
            line,
            "HEAD|/a b|x=\\x221\\x22|HTTP/1.1|1|1234|1.234567|42|-|100%\n"
        );
        let pid = LogFormat::parse("%(p)s").unwrap();
        let line = pid.render(&record(&peer, &Method::GET), SystemTime::UNIX_EPOCH);
        assert_eq!(line, format!("<{}>\n", std::process::id()));
        let mut unread = record(&peer, &Method::GET);
        unread.request = None;
        unread.body_bytes = None;
        let f = LogFormat::parse("%(r)s %(m)s %(U)s %(b)s %(B)s").unwrap();
        assert_eq!(f.render(&unread, SystemTime::UNIX_EPOCH), "- - - - 0\n");
    }

    #[test]
    fn unknown_atoms_and_stray_percents_are_refused() {
        assert_eq!(
            LogFormat::parse("%(h)s %(z)s"),
            Err(FormatError::UnknownAtom("z".into()))
        );
        for blank in ["", " ", "\t\n"] {
            assert_eq!(
                LogFormat::parse(blank),
                Err(FormatError::Empty),
                "{blank:?}"
            );
        }
        assert_eq!(
            LogFormat::parse("%({x-forwarded-for}z)s"),
            Err(FormatError::UnknownAtom("{x-forwarded-for}z".into()))
        );
        assert_eq!(
            LogFormat::parse("50% %(h)s"),
            Err(FormatError::BadPercent(2))
        );
        assert_eq!(LogFormat::parse("%(h)d"), Err(FormatError::BadPercent(0)));
        assert_eq!(LogFormat::parse("%(h"), Err(FormatError::BadPercent(0)));
        assert_eq!(
            LogFormat::parse("a %(h)s b").unwrap().parts(),
            [
                Part::Literal("a ".into()),
                Part::Atom(Atom::RemoteAddr),
                Part::Literal(" b".into())
            ]
        );
    }

    #[test]
    fn header_atoms_name_headers_once_and_case_insensitively() {
        let f = LogFormat::parse(
            "%({User-Agent}i)s %({x-request-id}i)s %({user-agent}i)s %({Content-Type}o)s %(s)s",
        )
        .unwrap();
        assert_eq!(
            f.request_headers(),
            [
                HeaderName::from_static("user-agent"),
                HeaderName::from_static("x-request-id")
            ]
        );
        assert_eq!(
            f.response_headers(),
            [HeaderName::from_static("content-type")]
        );
        assert_eq!(
            f.parts()[..5],
            [
                Part::RequestHeader(0),
                Part::Literal(" ".into()),
                Part::RequestHeader(1),
                Part::Literal(" ".into()),
                Part::RequestHeader(0),
            ]
        );
        // None named: nothing to keep, so nothing is allocated per request.
        let plain = LogFormat::default();
        assert!(plain.request_headers().is_empty() && plain.response_headers().is_empty());
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "x".parse().unwrap());
        let kept = plain.capture_request(&headers, None);
        assert!(kept.is_empty() && kept.values.capacity() == 0);
    }

    #[test]
    fn malformed_header_atoms_are_refused_naming_them() {
        for (format, err) in [
            ("%({}i)s", FormatError::BadHeaderName("{}i".into())),
            ("%({a b}o)s", FormatError::BadHeaderName("{a b}o".into())),
            ("%({x\"y}i)s", FormatError::BadHeaderName("{x\"y}i".into())),
            ("%({host)s", FormatError::BadHeaderName("{host".into())),
            ("%({x}e)s", FormatError::EnvironAtom("{x}e".into())),
            ("%({x}io)s", FormatError::UnknownAtom("{x}io".into())),
            ("%({x})s", FormatError::UnknownAtom("{x}".into())),
            ("ab %({i", FormatError::BadPercent(3)),
            ("%({user-agent}i)d", FormatError::BadPercent(0)),
        ] {
            assert_eq!(LogFormat::parse(format), Err(err), "{format}");
        }
        let text = FormatError::EnvironAtom("{REMOTE_USER}e".into()).to_string();
        assert!(
            text.contains("`%({REMOTE_USER}e)s` is a WSGI environ variable"),
            "{text}"
        );
        let text = FormatError::BadHeaderName("{}i".into()).to_string();
        assert!(text.contains("`%({}i)s` names no header"), "{text}");
        assert!(text.contains("%({user-agent}i)s"), "{text}");
    }

    /// `%(a)s` and `%(f)s` show what was received, as the header atoms do: bytes that are not
    /// UTF-8 escaped, not the whole value dropped or replaced.
    #[test]
    fn user_agent_and_referer_bytes_are_escaped_not_dropped() {
        let peer = Peer::Unix;
        let mut rec = record(&peer, &Method::GET);
        rec.user_agent = Some(b"caf\xc3\xa9 \xff\"x\"");
        rec.referer = Some(b"http://r/\x7f");
        let f = LogFormat::parse("%(a)s|%(f)s").unwrap();
        assert_eq!(
            f.render(&rec, SystemTime::UNIX_EPOCH),
            "café \\xff\\x22x\\x22|http://r/\\x7f\n"
        );
    }

    /// HTTP/2 carries the host in `:authority`, not in a `Host` line: `%({host}i)s` shows
    /// it when there is no `Host`, and a `Host` received wins. Cookies sent one line per
    /// cookie (as HTTP/2 clients do) are joined as one Cookie header's syntax joins them.
    #[test]
    fn host_falls_back_to_the_authority_and_cookies_join_with_semicolons() {
        let f = LogFormat::parse("%({host}i)s|%({cookie}i)s|%({x-a}i)s").unwrap();
        let authority: http::uri::Authority = "example.com:8443".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1".parse().unwrap());
        headers.append("cookie", "b=2".parse().unwrap());
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        let kept = f.capture_request(&headers, Some(&authority));
        let peer = Peer::Unix;
        let mut rec = record(&peer, &Method::GET);
        rec.request_headers = Some(&kept);
        assert_eq!(
            f.render(&rec, SystemTime::UNIX_EPOCH),
            "example.com:8443|a=1; b=2|1, 2\n"
        );
        headers.insert("host", "h".parse().unwrap());
        let kept = f.capture_request(&headers, Some(&authority));
        rec.request_headers = Some(&kept);
        assert!(f.render(&rec, SystemTime::UNIX_EPOCH).starts_with("h|"));
        let kept = LogFormat::parse("%(h)s")
            .unwrap()
            .capture_request(&HeaderMap::new(), Some(&authority));
        assert!(kept.is_empty());
    }

    /// A Unicode line separator is a line break to many log viewers, and a bidirectional
    /// override shows the text after it reversed, so either lets a client make its value
    /// look like a second line or another field: both are escaped wherever a client's text
    /// goes (a header atom, `%(a)s`, the request line).
    #[test]
    fn characters_that_break_or_reorder_a_line_are_escaped() {
        let peer = Peer::Unix;
        let mut rec = record(&peer, &Method::GET);
        rec.user_agent = Some("a\u{2028}b\u{202e}c\u{2066}".as_bytes());
        rec.request = Some(RequestLine {
            method: &Method::GET,
            target: "/\u{2029}",
            version: Version::HTTP_11,
        });
        let mut req: Captured = Captured::default();
        req.push(0, "x\u{2028}200 \u{202e}y".as_bytes().to_vec());
        rec.request_headers = Some(&req);
        let f = LogFormat::parse("%(a)s|%({x-a}i)s|%(r)s").unwrap();
        assert_eq!(
            f.render(&rec, SystemTime::UNIX_EPOCH),
            "a\\xe2\\x80\\xa8b\\xe2\\x80\\xaec\\xe2\\x81\\xa6|\
             x\\xe2\\x80\\xa8200 \\xe2\\x80\\xaey|GET /\\xe2\\x80\\xa9 HTTP/1.1\n"
        );
    }

    #[test]
    fn header_values_are_escaped_joined_and_bounded() {
        let f = LogFormat::parse("[%({x-a}i)s] [%({x-b}i)s] [%({x-c}o)s]").unwrap();
        let peer = Peer::Unix;
        let mut req: Captured = Captured::default();
        req.push(0, b"say \"hi\"\\\x01\t\xff\xc3\xa9".to_vec());
        req.push(0, b"second".to_vec());
        let mut rec = record(&peer, &Method::GET);
        rec.request_headers = Some(&req);
        // x-b absent, x-c on a record without response headers: both `-`.
        assert_eq!(
            f.render(&rec, SystemTime::UNIX_EPOCH),
            "[say \\x22hi\\x22\\x5c\\x01\\x09\\xffé, second] [-] [-]\n"
        );
        // A long value is cut at the bound, never inside an escape, and says so.
        let mut resp: Captured = Captured::default();
        let mut long = b"a".repeat(HEADER_ATOM_MAX - 2);
        long.extend_from_slice(b"\"\"");
        resp.push(0, long);
        rec.response_headers = Some(&resp);
        let line = f.render(&rec, SystemTime::UNIX_EPOCH);
        let shown = &line[line.rfind('[').unwrap() + 1..line.rfind(']').unwrap()];
        assert_eq!(shown, format!("{}\\...", "a".repeat(HEADER_ATOM_MAX - 2)));
        let mut huge: Captured = Captured::default();
        huge.push(0, vec![b'\n'; 100_000]);
        rec.response_headers = Some(&huge);
        let line = f.render(&rec, SystemTime::UNIX_EPOCH);
        assert!(line.len() < 2 * HEADER_ATOM_MAX, "{}", line.len());
        assert!(line.ends_with("\\x0a\\...]\n"), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
        // Present but empty is `-` too.
        let mut empty: Captured = Captured::default();
        empty.push(0, Vec::new());
        rec.response_headers = Some(&empty);
        assert!(f.render(&rec, SystemTime::UNIX_EPOCH).ends_with("[-]\n"));
    }
}
