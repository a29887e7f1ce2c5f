//! The HTTP settings an application is served with, and the head checks that apply them.
//!
//! Names and defaults are gunicorn's where it has the setting (`limit_request_line`,
//! `limit_request_fields`, `limit_request_field_size`, `keepalive`, `forwarded_allow_ips`),
//! nginx's where only nginx has it (`client_body_timeout`), and the static service's
//! otherwise, so one config reads the same for both. This module
//! owns values and pure checks only: it reads no socket and no flag.

use std::time::Duration;

use http::StatusCode;
use http::request::Parts;

use super::forwarded::{ForwardedAllowIps, is_forwarding_header};

/// How one application is served over HTTP. Built by the config layer; `Default` gives
/// gunicorn's limits and the static service's timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Idle time allowed between requests on a kept-alive HTTP/1 connection, and on an HTTP/2
    /// connection with no stream open; zero = one request per HTTP/1 connection. Default 5 s.
    pub keep_alive: Duration,
    /// Time allowed from a request's first byte (or the accept) to the end of its head; a
    /// slower HTTP/1 client gets 408. Must not be zero. Default 10 s.
    pub header_timeout: Duration,
    /// Longest request line (`METHOD TARGET HTTP/1.1`), in bytes; longer ones get 414.
    /// Default 4094 (gunicorn). Heads longer than the whole head buffer (see
    /// [`HttpSettings::head_buffer`]) are refused by hyper's parser with 431 instead.
    pub limit_request_line: usize,
    /// Most header fields in one request; more get 431. Default 100 (gunicorn).
    pub limit_request_fields: usize,
    /// Longest header field, counted as name + `: ` + value, in bytes; longer ones get 431.
    /// Default 8190 (gunicorn).
    pub limit_request_field_size: usize,
    /// Largest request body, in bytes; 0 = no limit (gunicorn has none). A declared
    /// `Content-Length` over it gets 413 before the app is called; a chunked body that grows
    /// over it makes the body fail with `http_body_util::LengthLimitError` at the first byte
    /// too many, and the response becomes 413 whatever the app answered. Default 0.
    pub limit_request_body: u64,
    /// The longest a handler may take to produce its response head; past it the handler
    /// future is dropped and the client gets 503. `None` = no deadline (`--request-timeout 0`).
    /// Response bodies (streams, server-sent events) are not bounded by it.
    pub request_timeout: Option<Duration>,
    /// The longest a request body may stay silent while the handler waits to read it (nginx's
    /// `client_body_timeout`: the time between two successive reads, not for the whole body).
    /// Past it the body fails with [`super::body::ClientBodyTimeout`]; if the handler then
    /// answers, the client gets 408 instead, and an HTTP/1 connection closes (an HTTP/2
    /// stream ends, its connection goes on). `None` = no limit (`--client-body-timeout 0`).
    /// Default 60 s (nginx).
    pub client_body_timeout: Option<Duration>,
    /// Peers whose `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` headers are
    /// believed. Default `127.0.0.1,::1` (gunicorn).
    pub forwarded_allow_ips: ForwardedAllowIps,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            keep_alive: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            limit_request_line: 4094,
            limit_request_fields: 100,
            limit_request_field_size: 8190,
            limit_request_body: 0,
            request_timeout: None,
            client_body_timeout: Some(Duration::from_secs(60)),
            forwarded_allow_ips: ForwardedAllowIps::default(),
        }
    }
}

impl HttpSettings {
    /// The most bytes of one HTTP/1 head hyper buffers (its `max_buf_size`): a full request
    /// line, every field at full size with its CRLF, and the blank line, as the static
    /// service computes it, and never under hyper's own minimum of 8 KiB.
    pub fn head_buffer(&self) -> usize {
        let fields = self
            .limit_request_fields
            .saturating_mul(self.limit_request_field_size.saturating_add(2));
        (self.limit_request_line + 2)
            .saturating_add(fields)
            .saturating_add(2)
            .max(8192)
    }

