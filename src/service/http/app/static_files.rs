//! The static file service as a `tower::Service`, for applications: mount it with axum's
//! `nest_service("/static", StaticFiles::new("public"))` and it answers as the `static`
//! service does (the same code decides every reply): traversal-safe opens below the root,
//! Range and multipart ranges, ETag / Last-Modified conditionals, precompressed `.br`/`.gz`
//! siblings, directory listings.
//!
//! Only the transport differs: bodies go through hyper as 64 KiB reads (`pread` on the
//! worker's thread, as the `static` service's opens are) instead of `sendfile`.
//!
//! Under a mount point (`/static`), a router hands the service the request with the prefix
//! stripped (`/sub/`), so what the static code writes is relative to the mount point. The
//! service finds the mount point by comparing that path with the one oxicorn received
//! (`ReceivedUri`, put on every request before the app sees it once this process has made a
//! `StaticFiles`: `in_use`), or takes it from
//! [`StaticFiles::mount_path`] (needed when the prefix was stripped before oxicorn, by a
//! proxy). Then a directory's trailing-slash redirect is relative (`sub/`), the listing's
//! title and breadcrumbs and the 404 page's root link name the mount point
//! ([`listing::remount`], [`listing::not_found_at`]), and the mount point itself without its
//! slash (`/static`, which axum routes to the root as `/`) is redirected to `static/`, so the
//! listing's relative links resolve below it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::ReceivedUri;
use crate::config::StaticConfig;
use crate::service::http::static_files::StaticService;
use crate::service::http::static_files::listing;
use crate::service::http::static_files::request::Head;
use crate::service::http::static_files::resolve::respond;
use crate::service::http::static_files::response::{Piece, Reply};

/// Largest read for one body frame.
const CHUNK: u64 = 64 * 1024;

/// Set when this process makes its first [`StaticFiles`]: only then do requests carry the
/// [`ReceivedUri`] it finds its mount point by (an extension costs a map and a box per
/// request; an app without static files pays nothing). Apps build their router, and with it
/// their `StaticFiles`, in the factory, before the first request.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Whether a [`StaticFiles`] was made in this process, so requests must carry their
/// [`ReceivedUri`].
pub(crate) fn in_use() -> bool {
    IN_USE.load(Ordering::Relaxed)
}

/// Files under a directory, as a `tower::Service` (module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    /// `Err` when the root could not be opened: every request then gets 500 (see
    /// [`StaticFiles::new`]).
    inner: Result<Arc<StaticService>, Arc<io::Error>>,
    /// Set by [`StaticFiles::mount_path`]; otherwise found per request (module docs).
    mount: Option<Arc<str>>,
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
                    mount: None,
                }
            }
        }
    }

    /// Serves `root`, or says why it cannot.
    ///
    /// # Errors
    /// If `root` is not a directory that can be opened.
    pub fn open(root: impl AsRef<Path>) -> io::Result<StaticFiles> {
        // Before any early return: `new` goes through here, whatever becomes of the root.
        IN_USE.store(true, Ordering::Relaxed);
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
            open_file_cache_valid: Duration::ZERO,
        };
        Ok(StaticFiles {
            inner: Ok(Arc::new(StaticService::open(&config)?)),
            mount: None,
        })
    }

    /// Says where the files are mounted in the site's URL space (`"/static"`; a trailing
    /// slash is ignored), for the listing's breadcrumbs and the 404 page's root link.
    ///
    /// Not needed under oxicorn with a router that strips its prefix (axum's
    /// `nest_service`): the mount point is found from the request. Needed when the prefix
    /// was stripped before the request reached oxicorn (a proxy's `location /files/ {
    /// proxy_pass http://app/; }`), or when the service runs outside oxicorn's server.
    pub fn mount_path(mut self, path: &str) -> StaticFiles {
        let path = path.trim_end_matches('/');
        self.mount = (!path.is_empty()).then(|| Arc::from(path));
        self
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
        let seen = req.uri().path();
        let mount = match (&self.mount, Mount::find(req)) {
            // The mount point itself without its slash: to the listing, with the slash.
            (_, Some(Mount::Bare(last))) if matches!(*req.method(), Method::GET | Method::HEAD) => {
                return bare_mount_redirect(&last, req.uri().query());
            }
            (Some(m), _) => Some(m.to_string()),
            (None, Some(Mount::Below(m))) => Some(m),
            (None, _) => None,
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
        // A HEAD answer has no content (RFC 9110 §9.3.2), whichever server writes it: not
        // every one drops it (hyper's HTTP/2 sends it).
        let mut reply = respond(&head, svc).head_only(head.method == Method::HEAD);
        if let Some(mount) = mount {
            remount(&mut reply, &mount, seen);
        }
        to_response(reply, seen)
    }
}

