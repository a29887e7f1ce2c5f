//! Request → [`Reply`]: routing under the root, the precompressed variant, validators and
//! conditionals (RFC 9110 §13), ranges and `multipart/byteranges` (§14).
//!
//! Pure decisions over an opened file: nothing here writes to the connection. Every problem
//! becomes a status; the reply carries the open file its body pieces read from.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use http::header;
use http::{Method, StatusCode};
use rustix::fs::FileType;

use super::StaticService;
use super::files::{OpenError, Opened};
use super::listing;
use super::path;
use super::range::{self, Ranges};
use super::request::Head;
use super::response::{Piece, Reply, push_header};
use crate::service::http::date;

/// Decides the response to one request. Never fails: every problem is a status.
pub fn respond(head: &Head, svc: &StaticService) -> Reply {
    respond_at(head, svc, Instant::now())
}

/// [`respond`] for a caller that has read the clock already: `now` is when the request began,
/// and stands for the present in the open-file cache's freshness checks (a request takes
/// microseconds; a clock read is ~0.3% of a kept-alive request's CPU).
pub fn respond_at(head: &Head, svc: &StaticService, now: Instant) -> Reply {
    let cfg = &svc.config;
    if head.method != Method::GET && head.method != Method::HEAD {
        return Reply::error(StatusCode::METHOD_NOT_ALLOWED).with(&header::ALLOW, "GET, HEAD");
    }
    let Some((path, query)) = split_target(&head.target) else {
        return Reply::error(StatusCode::BAD_REQUEST);
    };
    let clean = match path::clean(path.as_bytes()) {
        Ok(c) => c,
        Err(path::BadPath(why)) => {
            tracing::debug!(target = %head.target, why, "refused path");
            return Reply::error(StatusCode::BAD_REQUEST);
        }
    };
    if !cfg.show_hidden && clean.is_hidden() {
        return not_found();
    }
    let rel = clean.relative();
    let opened = match svc.open_path(&rel, now) {
        Ok(o) => o,
        Err(e) => return open_error(e, &rel),
    };
    match opened.kind {
        // `/file.txt/` names a directory that does not exist (as open(2) says with ENOTDIR).
        FileType::RegularFile if clean.trailing_slash => not_found(),
        FileType::RegularFile => serve_file(head, svc, opened, &rel, now),
        FileType::Directory => {
            if !clean.trailing_slash {
                let mut to = clean.url(true);
                if let Some(q) = query {
                    to.push('?');
                    to.push_str(q);
                }
                return Reply::error(StatusCode::MOVED_PERMANENTLY).with(&header::LOCATION, &to);
            }
            let index = rel.join("index.html");
            match svc.open_path(&index, now) {
                Ok(o) if o.kind == FileType::RegularFile => {
                    return serve_file(head, svc, o, &index, now);
                }
                Ok(_) | Err(OpenError::NotFound) => {}
                Err(e) => return open_error(e, &index),
            }
            if !cfg.listing {
                return not_found();
            }
            match listing::read(&opened.file, cfg.show_hidden) {
                Ok(entries) => listing_reply(head, listing::render(&clean.url(true), &entries)),
                Err(e) => {
                    tracing::warn!(cause = %e, dir = %rel.display(), "cannot list directory");
                    Reply::error(StatusCode::INTERNAL_SERVER_ERROR)
                }
            }
        }
        // FIFOs, sockets, devices: never ours to stream.
        _ => Reply::error(StatusCode::FORBIDDEN),
    }
}

