//! The application's access log: one line per request, off unless a file (or `-`) is given.
//!
//! The line is the static service's (gunicorn's default format plus the response time in
//! microseconds, `%(D)s`) followed by the worker pid (`<%(p)s>`). Everything funnels through
//! [`AccessLog::record`], so moving to the shared `service::http::access_log` module (gunicorn
//! `--access-logformat` atoms) is a change to that one function.

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Where access lines go: stdout (`-`) or a file opened for append (`O_APPEND`, one `write`
/// per line, so the workers' lines never interleave).
#[derive(Debug)]
pub struct AccessLog {
    path: Option<PathBuf>,
    out: Mutex<Sink>,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    File(File),
}

/// One request, as the access log sees it.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// The client (after trusted forwarding headers), `None` for a Unix peer.
    pub client: Option<IpAddr>,
    /// `METHOD TARGET HTTP/x.y`, or `-` when no head was read.
    pub request_line: &'a str,
    /// The status sent.
    pub status: u16,
    /// Body bytes sent; `None` when nothing was.
    pub bytes: Option<u64>,
    /// `Referer`.
    pub referer: Option<&'a str>,
    /// `User-Agent`.
    pub user_agent: Option<&'a str>,
    /// From the head to the end of the response body.
    pub duration: Duration,
}

impl AccessLog {
    /// Opens `path` for appending, creating it; `-` is stdout.
    ///
    /// # Errors
    /// If the file cannot be opened (a worker boot error).
    pub fn open(path: &Path) -> io::Result<AccessLog> {
        let (sink, path) = if path.as_os_str() == "-" {
            (Sink::Stdout, None)
        } else {
            (Sink::File(open_append(path)?), Some(path.to_path_buf()))
        };
        Ok(AccessLog {
            path,
            out: Mutex::new(sink),
        })
    }

    /// Reopens the file (USR1, after logrotate moved it); stdout is left alone.
    ///
    /// # Errors
    /// If the file cannot be reopened; the old one stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        if let Some(path) = &self.path {
            let file = open_append(path)?;
            *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Sink::File(file);
        }
        Ok(())
    }

    /// Writes one line. A failed write is logged at debug level and otherwise ignored: the
    /// request has been served either way.
    pub fn record(&self, r: &AccessRecord<'_>) {
        let host = r
            .client
            .map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let date = httpdate::fmt_http_date(SystemTime::now());
        // "Sun, 29 Nov 2026 23:10:00 GMT" → "29/Nov/2026:23:10:00 +0000"
        let p: Vec<&str> = date.split_whitespace().collect();
        let when = if p.len() >= 5 {
            format!("{}/{}/{}:{} +0000", p[1], p[2], p[3], p[4])
        } else {
            date.clone()
        };
        let field = |v: Option<&str>| v.map_or_else(|| "-".to_string(), escape);
        let line = format!(
            "{host} - - [{when}] \"{}\" {} {} \"{}\" \"{}\" {} <{}>\n",
            escape(r.request_line),
            r.status,
            r.bytes.map_or_else(|| "-".to_string(), |b| b.to_string()),
            field(r.referer),
            field(r.user_agent),
            r.duration.as_micros(),
            std::process::id(),
        );
        // A panic elsewhere cannot leave a File half-updated: a poisoned lock is used as it is.
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let res = match &mut *out {
            Sink::Stdout => io::stdout().lock().write_all(line.as_bytes()),
            Sink::File(f) => f.write_all(line.as_bytes()),
        };
        if let Err(e) = res {
            tracing::debug!(cause = %e, "cannot write the access log");
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// `"`, `\` and control characters as `\xNN`, so a request cannot forge log lines.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            for b in c.to_string().bytes() {
                out.push_str(&format!("\\x{b:02x}"));
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
    fn one_line_in_gunicorn_format_with_time_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(&path).unwrap();
        log.record(&AccessRecord {
            client: Some("10.1.2.3".parse().unwrap()),
            request_line: "GET /a\"b HTTP/1.1",
            status: 200,
            bytes: Some(5),
            referer: None,
            user_agent: Some("curl/8"),
            duration: Duration::from_micros(1234),
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let pid = std::process::id();
        assert!(text.starts_with("10.1.2.3 - - ["), "{text}");
        assert!(
            text.ends_with(&format!(
                "] \"GET /a\\x22b HTTP/1.1\" 200 5 \"-\" \"curl/8\" 1234 <{pid}>\n"
            )),
            "{text}"
        );
    }
}