/// Where a nested request's prefix went.
#[derive(Debug, PartialEq, Eq)]
enum Mount {
    /// The tree is mounted at this path (`/static`): the received path is it plus the path
    /// the service sees.
    Below(String),
    /// The request named the mount point itself without its slash (`/static`, seen as `/`);
    /// holds its last segment (`static`), what a relative redirect needs.
    Bare(String),
}

impl Mount {
    /// The mount point of `req`, from the path oxicorn received; `None` when the request was
    /// not rewritten (no mount) or oxicorn did not serve it (no [`ReceivedUri`]).
    fn find<B>(req: &Request<B>) -> Option<Mount> {
        let received = req.extensions().get::<ReceivedUri>()?.0.path();
        Mount::of(received, req.uri().path())
    }

    fn of(received: &str, seen: &str) -> Option<Mount> {
        if received == seen || !seen.starts_with('/') {
            return None;
        }
        if seen == "/" && !received.ends_with('/') {
            let last = received.rsplit('/').next().unwrap_or("");
            return (!last.is_empty()).then(|| Mount::Bare(last.to_string()));
        }
        // axum strips `/static` from `/static//nope` leaving `/nope`: the slashes between the
        // mount point and the rest are the mount point's separator, not part of it.
        let prefix = received.strip_suffix(seen)?.trim_end_matches('/');
        (prefix.starts_with('/')).then(|| Mount::Below(prefix.to_string()))
    }
}

/// `301` from `/static` to `static/` (relative: right whatever the prefix above it).
fn bare_mount_redirect(last: &str, query: Option<&str>) -> Response<FileBody> {
    let mut to = format!("{last}/");
    if let Some(q) = query {
        to.push('?');
        to.push_str(q);
    }
    let mut r = to_response(Reply::error(StatusCode::MOVED_PERMANENTLY), "");
    if let Ok(v) = HeaderValue::from_str(&to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Puts the mount point into the pages whose absolute links need it: a listing (its title
/// and breadcrumbs) and the 404 page (its root link). `seen` is the path the service got.
fn remount(reply: &mut Reply, mount: &str, seen: &str) {
    if reply.file.is_some() {
        return;
    }
    let [Piece::Bytes(page)] = reply.body.as_mut_slice() else {
        return;
    };
    let new = match reply.status {
        StatusCode::NOT_FOUND if *page == listing::not_found().into_bytes() => {
            Some(listing::not_found_at(&format!("{mount}/")))
        }
        StatusCode::OK if seen.ends_with('/') => std::str::from_utf8(page)
            .ok()
            .and_then(|html| listing::remount(html, mount)),
        _ => None,
    };
    if let Some(new) = new {
        reply.len = new.len() as u64;
        *page = new.into_bytes();
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
        file: if reply.head_only { None } else { reply.file },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_point_is_what_the_router_stripped() {
        let below = |m: &str| Some(Mount::Below(m.to_string()));
        assert_eq!(Mount::of("/a.txt", "/a.txt"), None, "not nested");
        assert_eq!(Mount::of("/static/a.txt", "/a.txt"), below("/static"));
        assert_eq!(Mount::of("/static/", "/"), below("/static"));
        assert_eq!(
            Mount::of("/x/st%20atic/sub/", "/sub/"),
            below("/x/st%20atic")
        );
        assert_eq!(
            Mount::of("/static", "/"),
            Some(Mount::Bare("static".to_string()))
        );
        assert_eq!(Mount::of("/static//nope", "/nope"), below("/static"));
        assert_eq!(Mount::of("/static///sub/", "/sub/"), below("/static"));
        assert_eq!(Mount::of("//nope", "/nope"), None, "no mount point left");
        // A rewrite that is not a stripped prefix says nothing.
        assert_eq!(Mount::of("/static/a.txt", "/b.txt"), None);
        assert_eq!(Mount::of("/static/a.txt", "a.txt"), None, "not a path");
    }
}
