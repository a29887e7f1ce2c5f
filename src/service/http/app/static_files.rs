//! The static file service as a `tower::Service`, for applications: mount it with axum's
//! `nest_service("/static", StaticFiles::new("public"))` and it answers as the `static`
//! service does (the same code decides every reply): traversal-safe opens below the root,
//! Range and multipart ranges, ETag / Last-Modified conditionals, precompressed `.br`/`.gz`
//! siblings, directory listings.
//!
//! Only the transport differs: bodies go through hyper as 64 KiB reads (`pread` on the
//! worker's thread, as the `static` service's opens are) instead of `sendfile`. Two things
//! know they are nested: a directory's trailing-slash redirect is relative (`sub/`), so it
//! lands under the mount point; the listing's breadcrumb links still start at `/`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use crate::config::StaticConfig;
use crate::service::http::static_files::StaticService;
use crate::service::http::static_files::request::Head;
use crate::service::http::static_files::resolve::respond;
use crate::service::http::static_files::response::{Piece, Reply};

/// Largest read for one body frame.
const CHUNK: u64 = 64 * 1024;

/// Files under a directory, as a `tower::Service` (module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    /// `Err` when the root could not be opened: every request then gets 500 (see
    /// [`StaticFiles::new`]).
    inner: Result<Arc<StaticService>, Arc<io::Error>>,
}

impl StaticFiles {
    /// Serves `root` with the `static` service's defaults (listing on, dotfiles hidden,
    /// symlinks kept inside the root, no access log: the app's log has the request).
    ///
    /// A root that cannot be opened is logged here, once, and answered with 500; use
    /// [`StaticFiles::open`] to fail the worker's boot instead.
    pub fn new(root: impl AsRef<Path>) -> StaticFiles {
        let root = root.as_ref();
        match Self::open(root) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(root = %root.display(), cause = %e, "cannot serve static files");
                StaticFiles {
                    inner: Err(Arc::new(e)),
                }
            }
        }
    }

    /// Serves `root`, or says why it cannot.
    ///
    /// # Errors
    /// If `root` is not a directory that can be opened.
    pub fn open(root: impl AsRef<Path>) -> io::Result<StaticFiles> {
        let root = std::fs::canonicalize(root.as_ref())?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        // The `static` service's defaults; the timeouts and head limits are the app's
        // (hyper reads the heads), so these are not used.
        let config = StaticConfig {
            root,
            keep_alive: Duration::ZERO,
            header_timeout: Duration::from_secs(10),
            limit_request_line: 4094,
            limit_request_fields: 100,
            limit_request_field_size: 8190,
            follow_symlinks: false,
            show_hidden: false,
            listing: true,
            access_logfile: None,
            access_logformat: None,
            max_age: None,
        };
        Ok(StaticFiles {
            inner: Ok(Arc::new(StaticService::open(&config)?)),
        })
    }

    fn reply<B>(&self, req: &Request<B>) -> Response<FileBody> {
        let svc = match &self.inner {
            Ok(s) => s,
            Err(_) => return to_response(Reply::error(StatusCode::INTERNAL_SERVER_ERROR), ""),
        };
        let text = |name: HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        let head = Head {
            method: req.method().clone(),
            minor: 1,
            keep_alive: true,
            if_match: text(header::IF_MATCH),
            if_none_match: text(header::IF_NONE_MATCH),
            if_modified_since: text(header::IF_MODIFIED_SINCE),
            if_unmodified_since: text(header::IF_UNMODIFIED_SINCE),
            if_range: text(header::IF_RANGE),
            range: text(header::RANGE),
            accept_encoding: text(header::ACCEPT_ENCODING),
            target,
            ..Head::default()
        };
        to_response(respond(&head, svc), req.uri().path())
    }
}

impl<B> tower::Service<Request<B>> for StaticFiles {
    type Response = Response<FileBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<FileBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.reply(&req)))
    }
}

/// A static [`Reply`] as an `http::Response`. `path` is the request's path as this service
/// saw it, for the relative redirect.
fn to_response(reply: Reply, path: &str) -> Response<FileBody> {
    let mut response = Response::new(FileBody {
        pieces: if reply.head_only {
            VecDeque::new()
        } else {
            reply.body.into()
        },
        file: reply.file,
        left: if reply.head_only { 0 } else { reply.len },
    });
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    for line in reply.headers.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(n, v);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(reply.len));
    if reply.status == StatusCode::MOVED_PERMANENTLY
        && let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
        && loc.ends_with('/')
    {
        // `/sub` → `sub/`: relative to the request, so it stays under the mount point.
        let last = path.rsplit('/').next().unwrap_or("");
        let query = loc.split_once('?').map(|(_, q)| q);
        let to = match query {
            Some(q) => format!("{last}/?{q}"),
            None => format!("{last}/"),
        };
        if let Ok(v) = HeaderValue::from_str(&to) {
            headers.insert(header::LOCATION, v);
        }
    }
    response
}

/// A reply's body: its pieces, file ranges read as they are sent.
#[derive(Debug)]
pub struct FileBody {
    pieces: VecDeque<Piece>,
    file: Option<Arc<File>>,
    /// Bytes still to send (the size hint).
    left: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let Some(piece) = this.pieces.pop_front() else {
            return Poll::Ready(None);
        };
        let data = match piece {
            Piece::Bytes(b) => Bytes::from(b),
            Piece::File { offset, len } => {
                let Some(file) = &this.file else {
                    return Poll::Ready(Some(Err(io::Error::other("a file piece without a file"))));
                };
                let n = len.min(CHUNK);
                let mut buf = vec![0u8; n as usize];
                let got = match file.read_at(&mut buf, offset) {
                    Ok(0) => {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank while it was sent",
                        ))));
                    }
                    Ok(got) => got as u64,
                    Err(e) => return Poll::Ready(Some(Err(e))),
                };
                buf.truncate(got as usize);
                if got < len {
                    this.pieces.push_front(Piece::File {
                        offset: offset + got,
                        len: len - got,
                    });
                }
                Bytes::from(buf)
            }
        };
        this.left = this.left.saturating_sub(data.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