    /// Checks a parsed head against the line and field limits, and its `Host`.
    ///
    /// Returns the status to answer instead of calling the app: 414 for the request line,
    /// 431 for the count or the size of the fields. hyper has parsed the head already (within
    /// [`HttpSettings::head_buffer`]); this applies gunicorn's finer limits, to HTTP/2 heads too.
    /// Then 400 for a `Host` that RFC 9112 §3.2 says a server MUST refuse and hyper lets
    /// through: none on an HTTP/1.1 request, more than one, or one that is not a host and
    /// optional port (the static service refuses the first two on HTTP/1.1; it does not look
    /// at the characters). A proxy and the app that read different `Host`s of one request
    /// would disagree on its site. For the same reason a `Host` must name the authority the
    /// target names, when it names one: an absolute-form or authority-form target on HTTP/1
    /// (RFC 9112 §3.2.2 has the target win; the app reads `Host` all the same), `:authority`
    /// on HTTP/2 (RFC 9113 §8.3.1: a `Host` naming another is malformed).
    ///
    /// Then 501 for a `Transfer-Encoding` other than one `chunked` alone (RFC 9112 §6.1: a
    /// coding the server does not understand SHOULD get 501; nginx answers 501 to anything
    /// else too). hyper undoes `chunked` only and lets `gzip, chunked`, `chunked, chunked`
    /// or a second `Transfer-Encoding` field through, so the app would read a body still
    /// coded, a different one than the client sent. (hyper itself refuses with 400 a list
    /// that does not end in `chunked`, or any `Transfer-Encoding` on HTTP/1.0.)
    ///
    /// On the way it notes what the request path needs to know of the fields next
    /// ([`HeadFields`]), so that the fields are walked once per request.
    pub fn check_head(&self, head: &Parts) -> Result<HeadFields, StatusCode> {
        if request_line_len(head) > self.limit_request_line {
            return Err(StatusCode::URI_TOO_LONG);
        }
        if head.headers.len() > self.limit_request_fields {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        // One pass over the fields for every check (no hashed lookup of `Host`).
        let mut hosts = 0;
        let mut host_bytes_ok = true;
        let mut host = None;
        let mut forwarding = false;
        let mut codings = 0;
        let mut chunked_alone = true;
        for (name, value) in &head.headers {
            if name.as_str().len() + 2 + value.len() > self.limit_request_field_size {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            forwarding |= is_forwarding_header(name);
            if name == http::header::TRANSFER_ENCODING {
                codings += 1;
                chunked_alone &= is_chunked_alone(value.as_bytes());
            }
            if name == http::header::HOST {
                hosts += 1;
                host = Some(value);
                // Every byte looked at (no early exit): a loop the compiler unrolls.
                host_bytes_ok = value
                    .as_bytes()
                    .iter()
                    .fold(true, |ok, &b| ok & HOST_BYTES[usize::from(b)]);
            }
        }
        let host_ok = match (hosts, host) {
            (0, _) => head.version != http::Version::HTTP_11,
            (1, Some(host)) => host_bytes_ok && names_the_authority(head, host.as_bytes()),
            _ => false,
        };
        if !host_ok {
            return Err(StatusCode::BAD_REQUEST);
        }
        if codings > 1 || !chunked_alone {
            return Err(StatusCode::NOT_IMPLEMENTED);
        }
        Ok(HeadFields { forwarding })
    }
}

/// Whether a `Transfer-Encoding` value names `chunked` alone: its one list element, any case,
/// with optional whitespace and empty elements around it (RFC 9110 §5.6.1).
fn is_chunked_alone(value: &[u8]) -> bool {
    let mut elements = value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty());
    elements
        .next()
        .is_some_and(|e| e.eq_ignore_ascii_case(b"chunked"))
        && elements.next().is_none()
}

/// Whether `host` (a `Host` value) names the authority of `head`'s target, ASCII case aside;
/// true when the target names none (origin-form, `*`). A port left out on one side is the
/// scheme's default (RFC 9110 §4.2.1, §4.2.2: `http://a:80/` and `Host: a` name one origin).
/// A target with userinfo names no `Host` (RFC 9110 §4.2.4 deprecates it; a client that sends
/// it is refused rather than guessed at).
fn names_the_authority(head: &Parts, host: &[u8]) -> bool {
    head.uri.authority().is_none_or(|a| {
        a.as_str().as_bytes().eq_ignore_ascii_case(host) || same_origin_host(head, a, host)
    })
}

/// [`names_the_authority`]'s slower path, for an authority and a `Host` that differ as text:
/// the same host with the scheme's default port written on one side only.
#[cold]
fn same_origin_host(head: &Parts, target: &http::uri::Authority, host: &[u8]) -> bool {
    let Ok(host) = http::uri::Authority::try_from(host) else {
        return false;
    };
    let default = match head.uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => 80,
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        // Authority-form (CONNECT) has no scheme, so no default port.
        _ => return false,
    };
    !target.as_str().contains('@')
        && !host.as_str().contains('@')
        && target.host().eq_ignore_ascii_case(host.host())
        && target.port_u16().unwrap_or(default) == host.port_u16().unwrap_or(default)
}

