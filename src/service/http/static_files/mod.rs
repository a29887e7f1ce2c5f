//! `static`: files under a directory over HTTP/1.1 (and 1.0), keep-alive and pipelining.
//!
//! A small hand-written HTTP path rather than hyper: a file server reads one head, answers from
//! the filesystem and never reads a body, so the whole protocol surface is the head parser
//! ([`request`], on `httparse`), the path rules ([`path`], [`files`]) and a response writer
//! that sends headers and small files in one `write` and large files with `sendfile(2)`.
//!
//! Layers, each in its own file: [`conn`] (the connection loop: waits, timeouts, keep-alive),
//! [`request`] (the head), [`resolve`] (routing, variants, conditionals, ranges, multipart, on
//! top of [`path`], [`files`], [`range`] and [`listing`]), [`response`] (the writer) and
//! [`wire`] (a registered stream, or a connection just accepted and served without
//! registering it while nothing would block). This
//! module holds what one worker opened for the service. It may use `net`, the service context
//! and the shared HTTP pieces; it never touches the arbiter, the worker's accept loop or the
//! bus.
//!
//! A response's length is fixed from `fstat` on the descriptor we keep open; `sendfile` sends
//! at most that, and if the file shrank under us the connection is closed short, which every
//! client detects against Content-Length. A renamed-over or deleted file is still sent whole
//! from the open descriptor. With `open_file_cache_valid`, a small file may instead be sent
//! from the bytes the cache read with its `fstat` (see [`files::FileCache`]).

pub mod conn;
pub mod files;
pub mod listing;
pub mod path;
pub mod range;
pub mod request;
pub mod resolve;
pub mod response;
pub mod wire;

pub use conn::serve;

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use self::files::{OpenError, Opened};
use self::request::Limits;
use super::access_log::{AccessLog, LogFormat};
use crate::config::StaticConfig;

/// The `static` service, as opened in one worker.
#[derive(Debug)]
pub struct StaticService {
    config: StaticConfig,
    limits: Limits,
    /// The root directory (`O_PATH`), the anchor of every `openat2`. Opened after fork, so each
    /// worker has its own; closed with the service.
    root_fd: OwnedFd,
    /// The access log, if one is configured.
    access_log: Option<AccessLog>,
    /// Open regular files, revalidated with `fstat` per request or per
    /// `open_file_cache_valid` (see [`files::FileCache`]).
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
        let format = match &config.access_logformat {
            Some(f) => LogFormat::parse(f)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
            None => LogFormat::default(),
        };
        let access_log = match &config.access_logfile {
            Some(path) => Some(AccessLog::open(path, format)?),
            None => None,
        };
        Ok(StaticService {
            limits: Limits {
                request_line: config.limit_request_line,
                fields: config.limit_request_fields,
                field_size: config.limit_request_field_size,
            },
            config: config.clone(),
            root_fd,
            access_log,
            cache: files::FileCache::for_fd_limit(config.open_file_cache_valid),
        })
    }
}

impl StaticService {
    /// Reopens the access log file (USR1, after logrotate moved it); stdout is left alone.
    ///
    /// # Errors
    /// If the file cannot be opened; the old one stays in use.
    pub fn reopen_logs(&self) -> io::Result<()> {
        match &self.access_log {
            Some(log) => log.reopen(),
            None => Ok(()),
        }
    }

    /// The request headers the access log's format names (`%({name}i)s`), which the head
    /// parser keeps; none without an access log.
    pub fn logged_request_headers(&self) -> &[http::HeaderName] {
        self.access_log
            .as_ref()
            .map_or(&[], |log| log.format().request_headers())
    }

    /// Opens `rel` below the root through the open-file cache, with this service's symlink
    /// rule (see [`files::FileCache::open_at`]); `now` is the request's start.
    ///
    /// # Errors
    /// An [`OpenError`] naming the status to answer.
    pub fn open_path(&self, rel: &Path, now: std::time::Instant) -> Result<Opened, OpenError> {
        self.cache.open_at(
            &self.root_fd,
            &self.config.root,
            rel,
            self.config.follow_symlinks,
            now,
        )
    }

    /// Which precompressed siblings of `rel` exist, as a bit mask over `suffixes` (see
    /// [`files::FileCache::siblings`]).
    pub fn siblings(&self, rel: &Path, suffixes: &[&str]) -> u8 {
        self.cache.siblings(
            &self.root_fd,
            &self.config.root,
            rel,
            self.config.follow_symlinks,
            suffixes,
        )
    }

    /// Makes the next request for the paths cached with `file` open and `fstat` them afresh
    /// (see [`files::FileCache::distrust`]): a response found the file shorter than it was
    /// served as.
    pub fn distrust(&self, file: &std::sync::Arc<std::fs::File>) {
        self.cache.distrust(file);
    }

    /// A precompressed variant of a file, if there is one (see
    /// [`files::FileCache::open_variant_at`]); `now` is the request's start.
    pub fn open_variant(&self, rel: &Path, now: std::time::Instant) -> Option<Opened> {
        self.cache.open_variant_at(
            &self.root_fd,
            &self.config.root,
            rel,
            self.config.follow_symlinks,
            now,
        )
    }
}

#[cfg(test)]
mod memory {
    use crate::service::test_support::{pair, runtime, static_config};

    /// Every idle kept-alive connection holds one `serve` future; the benchmark counts 10,000
    /// of them. Request state is boxed inside, so this stays small; a stack buffer or a timer
    /// added to the wrong place shows here.
    #[test]
    fn an_idle_connection_future_stays_small() {
        runtime().block_on(async {
            let (stream, _client) = pair().await;
            let ctx =
                crate::service::ConnContext::detached(crate::net::Peer::Unix, Default::default());
            let dir = tempfile::tempdir().unwrap();
            let svc = super::StaticService::open(&static_config(dir.path())).unwrap();
            let f = super::serve(stream, &ctx, &svc);
            let size = std::mem::size_of_val(&f);
            // 592 on rustc 1.95 (at most 512 before parking: the moment to park, the deadline
            // a resumed connection starts with, where to park). A kept-alive connection holds
            // it only until it parks (`service::park::PARK_AFTER`), then none.
            assert!(size <= 600, "serve future is {size} bytes");
        });
    }
}
