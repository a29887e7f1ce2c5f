//! The access log: one line per answered request, in a format given as gunicorn's
//! `--access-logformat` (its `%(atom)s` syntax and atom letters), for any HTTP service.
//!
//! The format is parsed once (at config check and when a worker opens the log) into a list of
//! [`Part`]s; an unknown atom is a configuration error, not a line with a hole in it. A line is
//! built in memory and written with one `write(2)` on an `O_APPEND` file, so lines from
//! several workers never interleave. Text the client chose (request line, path, query, referer,
//! user agent) is escaped (`"`, `\` and control characters as `\xNN`), so a request cannot
//! forge a line or break a field out of its quotes.
//!
//! Owns the format, the file and its reopening (USR1); knows nothing of how a service reads
//! requests: services fill a [`Record`].

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode, Version};

use super::date::Utc;
use crate::net::Peer;

/// The format when none is given: gunicorn's default plus the response time in microseconds
/// (`%(D)s`), the line oxicorn has always written.
pub const DEFAULT_FORMAT: &str =
    r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s"#;

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
}

/// Why a format was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// `%(x)s` with an `x` that is not one of the atoms.
    #[error(
        "unknown atom `%({0})s`: use h l u t r m U q H s b B f a T M D L p, as gunicorn's access_log_format"
    )]
    UnknownAtom(String),
    /// A `%` not followed by `(name)s` or `%`.
    #[error("`%` at byte {0} starts no atom: write atoms as %(h)s and a literal percent as %%")]
    BadPercent(usize),
}

/// A parsed access-log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat {
    parts: Vec<Part>,
}

impl Default for LogFormat {
    fn default() -> LogFormat {
        // `expect`: the default is a constant checked by a unit test.
        LogFormat::parse(DEFAULT_FORMAT).expect("the default access log format parses")
    }
}

impl LogFormat {
    /// Parses gunicorn's syntax: `%(name)s` for an atom, `%%` for `%`, anything else as is.
    ///
    /// # Errors
    /// A [`FormatError`] naming the unknown atom or the position of a stray `%`.
    pub fn parse(format: &str) -> Result<LogFormat, FormatError> {
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
            let atom = Atom::from_letter(name)
                .ok_or_else(|| FormatError::UnknownAtom(name.to_string()))?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Atom(atom));
            rest = tail;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(LogFormat { parts })
    }

    /// The parsed pieces, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The line for `rec` at time `now`, with its newline.
    pub fn render(&self, rec: &Record<'_>, now: SystemTime) -> String {
        let mut line = String::with_capacity(160);
        for part in &self.parts {
            match part {
                Part::Literal(s) => line.push_str(s),
                Part::Atom(atom) => rec.write_atom(*atom, now, &mut line),
            }
        }
        line.push('\n');
        line
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
    /// The `Referer` header.
    pub referer: Option<&'a str>,
    /// The `User-Agent` header.
    pub user_agent: Option<&'a str>,
    /// From a complete head to the last byte written.
    pub elapsed: Duration,
}

impl Record<'_> {
    fn write_atom(&self, atom: Atom, now: SystemTime, out: &mut String) {
        let dash = |v: Option<&str>, out: &mut String| match v {
            Some(s) => escape_into(s, out),
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
                dash(self.referer, out);
                Ok(())
            }
            Atom::UserAgent => {
                dash(self.user_agent, out);
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

/// Appends `s` with `"`, `\` and control characters as `\xNN` (each UTF-8 byte).
fn escape_into(s: &str, out: &mut String) {
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
            user_agent: Some("curl/8\n"),
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
        assert_eq!(
            LogFormat::parse("%({x-forwarded-for}i)s"),
            Err(FormatError::UnknownAtom("{x-forwarded-for}i".into()))
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
}