/// What [`HttpSettings::check_head`] noted of a head it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadFields {
    /// Whether a field is `Forwarded`, `X-Forwarded-For` or `X-Forwarded-Proto`: only then can
    /// the client be another than the peer.
    pub forwarding: bool,
}

/// Which bytes can appear in `Host`'s `uri-host [ ":" port ]` (RFC 3986 §3.2.2: unreserved,
/// percent-encoded and sub-delims characters in a name, brackets and colons for an IPv6
/// literal and the port). An empty value is allowed (RFC 9112 §3.2: a target without an
/// authority).
///
/// A table, looked up once per byte of every request's `Host` (a search of the punctuation
/// for each byte was ~1% of a hello-world request's instructions, callgrind, 2026-11-30).
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let punctuation = b"-._~!$&'()*+,;=%:[]";
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    table
};

/// The length of `METHOD SP TARGET SP HTTP/x.y` as an HTTP/1 client would have sent it. For
/// HTTP/2, the target is `:path` (or the authority for CONNECT).
fn request_line_len(head: &Parts) -> usize {
    let uri = &head.uri;
    let target = match (uri.scheme_str(), uri.authority(), uri.path_and_query()) {
        // absolute-form (a proxy request): scheme "://" authority path.
        (Some(s), Some(a), pq) if head.version < http::Version::HTTP_2 => {
            s.len() + 3 + a.as_str().len() + pq.map_or(0, |p| p.as_str().len())
        }
        (_, _, Some(pq)) => pq.as_str().len(),
        (_, Some(a), None) => a.as_str().len(),
        _ => 1,
    };
    head.method.as_str().len() + 1 + target + 1 + "HTTP/1.1".len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/1.0 head (no `Host` needed: these tests count fields).
    fn head(target: &str, fields: &[(&str, String)]) -> Parts {
        let mut b = http::Request::get(target).version(http::Version::HTTP_10);
        for (k, v) in fields {
            b = b.header(*k, v.as_str());
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn request_line_limit_counts_method_target_and_version() {
        let s = HttpSettings {
            limit_request_line: 20,
            ..HttpSettings::default()
        };
        // "GET /abcdefg HTTP/1.1" is 21 bytes; one shorter fits.
        assert_eq!(s.check_head(&head("/abcdef", &[])).err(), None);
        assert_eq!(
            s.check_head(&head("/abcdefg", &[])).err(),
            Some(StatusCode::URI_TOO_LONG)
        );
    }

    #[test]
    fn field_limits_give_431() {
        let s = HttpSettings {
            limit_request_fields: 2,
            limit_request_field_size: 10,
            ..HttpSettings::default()
        };
        // "x-a: 12345" is 10 bytes.
        assert_eq!(
            s.check_head(&head("/", &[("x-a", "12345".into())])).err(),
            None
        );
        assert_eq!(
            s.check_head(&head("/", &[("x-a", "123456".into())])).err(),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let three = [("a", "1".into()), ("b", "1".into()), ("c", "1".into())];
        assert_eq!(
            s.check_head(&head("/", &three)).err(),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[test]
    fn host_is_required_once_on_http11_and_must_be_a_host() {
        let s = HttpSettings::default();
        let with = |version, hosts: &[&str]| {
            let mut b = http::Request::get("/").version(version);
            for h in hosts {
                b = b.header("host", *h);
            }
            s.check_head(&b.body(()).unwrap().into_parts().0).err()
        };
        use http::Version;
        let bad = Some(StatusCode::BAD_REQUEST);
        for good in [
            "example.com",
            "example.com:8080",
            "[::1]:80",
            "10.0.0.1",
            "xn--bcher-kva.example",
            "",
        ] {
            assert_eq!(with(Version::HTTP_11, &[good]), None, "{good}");
        }
        assert_eq!(with(Version::HTTP_11, &[]), bad);
        assert_eq!(with(Version::HTTP_11, &["a", "b"]), bad);
        assert_eq!(with(Version::HTTP_10, &["a", "a"]), bad);
        for wrong in [
            "a b",
            "user@example.com",
            "example.com/x",
            "a\\b",
            "exa\"mple",
        ] {
            assert_eq!(with(Version::HTTP_11, &[wrong]), bad, "{wrong}");
        }
        // HTTP/1.0 may omit it; HTTP/2 names the authority in `:authority`.
        assert_eq!(with(Version::HTTP_10, &[]), None);
        assert_eq!(with(Version::HTTP_2, &[]), None);
    }

    #[test]
    fn a_host_must_name_the_authority_the_target_names() {
        let s = HttpSettings::default();
        use http::Version;
        let with = |version, target: &str, host: &str| {
            let req = http::Request::get(target)
                .version(version)
                .header("host", host)
                .body(())
                .unwrap();
            s.check_head(&req.into_parts().0).err()
        };
        let bad = Some(StatusCode::BAD_REQUEST);
        assert_eq!(with(Version::HTTP_11, "/", "anything"), None, "origin-form");
        assert_eq!(
            with(Version::HTTP_11, "http://a.example/x", "a.example"),
            None
        );
        assert_eq!(
            with(Version::HTTP_11, "http://A.example:81/", "a.EXAMPLE:81"),
            None
        );
        assert_eq!(
            with(Version::HTTP_11, "http://a.example/x", "b.example"),
            bad
        );
        assert_eq!(
            with(Version::HTTP_11, "http://a.example:81/", "a.example"),
            bad
        );
        assert_eq!(
            with(Version::HTTP_11, "http://u@a.example/", "a.example"),
            bad
        );
        // The scheme's default port written on one side only names the same origin.
        for (target, host) in [
            ("http://a.example:80/", "a.example"),
            ("http://a.example/", "A.example:80"),
            ("https://a.example/", "a.example:443"),
            ("http://[::1]:80/", "[::1]"),
        ] {
            assert_eq!(
                with(Version::HTTP_11, target, host),
                None,
                "{target} {host}"
            );
        }
        for (target, host) in [
            ("http://a.example:81/", "a.example:80"),
            ("http://a.example/", "a.example:443"),
            ("https://a.example/", "a.example:80"),
            ("http://a.example:80/", "b.example"),
            ("http://u@a.example:80/", "a.example"),
        ] {
            assert_eq!(with(Version::HTTP_11, target, host), bad, "{target} {host}");
        }
        assert_eq!(
            with(Version::HTTP_2, "http://a.example/x", "a.example"),
            None
        );
        assert_eq!(
            with(Version::HTTP_2, "http://a.example/x", "b.example"),
            bad
        );
    }

    /// The pass over the fields notes whether any is a forwarding header, whatever its case
    /// and place.
    #[test]
    fn the_check_notes_a_forwarding_header() {
        let s = HttpSettings::default();
        let forwarding = |fields: &[(&str, String)]| s.check_head(&head("/", fields)).unwrap();
        let plain = [("accept", "*/*".into()), ("x-forwarded-by", "p".into())];
        assert!(!forwarding(&plain).forwarding);
        for name in ["Forwarded", "X-Forwarded-For", "x-forwarded-proto"] {
            let fields = [("accept", "*/*".into()), (name, "for=1.2.3.4".into())];
            assert!(forwarding(&fields).forwarding, "{name}");
        }
    }

    #[test]
    fn a_transfer_coding_other_than_chunked_alone_gets_501() {
        let s = HttpSettings::default();
        let with = |values: &[&str]| {
            let fields: Vec<_> = values
                .iter()
                .map(|v| ("transfer-encoding", (*v).to_string()))
                .collect();
            s.check_head(&head("/", &fields)).err()
        };
        for good in ["chunked", "CHUNKED", " chunked ", ", chunked", "chunked,"] {
            assert_eq!(with(&[good]), None, "{good}");
        }
        assert_eq!(with(&[]), None);
        let refused = Some(StatusCode::NOT_IMPLEMENTED);
        for wrong in [
            "gzip, chunked",
            "chunked, chunked",
            "identity, chunked",
            "x-chunked",
            "",
        ] {
            assert_eq!(with(&[wrong]), refused, "{wrong}");
        }
        assert_eq!(with(&["gzip", "chunked"]), refused);
        assert_eq!(with(&["chunked", "chunked"]), refused);
    }

    #[test]
    fn head_buffer_holds_a_full_head_and_never_less_than_hyper_allows() {
        let d = HttpSettings::default();
        assert!(d.head_buffer() >= 4094 + 100 * 8190);
        let tiny = HttpSettings {
            limit_request_line: 10,
            limit_request_fields: 1,
            limit_request_field_size: 10,
            ..d
        };
        assert_eq!(tiny.head_buffer(), 8192);
    }
}
