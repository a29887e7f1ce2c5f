//! `static`: files under a directory over HTTP/1.1 (and 1.0), keep-alive and pipelining.
//!
//! A small hand-written HTTP path rather than hyper: a file server reads one head, answers from
//! the filesystem and never reads a body, so the whole protocol surface is the head parser
//! ([`request`], on `httparse`), the path rules ([`path`], [`files`]) and a response writer
//! that sends headers and small files in one `write` and large files with `sendfile(2)`.
//!
//! Layers, each in its own file: [`conn`] (the connection loop: waits, timeouts, keep-alive),
//! [`request`] (the head), [`resolve`] (routing, variants, conditionals, ranges, multipart, on
//! top of [`path`], [`files`], [`range`] and [`listing`]) and [`response`] (the writer). This
//! module holds what one worker opened for the service. It may use `net`, the service context
//! and the shared HTTP pieces; it never touches the arbiter, the worker's accept loop or the
//! bus.
//!
//! A response's length is fixed from `fstat` on the descriptor we keep open; `sendfile` sends
//! at most that, and if the file shrank under us the connection is closed short, which every
//! client detects against Content-Length. A renamed-over or deleted file is still sent whole
//! from the open descriptor.

pub mod conn;
pub mod files;
pub mod listing;
pub mod path;
pub mod range;
pub mod request;
pub mod resolve;
pub mod response;

pub use conn::serve;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::Instant;

use self::files::{OpenError, Opened};
use self::request::{Head, Limits};
use self::response::Sent;
use super::date;
use crate::config::StaticConfig;
use crate::net::Peer;
use crate::service::ConnContext;

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

    /// Opens `rel` below the root through the open-file cache, with this service's symlink
    /// rule (see [`files::FileCache::open`]).
    ///
    /// # Errors
    /// An [`OpenError`] naming the status to answer.
    pub fn open_path(&self, rel: &str) -> Result<Opened, OpenError> {
        self.cache.open(
            &self.root_fd,
            &self.config.root,
            rel,
            self.config.follow_symlinks,
        )
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

/// One access-log line in gunicorn's default format
/// (`%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"`) plus the response time in
/// microseconds (gunicorn's `%(D)s`). Client-supplied text is escaped so a request cannot
/// forge log lines.
pub(crate) fn log_access(
    svc: &StaticService,
    ctx: &ConnContext,
    head: Option<&Head>,
    status: http::StatusCode,
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
    let when = date::Utc::from_system(std::time::SystemTime::now()).clf();
    let request = head.map_or("-".to_string(), |h| {
        format!("{} {} HTTP/1.{}", h.method, h.target, h.minor)
    });
    let field = |v: Option<&String>| v.map_or("-".to_string(), |s| escape_log(s));
    let bytes = sent.map_or("-".to_string(), |s| s.body.to_string());
    let line = format!(
        "{host} - - {when} \"{}\" {} {bytes} \"{}\" \"{}\" {}\n",
        escape_log(&request),
        status.as_str(),
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
                metrics: crate::service::metrics::Metrics::new(slot),
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