/// A listing with a strong validator computed from the page itself, so `no-cache` (store, but
/// revalidate) can be honoured with a 304 instead of the whole page (RFC 9110 §8.8.3: equal
/// bytes, equal tag). The hash is SipHash with fixed keys: the same page gets the same tag
/// from every worker of one build.
fn listing_reply(head: &Head, html: String) -> Reply {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    html.hash(&mut hasher);
    let etag = format!("\"l{:016x}\"", hasher.finish());
    let mut headers = String::with_capacity(160);
    push_header(&mut headers, &header::ETAG, &etag);
    push_header(&mut headers, &header::CACHE_CONTROL, "no-cache");
    if head
        .if_none_match
        .as_deref()
        .is_some_and(|list| etag_matches(list, &etag, true))
    {
        return Reply::bytes(StatusCode::NOT_MODIFIED, headers, Vec::new());
    }
    push_header(
        &mut headers,
        &header::CONTENT_TYPE,
        "text/html; charset=utf-8",
    );
    push_header(&mut headers, &header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    Reply::bytes(StatusCode::OK, headers, html.into_bytes())
}

/// 404, as a page that links to the root.
fn not_found() -> Reply {
    let mut headers = String::with_capacity(96);
    push_header(
        &mut headers,
        &header::CONTENT_TYPE,
        "text/html; charset=utf-8",
    );
    push_header(&mut headers, &header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    Reply::bytes(
        StatusCode::NOT_FOUND,
        headers,
        listing::not_found().into_bytes(),
    )
}

fn open_error(e: OpenError, rel: &Path) -> Reply {
    match e {
        OpenError::NotFound => not_found(),
        OpenError::Forbidden => Reply::error(StatusCode::FORBIDDEN),
        OpenError::Other(err) => {
            tracing::warn!(cause = %err, path = %rel.display(), "cannot open");
            Reply::error(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Splits a request target into its path and query; absolute-form (`http://host/p`) is reduced
/// to its path. `None` for anything else (`*`, authority-form).
pub fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
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

/// Calls `f` with `t` as an HTTP date ([`date::http_date`]), remembered per worker thread for
/// the last few distinct seconds asked: files served again and again share a handful of
/// modification times, and formatting the date was a visible share of a request's user time
/// (issue 12).
fn with_http_date(t: SystemTime, f: impl FnOnce(&str)) {
    use std::cell::RefCell;
    const SLOTS: usize = 16;
    thread_local! {
        /// Direct-mapped by the second: (second, its HTTP date); `u64::MAX` when empty.
        static DATES: RefCell<[(u64, String); SLOTS]> =
            RefCell::new(std::array::from_fn(|_| (u64::MAX, String::new())));
    }
    let secs = date::unix_secs(t);
    DATES.with_borrow_mut(|slots| {
        let slot = &mut slots[(secs % SLOTS as u64) as usize];
        if slot.0 != secs {
            *slot = (secs, date::http_date(t));
        }
        f(&slot.1);
    });
}

/// The answer for a regular file: variant, validators, conditionals, ranges. `now` as for
/// [`respond_at`].
fn serve_file(head: &Head, svc: &StaticService, opened: Opened, rel: &Path, now: Instant) -> Reply {
    let content_type = cached_content_type(rel);
    // Siblings are looked up for every request, even one without Accept-Encoding: a URL
    // with variants must say `Vary: Accept-Encoding` on every response (RFC 9110 §12.5.5),
    // or a shared cache stores the identity body for every client. Misses are cached, so
    // the usual file without siblings costs no lookup beyond its own (the cache entry it was
    // served from carries the answer), not three path walks.
    let mut vary = false;
    let mut encoding = None;
    let mut opened = opened;
    let present = match opened.siblings {
        Some(mask) => mask,
        None => svc.siblings(rel, &ENCODINGS.map(|(_, suffix)| suffix)),
    };
    for (i, (token, suffix)) in ENCODINGS.into_iter().enumerate() {
        if present & (1 << i) == 0 {
            continue;
        }
        let mut sibling = rel.as_os_str().to_owned();
        sibling.push(suffix);
        if let Some(o) = svc.open_variant(Path::new(&sibling), now) {
            vary = true;
            if encoding.is_none()
                && head
                    .accept_encoding
                    .as_deref()
                    .is_some_and(|ae| accepts(ae, token))
            {
                encoding = Some(token);
                opened = o;
            }
        }
    }
    let etag = opened.etag();
    let mut headers = String::with_capacity(256);
    with_http_date(opened.mtime, |d| {
        push_header(&mut headers, &header::LAST_MODIFIED, d);
    });
    push_header(&mut headers, &header::ETAG, &etag);
    push_header(&mut headers, &header::ACCEPT_RANGES, "bytes");
    if vary {
        push_header(&mut headers, &header::VARY, "Accept-Encoding");
    }
    // A 304 repeats Cache-Control as the 200 would (RFC 9110 §15.4.5).
    if let Some(age) = svc.config.max_age {
        push_header(
            &mut headers,
            &header::CACHE_CONTROL,
            &format!("max-age={}", age.as_secs()),
        );
    }
    // Decided before the representation's own headers are added, so a 304 carries the
    // validators alone without a copy of them being made for every 200.
    match preconditions(head, &etag, opened.mtime) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            return Reply::bytes(StatusCode::NOT_MODIFIED, headers, Vec::new());
        }
        Precondition::Failed => return Reply::error(StatusCode::PRECONDITION_FAILED),
    }
    push_header(&mut headers, &header::CONTENT_TYPE, &content_type);
    push_header(&mut headers, &header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if let Some(enc) = encoding {
        push_header(&mut headers, &header::CONTENT_ENCODING, enc);
    }

    let len = opened.len;
    // Range applies to GET only: "A server MUST ignore a Range header field received with a
    // request method that is unrecognized or for which range handling is not defined", and
    // GET is the only such method (RFC 9110 §14.2), so a HEAD gets the 200 head.
    let ranges = match &head.range {
        Some(r) if head.method == Method::GET && if_range_holds(head, &etag, opened.mtime) => {
            range::parse(r, len)
        }
        _ => Ranges::Full,
    };
    let mut reply = match ranges {
        Ranges::Full => file_reply(
            StatusCode::OK,
            headers,
            vec![Piece::File { offset: 0, len }],
            len,
        ),
        Ranges::Unsatisfiable => {
            return Reply::error(StatusCode::RANGE_NOT_SATISFIABLE)
                .with(&header::CONTENT_RANGE, &format!("bytes */{len}"));
        }
        Ranges::Parts(parts) if parts.len() == 1 => {
            let (a, b) = parts[0];
            push_header(
                &mut headers,
                &header::CONTENT_RANGE,
                &format!("bytes {a}-{b}/{len}"),
            );
            let piece = Piece::File {
                offset: a,
                len: b - a + 1,
            };
            file_reply(StatusCode::PARTIAL_CONTENT, headers, vec![piece], b - a + 1)
        }
        Ranges::Parts(parts) => multipart(headers, &content_type, &parts, len),
    };
    reply.file = Some(opened.file);
    reply.bytes = opened.bytes;
    reply
}

fn file_reply(status: StatusCode, headers: String, body: Vec<Piece>, len: u64) -> Reply {
    let mut reply = Reply::bytes(status, headers, Vec::new());
    reply.body = body;
    reply.len = len;
    reply
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
    push_header(
        &mut headers,
        &header::CONTENT_TYPE,
        &format!("multipart/byteranges; boundary={boundary}"),
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
    file_reply(StatusCode::PARTIAL_CONTENT, headers, body, total)
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
    let secs = date::unix_secs;
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
        Some(v) => v == date::http_date(mtime),
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

/// [`content_type`], remembered per extension by each worker thread: the guess and the
/// `String` it builds cost more than the lookup (issue 12's profile: ~2% of samples).
fn cached_content_type(path: &Path) -> std::sync::Arc<str> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;
    thread_local! {
        /// Per worker thread: extension (as given, case kept) -> Content-Type. Extensions in
        /// use are few, so this stays small; bounded anyway.
        static BY_EXTENSION: RefCell<HashMap<Box<[u8]>, Arc<str>>> = RefCell::default();
    }
    const MOST: usize = 1024;
    let ext = path.extension().map_or(&[][..], |e| e.as_encoded_bytes());
    if let Some(t) = BY_EXTENSION.with_borrow(|m| m.get(ext).cloned()) {
        return t;
    }
    let t: Arc<str> = content_type(path).into();
    BY_EXTENSION.with_borrow_mut(|m| {
        if m.len() < MOST {
            m.insert(ext.into(), Arc::clone(&t));
        }
    });
    t
}

/// The Content-Type for a path, by extension, with `charset=utf-8` for text. JavaScript
/// (`.js`, `.mjs`, ...) is `text/javascript`, its only non-obsolete type (RFC 9239 §6).
fn content_type(path: &Path) -> String {
    let mime = match mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream")
    {
        "application/javascript" | "application/x-javascript" | "application/ecmascript" => {
            "text/javascript"
        }
        m => m,
    };
    let texty = mime.starts_with("text/")
        || matches!(
            mime,
            "application/json"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_http_dates_are_the_dates_of_their_second() {
        use std::time::{Duration, SystemTime};
        // Seconds that share a slot, and one asked again after its slot was taken.
        for secs in [784_111_777u64, 784_111_777 + 16, 784_111_777, 0, 16, 0] {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, 999_999_999);
            let mut got = String::new();
            with_http_date(t, |d| got = d.to_owned());
            assert_eq!(got, date::http_date(t));
        }
    }

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
        assert_eq!(
            content_type(Path::new("a.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(
            content_type(Path::new("a.mjs")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a.unknownext")),
            "application/octet-stream"
        );
    }
}
