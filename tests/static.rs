//! `static`, end to end: the real binary serving a temp dir, spoken to over raw TCP with exact
//! bytes, and with curl where it is installed. Issue 3: "`static`: a production-grade static
//! file service, and the default job".

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

/// A temp dir holding `www/` (the root) and, beside it, a secret that must never be served.
fn site() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOP-SECRET\n").unwrap();
    std::fs::write(www.join("hello.txt"), "hello, world\n").unwrap();
    (dir, www)
}

/// Starts `oxicorn static www ARGS -w 1 -b 127.0.0.1:0` and waits until it serves.
fn serve(dir: tempfile::TempDir, args: &[&str]) -> (Oxicorn, SocketAddr) {
    let mut all = vec!["static", "www", "-w", "1", "-b", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let s = Oxicorn::start_with(dir, &all, &[]);
    s.wait_ready(1, 1);
    let addr = s.tcp_addr();
    (s, addr)
}

/// One parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that reads responses one at a time (so pipelining can be checked).
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn send(&mut self, raw: &[u8]) {
        self.s.write_all(raw).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response; `head_only` for HEAD (no body whatever Content-Length says).
    fn response(&mut self, head_only: bool) -> Response {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill() > 0,
                "connection closed before a full head: {:?}",
                self.buf
            );
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect();
        let mut r = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 304 {
            return r;
        }
        let len: usize = r.header("Content-Length").unwrap().parse().unwrap();
        while self.buf.len() < len {
            assert!(
                self.fill() > 0,
                "closed after {} of {len} bytes",
                self.buf.len()
            );
        }
        r.body = self.buf.drain(..len).collect();
        r
    }

    /// True when the server has closed (EOF) within the read timeout.
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill() == 0
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection.
fn get(addr: SocketAddr, path: &str, extra: &str) -> Response {
    let mut c = Conn::open(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes());
    c.response(false)
}

fn write(path: &Path, data: impl AsRef<[u8]>) {
    std::fs::write(path, data).unwrap();
}

/// Deterministic bytes, so a wrong offset shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn no_arguments_serves_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("index.html"), "<h1>hi</h1>");
    let root = dir.path().canonicalize().unwrap();
    let s = Oxicorn::start_with(dir, &["-b", "127.0.0.1:0", "-w", "1"], &[]);
    s.wait_ready(1, 1);
    let addr = s.tcp_addr();
    let line = s.wait_for_line("serving ");
    assert!(
        line.contains(&format!(
            "serving {} on http://{addr} (1 worker)",
            root.display()
        )),
        "{line}"
    );
    let r = get(addr, "/", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>hi</h1>");
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
}

#[test]
fn a_missing_or_non_directory_root_fails_before_binding() {
    let (dir, _www) = site();
    for (arg, why) in [("nope", "no such file"), ("secret.txt", "not a directory")] {
        let out = std::process::Command::new(BIN)
            .args(["static", arg, "-b", "127.0.0.1:0"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("invalid root") && err.contains(why), "{err}");
        assert!(!err.contains("listening"), "{err}");
    }
}

#[test]
fn a_file_with_its_headers_and_head() {
    let (dir, _) = site();
    let (_s, addr) = serve(dir, &[]);
    let mut c = Conn::open(addr);
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello, world\n");
    assert_eq!(r.header("Content-Length"), Some("13"));
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    assert!(r.header("Date").is_some());
    let etag = r.header("ETag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(httpdate::parse_http_date(r.header("Last-Modified").unwrap()).is_ok());
    assert!(r.header("Vary").is_none() && r.header("Content-Encoding").is_none());

    // HEAD on the same connection: the same headers, no body.
    c.send(b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let h = c.response(true);
    assert_eq!(h.status, 200);
    for name in ["Content-Length", "Content-Type", "ETag", "Last-Modified"] {
        assert_eq!(h.header(name), r.header(name), "{name}");
    }
    // Nothing followed the HEAD's headers: the next response starts right away.
    c.send(b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response(false).status, 404);

    // HTTP/1.0 closes unless asked; with keep-alive it stays.
    let mut c = Conn::open(addr);
    c.send(b"GET /hello.txt HTTP/1.0\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.closed());
    let mut c = Conn::open(addr);
    c.send(b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.response(false).header("Connection"), Some("keep-alive"));
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(c.response(false).body, b"hello, world\n");
    assert!(c.closed());
    // A file is not a directory.
    assert_eq!(get(addr, "/hello.txt/", "").status, 404);
    // Absolute-form targets are served by their path.
    assert_eq!(get(addr, "http://t/hello.txt?x=1", "").status, 200);
}

#[test]
fn validators_give_304_and_412() {
    let (dir, _) = site();
    let (_s, addr) = serve(dir, &[]);
    let r = get(addr, "/hello.txt", "");
    let etag = r.header("ETag").unwrap().to_string();
    let lm = r.header("Last-Modified").unwrap().to_string();
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let earlier = "Thu, 01 Jan 1998 00:00:00 GMT";
    for (extra, status) in [
        (format!("If-None-Match: {etag}"), 304),
        (format!("If-None-Match: \"x\", W/{etag}"), 304),
        ("If-None-Match: *".to_string(), 304),
        ("If-None-Match: \"other\"".to_string(), 200),
        (format!("If-Modified-Since: {lm}"), 304),
        (format!("If-Modified-Since: {later}"), 304),
        (format!("If-Modified-Since: {earlier}"), 200),
        // If-None-Match wins over If-Modified-Since.
        (
            format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {later}"),
            200,
        ),
        (format!("If-Match: {etag}"), 200),
        ("If-Match: \"other\"".to_string(), 412),
        (format!("If-Match: W/{etag}"), 412),
        (format!("If-Unmodified-Since: {earlier}"), 412),
        (format!("If-Unmodified-Since: {lm}"), 200),
        ("If-Modified-Since: garbage".to_string(), 200),
    ] {
        let r = get(addr, "/hello.txt", &format!("{extra}\r\n"));
        assert_eq!(r.status, status, "{extra}");
        if status == 304 {
            assert_eq!(r.header("ETag"), Some(etag.as_str()));
            assert_eq!(r.header("Last-Modified"), Some(lm.as_str()));
            assert!(r.header("Content-Length").is_none());
        }
    }
}

#[test]
fn ranges_single_suffix_open_multipart_and_if_range() {
    let (dir, www) = site();
    let data = pattern(1000);
    write(&www.join("data.bin"), &data);
    let big = pattern(3 << 20);
    write(&www.join("big.bin"), &big);
    let (_s, addr) = serve(dir, &[]);
    let etag = get(addr, "/data.bin", "")
        .header("ETag")
        .unwrap()
        .to_string();

    for (range, first, last) in [
        ("bytes=0-9", 0, 9),
        ("bytes=990-", 990, 999),
        ("bytes=-5", 995, 999),
        ("bytes=500-5000", 500, 999),
        ("bytes=-5000", 0, 999),
    ] {
        let r = get(addr, "/data.bin", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {first}-{last}/1000").as_str())
        );
        assert_eq!(r.body, &data[first..=last], "{range}");
    }
    let r = get(addr, "/data.bin", "Range: bytes=1000-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("Content-Range"), Some("bytes */1000"));
    // Unreadable ranges are ignored: the whole file.
    let r = get(addr, "/data.bin", "Range: bytes=9-1\r\n");
    assert_eq!((r.status, r.body.len()), (200, 1000));
    // If-Range: the range only while the file is unchanged.
    let r = get(
        addr,
        "/data.bin",
        &format!("Range: bytes=0-1\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!((r.status, r.body.len()), (206, 2));
    let r = get(
        addr,
        "/data.bin",
        "Range: bytes=0-1\r\nIf-Range: \"stale\"\r\n",
    );
    assert_eq!((r.status, r.body.len()), (200, 1000));

    // Two ranges: multipart/byteranges, byte-exact.
    let r = get(addr, "/data.bin", "Range: bytes=0-2, 10-12\r\n");
    assert_eq!(r.status, 206);
    let ct = r.header("Content-Type").unwrap();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("{ct}"));
    let mut want = Vec::new();
    for (a, b) in [(0usize, 2usize), (10, 12)] {
        want.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\
                 Content-Range: bytes {a}-{b}/1000\r\n\r\n"
            )
            .as_bytes(),
        );
        want.extend_from_slice(&data[a..=b]);
    }
    want.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(r.body, want);

    // Large bodies (sendfile), whole and ranged.
    let r = get(addr, "/big.bin", "");
    assert_eq!(r.status, 200);
    assert!(r.body == big, "large body differs");
    let r = get(addr, "/big.bin", "Range: bytes=1000000-2999999\r\n");
    assert_eq!(r.status, 206);
    assert!(r.body == big[1_000_000..3_000_000], "large range differs");
}

#[test]
fn only_get_and_head() {
    let (dir, _) = site();
    let (_s, addr) = serve(dir, &[]);
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"] {
        let r = get_method(addr, m);
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    }
    // A body we will not read closes the connection after the answer (no smuggling).
    let mut c = Conn::open(addr);
    c.send(b"POST /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nGET /");
    let r = c.response(false);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(c.closed());
}

fn get_method(addr: SocketAddr, method: &str) -> Response {
    let mut c = Conn::open(addr);
    c.send(format!("{method} /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    c.response(false)
}

#[test]
fn directories_redirect_index_and_list() {
    let (dir, www) = site();
    std::fs::create_dir_all(www.join("site")).unwrap();
    write(&www.join("site/index.html"), "<p>index</p>");
    std::fs::create_dir_all(www.join("files/sub dir")).unwrap();
    write(&www.join("files/<img src=x onerror=alert(1)>.txt"), "x");
    write(&www.join("files/a&b\"c'.txt"), "y");
    write(&www.join("files/big.bin"), vec![0u8; 2048]);
    write(&www.join("files/.hidden"), "h");
    let (_s, addr) = serve(dir, &[]);

    let r = get(addr, "/site?x=1", "");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("/site/?x=1"));
    let r = get(addr, "/site/", "");
    assert_eq!((r.status, r.text().as_str()), (200, "<p>index</p>"));
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        get(addr, "/files/sub%20dir", "").header("Location"),
        Some("/files/sub%20dir/")
    );

    let r = get(addr, "/files/", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let html = r.text();
    assert!(html.contains("<meta name=\"viewport\""), "{html}");
    assert!(html.contains("<a href=\"../\">../</a>"), "{html}");
    assert!(html.contains("href=\"%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt\""));
    assert!(
        html.contains(">&lt;img src=x onerror=alert(1)&gt;.txt</a>"),
        "{html}"
    );
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("href=\"a%26b%22c%27.txt\">a&amp;b&quot;c&#39;.txt</a>"));
    assert!(html.contains("2.0 KiB"), "{html}");
    assert!(!html.contains(".hidden"), "{html}");
    // Directories first, then files by name.
    let order: Vec<usize> = ["sub%20dir/", "%3Cimg", "a%26b", "big.bin"]
        .iter()
        .map(|n| {
            html.find(n)
                .unwrap_or_else(|| panic!("{n} missing: {html}"))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // The listed links lead back to the files.
    let r = get(addr, "/files/a%26b%22c%27.txt", "");
    assert_eq!(r.body, b"y");
}

#[test]
fn no_listing_answers_404() {
    let (dir, www) = site();
    std::fs::create_dir(www.join("d")).unwrap();
    let (_s, addr) = serve(dir, &["--no-listing"]);
    assert_eq!(get(addr, "/d/", "").status, 404);
    assert_eq!(get(addr, "/hello.txt", "").status, 200);
}

#[test]
fn dotfiles_are_hidden_unless_asked() {
    let (dir, www) = site();
    write(&www.join(".env"), "KEY=1");
    std::fs::create_dir(www.join(".git")).unwrap();
    write(&www.join(".git/config"), "[core]");
    let (s, addr) = serve(dir, &[]);
    for p in [
        "/.env",
        "/.git/config",
        "/.git/",
        "/%2egit/config",
        "/x/../.env",
    ] {
        assert_eq!(get(addr, p, "").status, 404, "{p}");
    }
    drop(s);
    let (dir, www) = site();
    write(&www.join(".env"), "KEY=1");
    let (_s, addr) = serve(dir, &["--show-hidden"]);
    assert_eq!(get(addr, "/.env", "").body, b"KEY=1");
    assert!(get(addr, "/", "").text().contains(".env"));
}

#[test]
fn symlinks_inside_are_served_outside_refused() {
    use std::os::unix::fs::symlink;
    let (dir, www) = site();
    let secret = dir.path().join("secret.txt");
    std::fs::create_dir(www.join("sub")).unwrap();
    symlink("hello.txt", www.join("rel-inside")).unwrap();
    symlink("../hello.txt", www.join("sub/up-inside")).unwrap();
    symlink(
        www.canonicalize().unwrap().join("hello.txt"),
        www.join("abs-inside"),
    )
    .unwrap();
    symlink(&secret, www.join("abs-outside")).unwrap();
    symlink("../secret.txt", www.join("rel-outside")).unwrap();
    symlink(dir.path(), www.join("dir-outside")).unwrap();
    let (s, addr) = serve(dir, &[]);
    for p in ["/rel-inside", "/sub/up-inside", "/abs-inside"] {
        let r = get(addr, p, "");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"hello, world\n"[..]),
            "{p}"
        );
    }
    for p in [
        "/abs-outside",
        "/rel-outside",
        "/dir-outside/secret.txt",
        "/dir-outside/",
    ] {
        let r = get(addr, p, "");
        assert_eq!(r.status, 403, "{p}");
        assert!(!r.text().contains("TOP-SECRET"));
    }
    drop(s);
    // With --follow-symlinks the operator has said links out are fine.
    let (dir, www) = site();
    symlink(dir.path().join("secret.txt"), www.join("abs-outside")).unwrap();
    symlink("../secret.txt", www.join("rel-outside")).unwrap();
    let (_s, addr) = serve(dir, &["--follow-symlinks"]);
    assert_eq!(get(addr, "/abs-outside", "").body, b"TOP-SECRET\n");
    assert_eq!(get(addr, "/rel-outside", "").body, b"TOP-SECRET\n");
}

/// Issue 11: a name that is not UTF-8 (here Latin-1 `café.txt` and a lone 0xFF byte) is listed
/// with U+FFFD, linked by its percent-encoded bytes, and served when asked by those bytes, as
/// nginx does. Overlong forms stay refused (see `hostile_paths_never_leave_the_root`).
#[test]
fn names_that_are_not_utf8_are_listed_and_served() {
    use std::os::unix::ffi::OsStrExt;
    let (dir, www) = site();
    std::fs::create_dir(www.join("l1")).unwrap();
    let latin1 = www
        .join("l1")
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    write(&latin1, "latin-1");
    let ff = www.join("l1").join(std::ffi::OsStr::from_bytes(b"\xff"));
    std::fs::create_dir(&ff).unwrap();
    write(&ff.join("in.txt"), "inside");
    let (_s, addr) = serve(dir, &[]);
    let r = get(addr, "/l1/", "");
    assert_eq!(r.status, 200);
    let html = r.text();
    assert!(
        html.contains("href=\"caf%E9.txt\">caf\u{FFFD}.txt</a>"),
        "{html}"
    );
    assert!(html.contains("href=\"%FF/\">\u{FFFD}/</a>"), "{html}");
    assert_eq!(get(addr, "/l1/caf%E9.txt", "").body, b"latin-1");
    assert_eq!(get(addr, "/l1/caf%e9.txt", "").body, b"latin-1");
    assert_eq!(get(addr, "/l1/%FF/in.txt", "").body, b"inside");
    let r = get(addr, "/l1/%FF", "");
    assert_eq!((r.status, r.header("Location")), (301, Some("/l1/%FF/")));
    assert_eq!(get(addr, "/l1/caf%C3%A9.txt", "").status, 404);
}

#[test]
fn hostile_paths_never_leave_the_root() {
    let (dir, www) = site();
    std::fs::create_dir(www.join("a")).unwrap();
    write(&www.join("a/b.txt"), "b");
    let (_s, addr) = serve(dir, &[]);
    let hostile = [
        "/../secret.txt",
        "/../../secret.txt",
        "/a/../../secret.txt",
        "/a/b/../../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/%2e./secret.txt",
        "/a/%2e%2e/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/a%2f..%2f..%2fsecret.txt",
        "/..%2fsecret.txt",
        "/%252e%252e/secret.txt",
        "/%252e%252e%252fsecret.txt",
        "/..%5csecret.txt",
        "/..%5Csecret.txt",
        "/a%5c..%5c..%5csecret.txt",
        "/..\\secret.txt",
        "/%c0%ae%c0%ae/secret.txt",
        "/%c0%2e%c0%2e/secret.txt",
        "/%e0%80%ae%e0%80%ae/secret.txt",
        "/..%00/secret.txt",
        "/hello.txt%00.html",
        "/%00",
        "/%ff%fe",
        "/%",
        "/%2",
        "/%g0",
        "//../secret.txt",
        "/./../secret.txt",
        "/a/./../../secret.txt",
        "/C:/secret.txt",
        "/c:%5csecret.txt",
        "/%2Fetc%2Fpasswd",
        "//etc/passwd",
        "/etc/passwd",
        "/..;/secret.txt",
        "/....//secret.txt",
        "/.../secret.txt",
        "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "http://t/../secret.txt",
        "*",
        "secret.txt",
        "../secret.txt",
    ];
    assert!(hostile.len() >= 30);
    for p in hostile {
        let r = get(addr, p, "");
        assert!(
            matches!(r.status, 400 | 403 | 404),
            "{p}: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("TOP-SECRET"), "{p}");
        assert!(!r.text().contains("root:"), "{p}");
    }
    // Each doubled-encoding form names a literal file; the normal forms still work.
    assert_eq!(get(addr, "/a/b.txt", "").body, b"b");
    assert_eq!(get(addr, "/a/../a/./b.txt", "").body, b"b");
    assert_eq!(get(addr, "/a%2fb.txt", "").status, 400);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (dir, www) = site();
    write(&www.join("two.txt"), "two");
    let (_s, addr) = serve(dir, &[]);
    let mut c = Conn::open(addr);
    c.send(
        b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /two.txt HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /missing HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /two.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(c.response(false).body, b"hello, world\n");
    let h = c.response(true);
    assert_eq!((h.status, h.header("Content-Length")), (200, Some("3")));
    assert_eq!(c.response(false).status, 404);
    let last = c.response(false);
    assert_eq!(last.body, b"two");
    assert_eq!(last.header("Connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn slow_heads_get_408_and_idle_connections_close() {
    let (dir, _) = site();
    let (_s, addr) = serve(dir, &["--header-timeout", "1", "--keep-alive", "1"]);
    // A head that stalls half-way.
    let mut c = Conn::open(addr);
    let t = Instant::now();
    c.send(b"GET /hello.txt HTTP/1.1\r\nHo");
    let r = c.response(false);
    assert_eq!(r.status, 408);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(c.closed());
    // A head dribbled byte by byte past the deadline: also 408, the deadline is for the head.
    let mut c = Conn::open(addr);
    let t = Instant::now();
    let mut got_408 = false;
    for b in b"GET /hello.txt HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        if c.s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(40));
        if t.elapsed() > Duration::from_millis(1500) {
            got_408 = c.response(false).status == 408;
            break;
        }
    }
    assert!(got_408);
    // A kept-alive connection is closed after --keep-alive of silence, quietly (no 408: no
    // request was begun), even with a longer header timeout.
    let (dir, _) = site();
    let (_s2, addr) = serve(dir, &["--header-timeout", "8", "--keep-alive", "1"]);
    let mut c = Conn::open(addr);
    c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response(false).status, 200);
    let t = Instant::now();
    assert!(c.closed());
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn oversize_and_malformed_heads() {
    let (dir, _) = site();
    let (_s, addr) = serve(
        dir,
        &[
            "--limit-request-line",
            "100",
            "--limit-request-fields",
            "5",
            "--limit-request-field-size",
            "64",
        ],
    );
    let long_path = format!("/{}", "a".repeat(100));
    let many: String = (0..6).map(|i| format!("X-{i}: 1\r\n")).collect();
    let cases: Vec<(String, u16)> = vec![
        (format!("GET {long_path} HTTP/1.1\r\nHost: t\r\n\r\n"), 414),
        (format!("GET /{} HTTP/1.1", "a".repeat(300)), 414),
        (format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n"), 431),
        (
            format!("GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n", "v".repeat(80)),
            431,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: t\r\nX: {}", "v".repeat(200)),
            431,
        ),
        ("GET / HTTP/1.1\r\n\r\n".to_string(), 400),
        // A later major version sent as text: 505, as nginx answers (RFC 9110 §15.6.6).
        ("GET / HTTP/9.9\r\nHost: t\r\n\r\n".to_string(), 505),
        ("GET / HTTP/2.0\r\nHost: t\r\n\r\n".to_string(), 505),
        ("GET / HTTP/0.9\r\nHost: t\r\n\r\n".to_string(), 400),
        ("GET / http/1.1\r\nHost: t\r\n\r\n".to_string(), 400),
        ("GET /\x01 HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), 400),
        ("G E T / HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), 400),
        ("GET / HTTP/1.1\r\nHost t\r\n\r\n".to_string(), 400),
        (
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n\r\n".to_string(),
            400,
        ),
    ];
    for (raw, status) in cases {
        let mut c = Conn::open(addr);
        c.send(raw.as_bytes());
        let r = c.response(false);
        assert_eq!(r.status, status, "{raw:?}");
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(r.text().starts_with(&status.to_string()));
        assert!(c.closed(), "{raw:?}");
    }
    // A later HTTP/1 minor version is served as HTTP/1.1 (RFC 9112 §2.3).
    let mut c = Conn::open(addr);
    c.send(b"GET /nothing-here HTTP/1.7\r\nHost: t\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Connection"), Some("keep-alive"));
    // Right at the limits is fine.
    let path = format!("/{}", "a".repeat(100 - "GET / HTTP/1.1".len()));
    let r = get(addr, &path, &format!("X: {}\r\n", "v".repeat(64 - 3)));
    assert_eq!(r.status, 404);
}

#[test]
fn precompressed_siblings_by_accept_encoding() {
    let (dir, www) = site();
    write(&www.join("app.js"), "identity");
    write(&www.join("app.js.gz"), "gzip-bytes");
    write(&www.join("app.js.br"), "brotli-bytes");
    let (_s, addr) = serve(dir, &[]);
    for (ae, body, enc) in [
        ("", "identity", None),
        ("Accept-Encoding: gzip\r\n", "gzip-bytes", Some("gzip")),
        ("Accept-Encoding: gzip, br\r\n", "brotli-bytes", Some("br")),
        (
            "Accept-Encoding: br;q=0, gzip\r\n",
            "gzip-bytes",
            Some("gzip"),
        ),
        ("Accept-Encoding: zstd\r\n", "identity", None),
        ("Accept-Encoding: identity\r\n", "identity", None),
    ] {
        let r = get(addr, "/app.js", ae);
        assert_eq!(r.text(), body, "{ae}");
        assert_eq!(r.header("Content-Encoding"), enc, "{ae}");
        assert_eq!(
            r.header("Content-Type"),
            Some("text/javascript; charset=utf-8")
        );
        if !ae.is_empty() {
            assert_eq!(r.header("Vary"), Some("Accept-Encoding"), "{ae}");
        }
    }
    let gz = get(addr, "/app.js", "Accept-Encoding: gzip\r\n");
    let id = get(addr, "/app.js", "Accept-Encoding: identity\r\n");
    assert_ne!(gz.header("ETag"), id.header("ETag"));
}

#[test]
fn a_file_replaced_or_truncated_mid_download() {
    let (dir, www) = site();
    let len = 32 << 20;
    let original = pattern(len);
    write(&www.join("big.bin"), &original);
    let (_s, addr) = serve(dir, &[]);

    // Renamed over mid-send: the open descriptor keeps the old file, sent whole.
    let mut c = Conn::open(addr);
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    c.fill();
    write(&www.join("new.bin"), b"short");
    std::fs::rename(www.join("new.bin"), www.join("big.bin")).unwrap();
    let r = c.response(false);
    assert_eq!(r.header("Content-Length"), Some(len.to_string().as_str()));
    assert!(r.body == original, "replaced file changed the body");

    // Truncated in place mid-send: never more than Content-Length, and the connection closes
    // short so the client knows.
    write(&www.join("big.bin"), &original);
    let mut c = Conn::open(addr);
    c.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    while find(&c.buf, b"\r\n\r\n").is_none() {
        assert!(c.fill() > 0);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(www.join("big.bin"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    let head_end = find(&c.buf, b"\r\n\r\n").unwrap() + 4;
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.fill() > 0 {
        assert!(Instant::now() < deadline);
    }
    let body = c.buf.len() - head_end;
    assert!(
        body < len,
        "the whole file arrived although it was truncated"
    );
    assert!(body <= len);
}

#[test]
fn graceful_stop_finishes_the_request_and_closes_idle_connections() {
    let (dir, www) = site();
    write(&www.join("big.bin"), pattern(8 << 20));
    let (mut s, addr) = serve(dir, &[]);
    // Idle kept-alive connection.
    let mut idle = Conn::open(addr);
    idle.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.response(false).status, 200);
    // A request whose head is half sent when the stop begins (after one full exchange, so the
    // connection is surely accepted; loopback bytes are in the server's buffer once written).
    let mut half = Conn::open(addr);
    half.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(half.response(false).status, 200);
    half.send(b"GET /big.bin HTTP/1.1\r\n");
    let mark = s.mark();
    s.signal(Signal::SIGTERM);
    s.wait_for_lines_after(mark, "shutting down", 1, SOON);
    assert!(idle.closed(), "idle connection left open during the stop");
    half.send(b"Host: t\r\n\r\n");
    let r = half.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 8 << 20);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(s.wait_exit(SOON).unwrap().success());
}

/// A kept-alive connection idle for a while is parked (its task ended, issue 13): a graceful
/// stop still closes it at once, and the server exits.
#[test]
fn graceful_stop_closes_parked_kept_alive_connections() {
    let (dir, _) = site();
    let (mut s, addr) = serve(dir, &["--keep-alive", "60"]);
    let mut idle = Conn::open(addr);
    idle.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.response(false).status, 200);
    // Idle past the moment it parks (`service::park::PARK_AFTER`, 1 s).
    std::thread::sleep(Duration::from_millis(2500));
    let mark = s.mark();
    let started = Instant::now();
    s.signal(Signal::SIGTERM);
    s.wait_for_lines_after(mark, "shutting down", 1, SOON);
    assert!(idle.closed(), "parked connection left open during the stop");
    assert!(s.wait_exit(SOON).unwrap().success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn access_log_in_gunicorn_format() {
    let (dir, _) = site();
    let (s, addr) = serve(dir, &["--access-logfile", "access.log"]);
    get(
        addr,
        "/hello.txt?q=1",
        "User-Agent: tester/1.0\r\nReferer: http://r/\r\n",
    );
    get(addr, "/nope", "User-Agent: bad\"agent\r\n");
    let log = s.path("access.log");
    let mut text = String::new();
    assert!(eventually(SOON, || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 2
    }));
    let lines: Vec<&str> = text.lines().collect();
    let first = lines[0];
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.contains("] \"GET /hello.txt?q=1 HTTP/1.1\" 200 13 \"http://r/\" \"tester/1.0\" "),
        "{first}"
    );
    // Time in gunicorn's form: [22/Nov/2026:03:04:05 +0000].
    let when = &first[first.find('[').unwrap() + 1..first.find(']').unwrap()];
    assert!(when.ends_with(" +0000") && when.len() == 26, "{when}");
    let micros = first.rsplit(' ').next().unwrap();
    assert!(micros.parse::<u64>().is_ok(), "{first}");
    assert!(
        lines[1].contains("\" 404 ") && lines[1].contains("bad\\x22agent"),
        "{}",
        lines[1]
    );
}

/// `--access-logformat` takes gunicorn's atoms; an unknown atom is refused before anything
/// starts, naming the atom.
#[test]
fn access_log_in_a_custom_format() {
    let (dir, _) = site();
    let (s, addr) = serve(
        dir,
        &[
            "--access-logfile",
            "access.log",
            "--access-logformat",
            "%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(M)s|%(p)s|100%%",
        ],
    );
    let head = "HEAD /hello.txt?a=1 HTTP/1.0\r\n\r\n";
    let mut c = Conn::open(addr);
    c.send(head.as_bytes());
    assert_eq!(c.response(true).status, 200);
    let log = s.path("access.log");
    let mut text = String::new();
    assert!(eventually(SOON, || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 1
    }));
    let fields: Vec<&str> = text.lines().next().unwrap().split('|').collect();
    assert_eq!(
        fields[..6],
        ["HEAD", "/hello.txt", "a=1", "HTTP/1.0", "200", "0"]
    );
    assert!(fields[6].parse::<u64>().is_ok(), "{text}");
    let pids: Vec<String> = s.booted_pids().iter().map(|p| format!("<{p}>")).collect();
    assert!(pids.contains(&fields[7].to_string()), "{text} {pids:?}");
    assert_eq!(fields[8], "100%");

    let (dir, _) = site();
    let out = std::process::Command::new(BIN)
        .args([
            "static",
            "www",
            "--access-logformat",
            "%(h)s %(x)s",
            "--check-config",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("access-logformat") && err.contains("%(x)s"),
        "{err}"
    );
}

/// gunicorn's header atoms: `%({name}i)s` a request header, `%({name}o)s` one of the reply's
/// own headers, either case, `-` when absent (or when no head was read). Values are escaped
/// as the other atoms are and cut at 1024 bytes, marked `\...`.
#[test]
fn access_log_shows_headers_named_in_the_format() {
    let (dir, _) = site();
    let (s, addr) = serve(
        dir,
        &[
            "--access-logfile",
            "access.log",
            "--access-logformat",
            "%(s)s %({User-Agent}i)s %({content-type}o)s %({x-missing}i)s %({ETag}o)s",
        ],
    );
    let hello = get(addr, "/hello.txt", "User-Agent: test/1\r\n");
    assert_eq!(hello.status, 200);
    let etag = hello.header("etag").unwrap().to_string();
    // A hostile user agent: quotes, a tab, a byte that is not UTF-8, and long.
    let mut c = Conn::open(addr);
    let mut head = b"GET /nope HTTP/1.1\r\nHost: t\r\nUser-Agent: a\"b\tc\xffd".to_vec();
    head.extend(std::iter::repeat_n(b'x', 3000));
    head.extend_from_slice(b"\r\n\r\n");
    c.send(&head);
    assert_eq!(c.response(false).status, 404);
    let mut c = Conn::open(addr);
    c.send(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n");
    assert_eq!(c.response(false).status, 400);
    let log = s.path("access.log");
    let mut text = String::new();
    assert!(eventually(SOON, || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 3
    }));
    let lines: Vec<&str> = text.lines().collect();
    let etag = etag.replace('"', "\\x22");
    assert_eq!(
        lines[0],
        format!("200 test/1 text/plain; charset=utf-8 - {etag}")
    );
    let agent = format!("a\\x22b\\x09c\\xffd{}\\...", "x".repeat(1024 - 16));
    assert_eq!(
        lines[1],
        format!("404 {agent} text/html; charset=utf-8 - -")
    );
    assert_eq!(lines[2], "400 - text/plain; charset=utf-8 - -");
}

#[test]
fn curl_downloads_ranges_and_conditionals() {
    if !support::installed("curl") {
        eprintln!("curl not installed; skipped");
        return;
    }
    let (dir, www) = site();
    let data = pattern(200_000);
    write(&www.join("data.bin"), &data);
    let (_s, addr) = serve(dir, &[]);
    let url = format!("http://{addr}/data.bin");
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert!(curl(&[&url]) == data);
    assert_eq!(curl(&["-r", "100-199", &url]), &data[100..200]);
    let code = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT",
        &url,
    ]);
    assert_eq!(code, b"304");
    // Two requests in one curl run share one kept-alive connection: the second makes no new
    // connect. The listing and a HEAD come along.
    let listing = format!("http://{addr}/");
    let out = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{num_connects}\n",
        &listing,
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&out), "200 1\n200 0\n");
    let head = curl(&["-I", &url]);
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 200000\r\n"), "{head}");
}

#[test]
fn unix_listeners_serve_http_too() {
    let (dir, _) = site();
    let s = Oxicorn::start_with(
        dir,
        &["static", "www", "-w", "1", "-b", "unix:web.sock"],
        &[],
    );
    s.wait_ready(1, 1);
    let line = s.wait_for_line("serving ");
    assert!(
        line.contains("on unix:web.sock (HTTP over a Unix socket) (1 worker)"),
        "{line}"
    );
    let mut c = Client::connect(&format!("unix:{}", s.path("web.sock").display())).unwrap();
    c.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello, world\n"), "{text}");
}

#[test]
fn check_config_shows_the_static_settings() {
    let (dir, _) = site();
    let out = std::process::Command::new(BIN)
        .args([
            "static",
            "www",
            "--no-listing",
            "--keep-alive",
            "2",
            "--check-config",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("service                  static"), "{text}");
    assert!(text.contains("no_listing               true"), "{text}");
    assert!(text.contains("keep_alive               2s"), "{text}");
    let out = std::process::Command::new(BIN)
        .args(["static", "www", "--print-config"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("limit_request_line = 4094"), "{text}");
    assert!(text.contains("root = \""), "{text}");
}

#[test]
fn usr1_reopens_the_access_log() {
    let (dir, _) = site();
    let (s, addr) = serve(dir, &["--access-logfile", "access.log"]);
    get(addr, "/hello.txt", "");
    let log = s.path("access.log");
    assert!(eventually(SOON, || std::fs::read_to_string(&log)
        .is_ok_and(|t| t.contains("/hello.txt"))));
    // logrotate: move the file away, then USR1.
    std::fs::rename(&log, s.path("access.log.1")).unwrap();
    s.signal(Signal::SIGUSR1);
    assert!(
        eventually(SOON, || {
            get(addr, "/after-rotate", "");
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/after-rotate"))
        }),
        "no new access.log after USR1"
    );
    let old = std::fs::read_to_string(s.path("access.log.1")).unwrap();
    assert!(old.contains("/hello.txt"));
}

#[test]
fn a_file_shorter_than_its_stat_is_never_padded_or_overrun() {
    // sysfs files claim 4096 bytes and hold a few: a file that "shrank" between fstat and
    // read, on demand. The server retries once, then sends what there is and closes, so the
    // client sees fewer bytes than Content-Length and a closed connection, never a lie.
    let Some(sys) = [
        "/sys/devices/system/cpu/online",
        "/sys/kernel/profiling",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ]
    .into_iter()
    .find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == 4096)
            && std::fs::read(p).is_ok_and(|d| !d.is_empty() && d.len() < 4096)
    }) else {
        eprintln!("no short sysfs file here; skipped");
        return;
    };
    let content = std::fs::read(sys).unwrap();
    let (dir, www) = site();
    std::os::unix::fs::symlink(sys, www.join("short")).unwrap();
    let (_s, addr) = serve(dir, &["--follow-symlinks"]);
    let mut c = Conn::open(addr);
    c.send(b"GET /short HTTP/1.1\r\nHost: t\r\n\r\n");
    let deadline = Instant::now() + SOON;
    while c.fill() > 0 {
        assert!(Instant::now() < deadline);
    }
    let end = find(&c.buf, b"\r\n\r\n").expect("a head") + 4;
    let head = String::from_utf8_lossy(&c.buf[..end]).to_string();
    assert!(head.contains("Content-Length: 4096\r\n"), "{head}");
    assert_eq!(&c.buf[end..], &content[..], "{head}");
}

#[test]
fn keep_alive_clients_see_no_error_across_a_reload() {
    let (dir, _) = site();
    let (s, addr) = serve(dir, &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Back-to-back requests on kept-alive connections; a response saying
                // `Connection: close` ends one connection cleanly and the next begins. Any
                // reset or short response panics this thread, failing the test.
                let mut served = 0u32;
                let started = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(30)
                {
                    let mut c = Conn::open(addr);
                    loop {
                        c.send(b"GET /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n");
                        let r = c.response(false);
                        assert_eq!(r.status, 200);
                        assert_eq!(r.body, b"hello, world\n");
                        served += 1;
                        if r.header("Connection") == Some("close")
                            || stop.load(std::sync::atomic::Ordering::Relaxed)
                        {
                            break;
                        }
                    }
                }
                served
            })
        })
        .collect();
    for _ in 0..3 {
        let mark = s.mark();
        s.signal(Signal::SIGHUP);
        s.wait_for_lines_after(mark, "reload complete", 1, SOON);
        s.wait_for_lines_after(mark, " exited", 1, SOON);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        assert!(c.join().expect("a client saw an error") > 0);
    }
}

/// One request with any method, read as HEAD reads when `method` is HEAD.
fn request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Response {
    let mut c = Conn::open(addr);
    c.send(format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes());
    c.response(method == "HEAD")
}

/// Issue 11: a URL with a precompressed sibling says `Vary: Accept-Encoding` on every response
/// (200, 206, 304, HEAD), also to a client that sent no Accept-Encoding (RFC 9110 §12.5.5:
/// the identity response depends on that header too). A file without siblings sends none.
#[test]
fn vary_on_every_response_of_a_url_with_variants() {
    let (dir, www) = site();
    write(&www.join("app.js"), "identity-body");
    write(&www.join("app.js.gz"), "gzip-bytes");
    let (_s, addr) = serve(dir, &[]);
    let plain = get(addr, "/app.js", "");
    let etag = plain.header("ETag").unwrap().to_string();
    let cases = [
        ("GET", String::new(), 200),
        ("GET", "Accept-Encoding: gzip\r\n".to_string(), 200),
        ("HEAD", String::new(), 200),
        ("GET", "Range: bytes=0-3\r\n".to_string(), 206),
        ("GET", format!("If-None-Match: {etag}\r\n"), 304),
    ];
    for (method, extra, status) in cases {
        let r = request(addr, method, "/app.js", &extra);
        assert_eq!(r.status, status, "{method} {extra}");
        assert_eq!(
            r.header("Vary"),
            Some("Accept-Encoding"),
            "{method} {extra}"
        );
    }
    assert_eq!(plain.text(), "identity-body");
    assert!(get(addr, "/hello.txt", "").header("Vary").is_none());
}

/// Issue 11, RFC 9110 §14: every edge of Range. An empty file is sent whole with 200 (nginx,
/// Apache and werkzeug do; §14.1.3 allows ignoring Range); a suffix longer than the file is
/// the whole file as 206 (§14.1.3); a range wholly past the end is 416 with `bytes */len`
/// (§15.5.17); HEAD ignores Range, which only GET defines (§14.2).
#[test]
fn range_edges_from_rfc_9110() {
    let (dir, www) = site();
    write(&www.join("empty.txt"), "");
    write(&www.join("ten.bin"), "0123456789");
    let (_s, addr) = serve(dir, &[]);
    for range in ["bytes=0-", "bytes=0-0", "bytes=-5", "bytes=3-7"] {
        let r = get(addr, "/empty.txt", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(r.header("Content-Length"), Some("0"), "{range}");
        assert!(r.header("Content-Range").is_none(), "{range}");
    }
    let r = get(addr, "/ten.bin", "Range: bytes=-50\r\n");
    assert_eq!((r.status, r.text().as_str()), (206, "0123456789"));
    assert_eq!(r.header("Content-Range"), Some("bytes 0-9/10"));
    let r = get(addr, "/ten.bin", "Range: bytes=9-100\r\n");
    assert_eq!((r.status, r.text().as_str()), (206, "9"));
    let r = get(addr, "/ten.bin", "Range: bytes=10-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("Content-Range"), Some("bytes */10"));
    let r = request(addr, "HEAD", "/ten.bin", "Range: bytes=0-3\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("10"));
    assert!(r.header("Content-Range").is_none());
}

/// Issue 11: `.mjs` is JavaScript, and JavaScript is `text/javascript` (RFC 9239 §6).
#[test]
fn module_scripts_are_text_javascript() {
    let (dir, www) = site();
    write(&www.join("m.mjs"), "export {}");
    let (_s, addr) = serve(dir, &[]);
    let r = get(addr, "/m.mjs", "");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/javascript; charset=utf-8")
    );
}

/// Issue 11: `--max-age` (or `max_age` in the file) sends `Cache-Control: max-age=N` with files
/// (200, 206, and 304, which repeats it per RFC 9110 §15.4.5), never with listings or errors.
#[test]
fn max_age_on_files_only() {
    let (dir, www) = site();
    std::fs::create_dir(www.join("d")).unwrap();
    let (s, addr) = serve(dir, &["--max-age", "600"]);
    let r = get(addr, "/hello.txt", "");
    assert_eq!(r.header("Cache-Control"), Some("max-age=600"));
    let etag = r.header("ETag").unwrap().to_string();
    let r = get(addr, "/hello.txt", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(r.status, 304);
    assert_eq!(r.header("Cache-Control"), Some("max-age=600"));
    let r = get(addr, "/hello.txt", "Range: bytes=0-1\r\n");
    assert_eq!(
        (r.status, r.header("Cache-Control")),
        (206, Some("max-age=600"))
    );
    let r = get(addr, "/d/", "");
    assert_eq!(
        (r.status, r.header("Cache-Control")),
        (200, Some("no-cache"))
    );
    let r = get(addr, "/missing", "");
    assert_eq!((r.status, r.header("Cache-Control")), (404, None));
    drop(s);

    // Off by default; the file key works as the flag does.
    let (dir, _) = site();
    let (_s, addr) = serve(dir, &[]);
    assert_eq!(get(addr, "/hello.txt", "").header("Cache-Control"), None);
    let (dir, _) = site();
    std::fs::write(dir.path().join("o.toml"), "max_age = 30\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["static", "www", "-c", "o.toml", "--check-config"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("max_age                  30s"), "{text}");
}

/// Issue 11: a listing carries a strong ETag computed from its content and answers a matching
/// `If-None-Match` with 304 (RFC 9110 §13.1.2), so `Cache-Control: no-cache` can be honoured;
/// a new file changes the page and so the tag.
#[test]
fn listings_revalidate_with_an_etag() {
    let (dir, www) = site();
    std::fs::create_dir(www.join("d")).unwrap();
    write(&www.join("d/one.txt"), "1");
    let (_s, addr) = serve(dir, &[]);
    let r = get(addr, "/d/", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Cache-Control"), Some("no-cache"));
    let etag = r.header("ETag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let again = get(addr, "/d/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(again.status, 304);
    assert_eq!(again.header("ETag"), Some(etag.as_str()));
    assert!(again.body.is_empty());
    let head = request(addr, "HEAD", "/d/", "");
    assert_eq!(head.header("ETag"), Some(etag.as_str()));
    write(&www.join("d/two.txt"), "2");
    let changed = get(addr, "/d/", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("ETag"), Some(etag.as_str()));
}

/// Issue 11, the listing: natural order (`IMG_2` before `IMG_10`), breadcrumbs, a dark scheme,
/// a date column that never wraps, 44 px tap targets on phones; and a 404 page that links to
/// the root.
#[test]
fn listing_page_and_404_page() {
    let (dir, www) = site();
    std::fs::create_dir_all(www.join("photos/2026")).unwrap();
    for n in ["IMG_10.jpg", "IMG_2.jpg", "IMG_1.jpg"] {
        write(&www.join("photos/2026").join(n), "j");
    }
    let (_s, addr) = serve(dir, &[]);
    let html = get(addr, "/photos/2026/", "").text();
    let at = |n: &str| html.find(n).unwrap_or_else(|| panic!("{n}: {html}"));
    assert!(at("IMG_1.jpg") < at("IMG_2.jpg") && at("IMG_2.jpg") < at("IMG_10.jpg"));
    assert!(
        html.contains(
            "<a href=\"/\">/</a><a href=\"/photos/\">photos</a>/\
             <a href=\"/photos/2026/\">2026</a>/"
        ),
        "{html}"
    );
    assert!(html.contains("prefers-color-scheme:dark"), "{html}");
    assert!(html.contains(".t{white-space:nowrap}"), "{html}");
    assert!(html.contains("min-height:44px"), "{html}");
    let r = get(addr, "/no/such/page", "");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(r.text().contains("<a href=\"/\">"), "{}", r.text());
}

/// The first Chromium-like browser on PATH.
fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// A page on the same origin that loads `/photos/` in a `width`×`height` frame (the frame is
/// the listing's viewport, so its media queries see exactly that width) and writes layout
/// facts measured through the DOM into `#out`, for `--dump-dom`.
fn layout_harness(width: u32, height: u32) -> String {
    format!(
        r#"<!DOCTYPE html><html><head><style>html,body{{margin:0}}
iframe{{border:0;display:block;width:{width}px;height:{height}px}}</style></head><body>
<pre id="out">PENDING</pre><iframe id="f" src="/photos/" onload="measure()"></iframe>
<script>
function measure() {{
  var d = document.getElementById('f').contentDocument, w = d.defaultView;
  var all = function (q) {{ return [].slice.call(d.querySelectorAll(q)); }};
  var h = function (e) {{ return e.getBoundingClientRect().height; }};
  var lines = function (e) {{
    var r = d.createRange(); r.selectNodeContents(e); var tops = {{}};
    [].forEach.call(r.getClientRects(), function (x) {{ tops[Math.round(x.top)] = 1; }});
    return Object.keys(tops).length;
  }};
  var rows = all('tr').map(h), links = all('td a').map(h);
  var dates = all('td.t').filter(function (e) {{ return e.textContent; }});
  var shown = dates.filter(function (e) {{ return w.getComputedStyle(e).display != 'none'; }});
  document.getElementById('out').textContent = 'RESULT' +
    ' width=' + w.innerWidth +
    ' line=' + parseFloat(w.getComputedStyle(d.body).lineHeight) +
    ' maxrow=' + Math.max.apply(null, rows) +
    ' minlink=' + Math.min.apply(null, links) +
    ' dates=' + shown.length +
    ' datelines=' + Math.max.apply(null, shown.map(lines).concat([0])) +
    ' overflow=' + (d.documentElement.scrollWidth - w.innerWidth) +
    ' dark=' + (w.matchMedia('(prefers-color-scheme: dark)').matches ? 1 : 0) +
    ' bg=' + w.getComputedStyle(d.body).backgroundColor.replace(/ /g, '');
}}
</script></body></html>"#
    )
}

/// Issue 11, the listing checked in a real browser at a desktop (1280×800) and a phone
/// (390×844) size, light and dark: the date column never wraps even beside a very long name,
/// no row is taller than two lines of text on the desktop, nothing overflows sideways, every
/// link is at least 44 px tall on the phone, and the dark scheme changes the page. Skipped,
/// saying so, when no Chromium is installed. Screenshots go to the test's temp dir.
#[test]
fn listing_layout_in_headless_chromium() {
    let Some(chromium) = find_chromium() else {
        eprintln!(
            "skipped listing_layout_in_headless_chromium: no chromium on PATH \
             (apt-get install -y chromium)"
        );
        return;
    };
    let (dir, www) = site();
    std::fs::create_dir(www.join("photos")).unwrap();
    for n in ["IMG_1.jpg", "IMG_2.jpg", "IMG_10.jpg", "notes.txt"] {
        write(&www.join("photos").join(n), "x");
    }
    let long = format!(
        "{}.tar.gz",
        "a-very-long-file-name-without-spaces-".repeat(4)
    );
    write(&www.join("photos").join(&long), "x");
    std::fs::create_dir(www.join("photos/albums")).unwrap();
    write(&www.join("h1280.html"), layout_harness(1280, 800));
    write(&www.join("h390.html"), layout_harness(390, 844));
    let (s, addr) = serve(dir, &[]);
    let profile = s.path("chromium-profile");
    let browse = |args: &[&str]| {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let measure = |harness: &str, extra: &[&str]| -> std::collections::HashMap<String, String> {
        let mut args = vec!["--window-size=1280,1000", "--dump-dom"];
        args.extend_from_slice(extra);
        let url = format!("http://{addr}/{harness}");
        args.push(&url);
        let dom = browse(&args);
        let line = dom
            .lines()
            .find_map(|l| l.split("RESULT ").nth(1))
            .unwrap_or_else(|| panic!("no measurement in the DOM: {dom}"));
        line.trim_end_matches("</pre>")
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let num = |m: &std::collections::HashMap<String, String>, k: &str| -> f64 {
        m[k].parse().unwrap_or_else(|_| panic!("{k} in {m:?}"))
    };

    let desktop = measure("h1280.html", &[]);
    assert_eq!(num(&desktop, "width"), 1280.0, "{desktop:?}");
    assert_eq!(num(&desktop, "dates"), 6.0, "dates shown: {desktop:?}");
    assert_eq!(
        num(&desktop, "datelines"),
        1.0,
        "a date wrapped: {desktop:?}"
    );
    let line = num(&desktop, "line");
    // Two lines of text plus the cell padding (.3rem above and below).
    assert!(
        num(&desktop, "maxrow") <= 2.0 * line + 10.0,
        "a row taller than two lines: {desktop:?}"
    );
    assert!(num(&desktop, "overflow") <= 0.0, "{desktop:?}");
    assert_eq!(desktop["dark"], "0");

    let phone = measure("h390.html", &[]);
    assert_eq!(num(&phone, "width"), 390.0, "{phone:?}");
    assert!(
        num(&phone, "minlink") >= 44.0,
        "tap target < 44px: {phone:?}"
    );
    assert!(num(&phone, "overflow") <= 0.0, "{phone:?}");

    let dark = measure("h390.html", &["--force-dark-mode"]);
    assert_eq!(dark["dark"], "1", "{dark:?}");
    assert_ne!(dark["bg"], phone["bg"], "the dark scheme changed nothing");

    for (size, name) in [
        ("1280,800", "listing-1280x800.png"),
        ("390,844", "listing-390x844.png"),
    ] {
        let shot = s.path(name);
        let url = format!("http://{addr}/photos/");
        browse(&[
            &format!("--window-size={size}"),
            &format!("--screenshot={}", shot.display()),
            &url,
        ]);
        assert!(shot.is_file(), "no screenshot {}", shot.display());
    }
}

/// Reads one response on a connection that closes after it (`Connection: close` asked), to
/// EOF: the head, and every body byte that arrived, however many Content-Length promised.
fn get_to_eof(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut c = Conn::open(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes());
    let deadline = Instant::now() + SOON;
    while c.fill() > 0 {
        assert!(Instant::now() < deadline);
    }
    let end = find(&c.buf, b"\r\n\r\n").expect("a head") + 4;
    (
        String::from_utf8_lossy(&c.buf[..end]).into_owned(),
        c.buf[end..].to_vec(),
    )
}

#[test]
fn open_file_cache_valid_trusts_a_size_for_its_window_and_never_overruns() {
    // nginx's `open_file_cache_valid`: within the window a cached file's size is not checked,
    // so a write in place may be served with the old length; a file found shorter than that
    // is never padded or overrun, and the next request sees it as it is. (A file too large
    // for the cache to hold its bytes, so that they are read from the file: a small one is
    // served from memory, see `open_file_cache_valid_holds_a_small_file_as_it_was`.)
    let (dir, www) = site();
    let small = www.join("f.txt");
    // Past the 16 KiB the cache holds in memory, within the 64 KiB sent with the head.
    let pad = "-".repeat(17 * 1024);
    let padded = |s: &str| format!("{pad}{s}").into_bytes();
    write(&small, padded("0123456789"));
    let big = pattern(1 << 20);
    write(&www.join("big.bin"), &big);
    let window = Duration::from_secs(3);
    let (_s, addr) = serve(dir, &["--open-file-cache-valid", "3"]);
    assert_eq!(get(addr, "/f.txt", "").body, padded("0123456789"));
    let cached = Instant::now();

    // Grown in place: within the window, the old length (of the file's current bytes).
    write(&small, padded("0123456789abcdef"));
    let r = get(addr, "/f.txt", "");
    if cached.elapsed() < window {
        assert_eq!(r.body, padded("0123456789"));
    }

    // Truncated in place: the trusted length cannot be read, so the server answers again from
    // a fresh fstat, whatever the window says.
    write(&small, padded("0123"));
    let r = get(addr, "/f.txt", "");
    assert_eq!(
        r.header("Content-Length"),
        Some(padded("0123").len().to_string().as_str())
    );
    assert_eq!(r.body, padded("0123"));

    // A large file (sent with sendfile) truncated in place: if its old length was already
    // promised, the connection closes short, never past the file's bytes; the next request
    // gets the new length.
    assert_eq!(get(addr, "/big.bin", "").body.len(), big.len());
    std::fs::OpenOptions::new()
        .write(true)
        .open(www.join("big.bin"))
        .unwrap()
        .set_len(1000)
        .unwrap();
    let (head, body) = get_to_eof(addr, "/big.bin");
    assert!(body.len() <= 1000, "{} bytes after truncation", body.len());
    assert_eq!(body, big[..body.len()], "{head}");
    let r = get(addr, "/big.bin", "");
    assert_eq!(r.header("Content-Length"), Some("1000"));
    assert_eq!(r.body, big[..1000]);

    // After the window a write in place is seen without any shortfall to reveal it.
    let cached = Instant::now();
    let _ = get(addr, "/f.txt", "");
    let new = padded("abcdefghijklmnopqrst");
    write(&small, &new);
    let deadline = Instant::now() + window + SOON;
    loop {
        let r = get(addr, "/f.txt", "");
        let len: usize = r.header("Content-Length").unwrap().parse().unwrap();
        assert_eq!(r.body, &new[..len]);
        if len == new.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still the old length {}s after the write",
            cached.elapsed().as_secs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With `--open-file-cache-valid`, a small file's bytes are held in memory with the size and
/// mtime they were read under: within the window a write in place is not seen at all (the
/// old bytes with the old length and ETag, whether it grew, shrank or kept its size, never a
/// mix), ranges, HEAD and conditionals answer from the same bytes, and after the window the
/// new bytes come with a new ETag.
#[test]
fn open_file_cache_valid_holds_a_small_file_as_it_was() {
    let (dir, www) = site();
    let f = www.join("f.txt");
    write(&f, "0123456789");
    let window = Duration::from_secs(3);
    let (_s, addr) = serve(dir, &["--open-file-cache-valid", "3"]);
    let first = get(addr, "/f.txt", "");
    let cached = Instant::now();
    assert_eq!(first.body, b"0123456789");
    let etag = first.header("ETag").unwrap().to_string();
    let modified = first.header("Last-Modified").unwrap().to_string();

    // Written in place, longer, shorter and the same length: the old answer, whole.
    for now in ["0123456789abcdef", "0123", "abcdefghij"] {
        write(&f, now);
        let mut c = Conn::open(addr);
        c.send(
            format!(
                "GET /f.txt HTTP/1.1\r\nHost: t\r\n\r\n\
                 HEAD /f.txt HTTP/1.1\r\nHost: t\r\n\r\n\
                 GET /f.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=2-4\r\n\r\n\
                 GET /f.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0,-2\r\n\r\n\
                 GET /f.txt HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\n\r\n\
                 GET /f.txt HTTP/1.1\r\nHost: t\r\nIf-Match: {etag}\r\nRange: bytes=8-\r\n\r\n\
                 GET /f.txt HTTP/1.1\r\nHost: t\r\nIf-Range: {etag}\r\nRange: bytes=-3\r\n\r\n"
            )
            .as_bytes(),
        );
        let full = c.response(false);
        let head = c.response(true);
        let one = c.response(false);
        let multi = c.response(false);
        let not_modified = c.response(false);
        let if_match = c.response(false);
        let if_range = c.response(false);
        if cached.elapsed() >= window - Duration::from_millis(500) {
            // Too slow a machine to say anything about the window (which began a moment
            // before `cached`, when the server read the file).
            return;
        }
        assert_eq!(
            (full.status, &full.body[..]),
            (200, &b"0123456789"[..]),
            "{now}"
        );
        assert_eq!(full.header("ETag"), Some(etag.as_str()));
        assert_eq!(full.header("Last-Modified"), Some(modified.as_str()));
        assert_eq!(head.status, 200);
        assert_eq!(head.header("Content-Length"), Some("10"));
        assert_eq!(head.header("ETag"), Some(etag.as_str()));
        assert_eq!((one.status, &one.body[..]), (206, &b"234"[..]));
        assert_eq!(one.header("Content-Range"), Some("bytes 2-4/10"));
        assert_eq!(multi.status, 206);
        let text = multi.text();
        assert!(
            text.contains("Content-Range: bytes 0-0/10\r\n\r\n0\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Content-Range: bytes 8-9/10\r\n\r\n89\r\n"),
            "{text}"
        );
        assert_eq!(not_modified.status, 304);
        assert_eq!((if_match.status, &if_match.body[..]), (206, &b"89"[..]));
        assert_eq!((if_range.status, &if_range.body[..]), (206, &b"789"[..]));
    }

    // After the window: the new bytes, with an ETag of their own (and the old one no longer
    // matches).
    let deadline = cached + window + SOON;
    loop {
        let r = get(addr, "/f.txt", &format!("If-None-Match: {etag}\r\n"));
        if r.status == 200 {
            assert_eq!(r.body, b"abcdefghij");
            assert_ne!(r.header("ETag"), Some(etag.as_str()));
            let again = get(addr, "/f.txt", "");
            assert_eq!(again.body, b"abcdefghij");
            assert_eq!(again.header("ETag"), r.header("ETag"));
            break;
        }
        assert_eq!(r.status, 304);
        assert!(
            Instant::now() < deadline,
            "still the old file after the window"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Without a validity nothing is held: a write in place to a small file is served by the
/// very next response, bytes and ETag.
#[test]
fn without_open_file_cache_valid_a_small_file_written_in_place_is_seen_at_once() {
    let (dir, www) = site();
    let f = www.join("f.txt");
    write(&f, "0123456789");
    let (_s, addr) = serve(dir, &[]);
    let first = get(addr, "/f.txt", "");
    assert_eq!(first.body, b"0123456789");
    for now in ["0123456789abcdef", "0123", "abcdefghij"] {
        write(&f, now);
        let r = get(addr, "/f.txt", "");
        assert_eq!(r.body, now.as_bytes());
        let again = get(addr, "/f.txt", "");
        assert_eq!(again.header("ETag"), r.header("ETag"));
    }
}

/// A client's header value cannot make a line look like two, or show one field's text in
/// another's place: a Unicode line separator (a line break to many viewers) and a
/// bidirectional override (which shows what follows it reversed) are escaped as control
/// characters are, in the header atoms and in `%(a)s` alike.
#[test]
fn access_log_escapes_characters_that_break_or_reorder_a_line() {
    let (dir, _) = site();
    let (s, addr) = serve(
        dir,
        &[
            "--access-logfile",
            "access.log",
            "--access-logformat",
            "%(s)s [%({x-a}i)s] [%(a)s]",
        ],
    );
    let mut c = Conn::open(addr);
    c.send(
        "GET /hello.txt HTTP/1.1\r\nHost: t\r\nX-A: 1\u{2028}200 [\u{202e}x]\r\n\
         User-Agent: ua\u{2029}\u{2066}\r\nConnection: close\r\n\r\n"
            .as_bytes(),
    );
    assert_eq!(c.response(false).status, 200);
    let log = s.path("access.log");
    let mut text = String::new();
    assert!(eventually(SOON, || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= 1
    }));
    assert_eq!(
        text,
        "200 [1\\xe2\\x80\\xa8200 [\\xe2\\x80\\xaex]] [ua\\xe2\\x80\\xa9\\xe2\\x81\\xa6]\n"
    );
}

/// `%({name}o)s` shows the headers each kind of reply actually carried: the ETag of a 304,
/// the Content-Range of a 206 and of a 416, the Location of a redirect; `-` for one it did
/// not carry (a 304 has no Content-Type).
#[test]
fn response_header_atoms_show_what_each_reply_sent() {
    let (dir, www) = site();
    std::fs::create_dir(www.join("sub")).unwrap();
    let (s, addr) = serve(
        dir,
        &[
            "--access-logfile",
            "access.log",
            "--access-logformat",
            "%(s)s [%({etag}o)s] [%({content-range}o)s] [%({location}o)s] [%({content-type}o)s]",
        ],
    );
    let first = get(addr, "/hello.txt", "");
    let etag = first.header("etag").unwrap().to_string();
    let not_modified = get(addr, "/hello.txt", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(not_modified.status, 304);
    let partial = get(addr, "/hello.txt", "Range: bytes=0-4\r\n");
    assert_eq!(partial.status, 206);
    let unsatisfiable = get(addr, "/hello.txt", "Range: bytes=100-200\r\n");
    assert_eq!(unsatisfiable.status, 416);
    let moved = get(addr, "/sub", "");
    assert_eq!(moved.status, 301);
    let sent = [&first, &not_modified, &partial, &unsatisfiable, &moved];
    let log = s.path("access.log");
    let mut text = String::new();
    assert!(eventually(SOON, || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().count() >= sent.len()
    }));
    let shown = |r: &Response, name: &str| {
        r.header(name)
            .map_or("-".to_string(), |v| v.replace('"', "\\x22"))
    };
    let want: Vec<String> = sent
        .iter()
        .map(|r| {
            format!(
                "{} [{}] [{}] [{}] [{}]",
                r.status,
                shown(r, "etag"),
                shown(r, "content-range"),
                shown(r, "location"),
                shown(r, "content-type"),
            )
        })
        .collect();
    assert_eq!(text.lines().collect::<Vec<_>>(), want, "{text}");
    assert!(want[1].ends_with("[-] [-] [-]"), "{}", want[1]);
    assert!(want[2].contains("[bytes 0-4/13]"), "{}", want[2]);
    assert!(want[3].contains("[bytes */13]"), "{}", want[3]);
    assert!(want[4].contains("[/sub/]"), "{}", want[4]);
}

/// A request already there when its connection is accepted is answered in place, before the
/// connection is registered with the runtime (`conn::serve_fresh`); the same bytes as a kept-alive
/// connection's second request get (the runtime's path) must get the same answers and the same
/// access-log lines: pipelined requests with a `Connection: close` among them, a HEAD, a bad
/// head after a good one, a head larger than one read, one over the limits, a body, ranges and
/// validators, HTTP/1.0 keep-alive, and a client that half-closes right after sending.
#[test]
fn a_fresh_connection_is_answered_as_a_kept_alive_one() {
    let (dir, www) = site();
    write(&www.join("big.bin"), pattern(300_000));
    let (s, addr) = serve(
        dir,
        &[
            "--access-logfile",
            "access.log",
            "--access-logformat",
            "%(r)s %(s)s %(b)s",
        ],
    );
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").into_bytes()
    };
    let close = "Connection: close\r\n";
    let etag = self::get(addr, "/hello.txt", "")
        .header("etag")
        .unwrap()
        .to_string();
    let big_head: String = (0..60)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(250)))
        .collect();
    let too_many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("close", get("/hello.txt", close), false),
        (
            "pipelined, close in the middle",
            [
                get("/hello.txt", ""),
                get("/missing", ""),
                b"HEAD /hello.txt HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
                get("/big.bin", "Range: bytes=10-20\r\n"),
                get("/hello.txt", close),
                get("/hello.txt", ""),
            ]
            .concat(),
            false,
        ),
        (
            "bad after good",
            [get("/hello.txt", ""), b"NONSENSE\r\n\r\n".to_vec()].concat(),
            false,
        ),
        ("head over one read", get("/hello.txt", &(big_head + close)), false),
        ("too many fields", get("/hello.txt", &too_many), false),
        (
            "a body",
            b"GET /hello.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            false,
        ),
        (
            "chunked",
            b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            false,
        ),
        (
            "validator",
            get("/hello.txt", &format!("If-None-Match: {etag}\r\n{close}")),
            false,
        ),
        ("range", get("/big.bin", &format!("Range: bytes=-7\r\n{close}")), false),
        ("a whole file", get("/big.bin", close), false),
        (
            "HTTP/1.0 keep-alive, then not",
            b"GET /hello.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /hello.txt HTTP/1.0\r\n\r\n"
                .to_vec(),
            false,
        ),
        ("half-closed", [get("/hello.txt", ""), get("/big.bin", "")].concat(), true),
    ];
    let log = s.path("access.log");
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    // The line of the request for the ETag above is written after its answer went out.
    assert!(eventually(SOON, || lines().len() == 1));
    let warm = get("/hello.txt", "");
    // Sends `bytes` in one write, on a new connection or after a first exchange; returns
    // everything after that first answer until the server closes, without the Date lines,
    // and the access-log lines `bytes` added.
    let exchange = |bytes: &[u8], kept_alive: bool, half_close: bool| {
        let before = lines().len() + usize::from(kept_alive);
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(SOON)).unwrap();
        if kept_alive {
            c.write_all(&warm).unwrap();
            let mut first = vec![0u8; 4096];
            let n = c.read(&mut first).unwrap();
            assert!(first[..n].ends_with(b"hello, world\n"));
        }
        c.write_all(bytes).unwrap();
        if half_close {
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        let text: Vec<u8> = String::from_utf8_lossy(&all)
            .split("\r\n")
            .filter(|l| !l.starts_with("Date: "))
            .collect::<Vec<_>>()
            .join("\r\n")
            .into_bytes();
        // Every line of this connection was written before it closed.
        (text, lines().split_off(before))
    };
    for (name, bytes, half_close) in &cases {
        let fresh = exchange(bytes, false, *half_close);
        let kept = exchange(bytes, true, *half_close);
        assert!(!fresh.0.is_empty(), "{name}");
        assert_eq!(
            String::from_utf8_lossy(&fresh.0),
            String::from_utf8_lossy(&kept.0),
            "{name}"
        );
        assert_eq!(fresh.1, kept.1, "{name}");
    }
}
