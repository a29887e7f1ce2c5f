//! The application hook, in-process: an axum `Router` served by
//! `service::http::app::AppService` on connections accepted from a 127.0.0.1:0 listener in the
//! test's own runtime, driven with reqwest (HTTP/1.1 and h2c), curl where installed, and raw
//! sockets for what clients will not send (slow heads, over-long lines, pipelining).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Extension, Path};
use axum::routing::{get, post};
use oxicorn::net::{Peer, Stream};
use oxicorn::service::ConnContext;
use oxicorn::service::http::access_log::{AccessLog, LogFormat};
use oxicorn::service::http::app::{AppService, Client, HttpSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bound for anything that should take a moment.
const SOON: Duration = Duration::from_secs(10);

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/client",
            get(
                |Extension(c): Extension<Client>, Extension(p): Extension<Peer>| async move {
                    format!(
                        "{} {} {}",
                        c.ip.map_or("-".into(), |i| i.to_string()),
                        c.scheme,
                        p
                    )
                },
            ),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/twice",
            get(|| async {
                let mut r = axum::response::Response::new(axum::body::Body::from("twice"));
                r.headers_mut().append("x-reply", "one".parse().unwrap());
                r.headers_mut().append("x-reply", "two".parse().unwrap());
                r
            }),
        )
        .route(
            "/hostile-header",
            get(|| async {
                // What an app may put in a header: quotes, a tab, bytes that are not UTF-8,
                // and far more than a log line should carry.
                let mut value = b"q\"\t\xfe".to_vec();
                value.extend(std::iter::repeat_n(b'z', 100_000));
                let value = axum::http::HeaderValue::from_bytes(&value).unwrap();
                ([("x-reply", value)], "hostile")
            }),
        )
        .route(
            "/sleep/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slept"
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("the handler panics on purpose");
                }
                "unreachable"
            }),
        )
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(msg)) = socket.recv().await {
                        if let Message::Text(_) | Message::Binary(_) = msg
                            && socket.send(msg).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        )
}

/// The app served on 127.0.0.1:0 by a task of the test's runtime.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    conns: TaskTracker,
}

impl Server {
    async fn start(settings: HttpSettings) -> Server {
        Self::start_with(AppService::new(router(), settings)).await
    }

    async fn start_with(app: AppService) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let conns = TaskTracker::new();
        let app = Arc::new(app);
        let (stop2, conns2) = (stop.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let (s, peer) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    () = stop2.cancelled() => break,
                };
                let app = Arc::clone(&app);
                let ctx = ConnContext::detached(Peer::Tcp(peer), stop2.clone());
                conns2.spawn(async move { app.serve(Stream::Tcp(s), ctx).await });
            }
        });
        Server { addr, stop, conns }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends raw bytes on a new connection and reads until the server closes it.
    async fn raw(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        read_to_close(&mut s).await
    }

    /// An HTTP/2 (h2c, prior knowledge) connection sending bodies of type `B`, with its
    /// connection task, which ends when the server closes the connection.
    async fn h2c<B>(
        &self,
    ) -> (
        hyper::client::conn::http2::SendRequest<B>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    )
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        (send, tokio::spawn(conn))
    }
}

async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// The example router with an access log in `format`, in a temp directory (removed when
/// the second value drops); the third is the log's path.
async fn logged_server(format: LogFormat) -> (Server, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let app = AppService::new(router(), HttpSettings::default())
        .with_access_log(AccessLog::open(&path, format).unwrap());
    (Server::start_with(app).await, dir, path)
}

/// The access log at `path` once it holds `n` lines, or as it is after [`SOON`] (the caller's
/// assertion then says what was missing).
async fn log_lines(path: &std::path::Path, n: usize) -> String {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n || std::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn http11_keep_alive_serves_requests_on_one_connection() {
    let server = Server::start(HttpSettings::default()).await;
    let http = client();
    for _ in 0..3 {
        let r = http.get(server.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    let r = http
        .post(server.url("/echo"))
        .body("round trip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "round trip");
}

#[tokio::test]
async fn http10_and_pipelined_requests_are_answered_in_order() {
    let server = Server::start(HttpSettings::default()).await;
    let got = server.raw(b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    assert!(got.ends_with("hello"), "{got}");
    let got = server
        .raw(
            b"GET /sleep/50 HTTP/1.1\r\nhost: x\r\n\r\n\
              GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
    let slept = got.find("slept").expect("first response");
    let hello = got.find("hello").expect("second response");
    assert!(slept < hello, "{got}");
}

#[tokio::test]
async fn h2c_prior_knowledge_on_the_same_listener() {
    let server = Server::start(HttpSettings::default()).await;
    let h2 = h2c_client();
    for _ in 0..2 {
        let r = h2.get(server.url("/")).send().await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    let r = h2
        .post(server.url("/echo"))
        .body("over h2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "over h2");
    // And curl, where installed.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        let url = server.url("/");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args([
                    "-s",
                    "--noproxy",
                    "*",
                    "--http2-prior-knowledge",
                    "-w",
                    " %{http_version}",
                    &url,
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 2");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let server = Server::start(HttpSettings {
        limit_request_body: 16,
        ..HttpSettings::default()
    })
    .await;
    // Declared too long: refused from the head alone, the connection closed.
    let got = server
        .raw(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 17\r\n\r\n")
        .await;
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    // Chunked, growing over it: the app's read fails, the client is told 413.
    let got = server
        .raw(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
        )
        .await;
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    // At the limit: served.
    let r = client()
        .post(server.url("/echo"))
        .body("0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A `Content-Length` over the limit is refused from the head, before the app is called, over
/// HTTP/1.1 and h2c: `GET /` answers without reading a body, so only the head's check can
/// turn it into 413 (the length is read from hyper's body, which parsed it).
#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_app() {
    let server = Server::start(HttpSettings {
        limit_request_body: 16,
        ..HttpSettings::default()
    })
    .await;
    let got = server
        .raw(b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 17\r\n\r\n01234567890123456")
        .await;
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    let got = server
        .raw(b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 16\r\nconnection: close\r\n\r\n0123456789012345")
        .await;
    assert!(got.starts_with("HTTP/1.1 200 "), "at the limit: {got}");

    let (mut send, _conn) = server.h2c::<http_body_util::Full<Bytes>>().await;
    for (body, status) in [(&b"01234567890123456"[..], 413), (b"0123456789012345", 200)] {
        let req = axum::http::Request::get(server.url("/"))
            .header("content-length", body.len())
            .body(http_body_util::Full::new(Bytes::from_static(body)))
            .unwrap();
        let r = tokio::time::timeout(SOON, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), status, "h2c, {} bytes declared", body.len());
    }
}

#[tokio::test]
async fn over_long_heads_get_414_and_431() {
    let server = Server::start(HttpSettings {
        limit_request_line: 100,
        limit_request_fields: 5,
        limit_request_field_size: 50,
        ..HttpSettings::default()
    })
    .await;
    let long_target = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(100));
    let got = server.raw(long_target.as_bytes()).await;
    assert_eq!(status_line(&got), "HTTP/1.1 414 URI Too Long", "{got}");
    let long_field = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-long: {}\r\n\r\n",
        "v".repeat(50)
    );
    let got = server.raw(long_field.as_bytes()).await;
    assert_eq!(
        status_line(&got),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{got}"
    );
    let many: String = (0..6).map(|i| format!("x-{i}: v\r\n")).collect();
    let got = server
        .raw(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())
        .await;
    assert_eq!(
        status_line(&got),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{got}"
    );
    // Over h2 as well.
    let h2 = h2c_client();
    let r = h2
        .get(server.url(&format!("/{}", "a".repeat(100))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 414);
}

/// RFC 9110 §15.6.6, as the static service and nginx answer: a well-formed later major
/// version sent as text is 505, a malformed one 400; h2c's preface is not a request line.
#[tokio::test]
async fn a_request_line_naming_http_2_0_gets_505() {
    let server = Server::start(HttpSettings::default()).await;
    for v in ["HTTP/2.0", "HTTP/3.0"] {
        let got = server
            .raw(format!("GET / {v}\r\nhost: x\r\n\r\n").as_bytes())
            .await;
        assert_eq!(
            status_line(&got),
            "HTTP/1.1 505 HTTP Version Not Supported",
            "{got}"
        );
    }
    let got = server.raw(b"GET / HTTP/2\r\nhost: x\r\n\r\n").await;
    assert_eq!(status_line(&got), "HTTP/1.1 400 Bad Request", "{got}");
    // After a served request on a kept-alive connection, and with the line cut in two.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    s.write_all(b"GET / HTT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"P/2.0\r\nhost: x\r\n\r\n").await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        got.contains("HTTP/1.1 505 HTTP Version Not Supported\r\n"),
        "{got}"
    );
    // Cut after the version, before the line's end: hyper refuses the token as it comes, so
    // the 505 cannot wait for the `\n`.
    for first in [&b"GET / HTTP/2.0\r"[..], b"GET / HTTP/3.1"] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.write_all(b"\nhost: x\r\n\r\n").await;
        let got = read_to_close(&mut s).await;
        assert_eq!(
            status_line(&got),
            "HTTP/1.1 505 HTTP Version Not Supported",
            "{got}"
        );
    }
    // h2c with prior knowledge still works.
    let h2 = h2c_client();
    let r = h2.get(server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

/// A later minor version of HTTP/1 (`HTTP/1.2`) is served as HTTP/1.1 (RFC 9112 §2.3: a
/// server SHOULD process it as the highest minor version it implements; the static service
/// does), however the line is cut, and on a kept-alive connection too; httparse alone
/// refuses it (400).
#[tokio::test]
async fn a_later_minor_version_is_served_as_http_1_1() {
    let server = Server::start(HttpSettings::default()).await;
    let got = server
        .raw(b"GET / HTTP/1.2\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.9\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let mut body = [0u8; 5];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"hello");
    for part in [&b"GET / HTTP/1."[..], b"2", b"\r", b"\nhost: x\r\n\r\n"] {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
}

#[tokio::test]
async fn a_slow_head_gets_408_and_a_silent_client_is_closed() {
    let timeout = Duration::from_millis(300);
    let server = Server::start(HttpSettings {
        header_timeout: timeout,
        ..HttpSettings::default()
    })
    .await;
    let started = std::time::Instant::now();
    let got = server.raw(b"GET / HTTP/1.1\r\nhost: x\r\n").await;
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{got}");
    assert!(started.elapsed() >= timeout);
    // A client that connects and never sends a byte (hyper-util would wait for the HTTP/2
    // preface forever): closed, without a 408, at the same deadline.
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
    assert!(started.elapsed() >= timeout);
    assert!(started.elapsed() < SOON);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_keep_alive() {
    let server = Server::start(HttpSettings {
        keep_alive: Duration::from_millis(200),
        ..HttpSettings::default()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(
        !got.contains("408"),
        "an idle connection is closed silently: {got}"
    );
}

/// The idle deadline counts from the end of the connection's last request, however many came
/// before it (`io`'s timer is left set for an earlier deadline, fires early and is set again):
/// a connection used every 150 ms for over a second with a 500 ms keep-alive stays open
/// throughout, and closes about 500 ms after its last answer, over HTTP/1.1 and h2c.
#[tokio::test]
async fn a_kept_alive_connection_closes_keep_alive_after_its_last_request() {
    let keep_alive = Duration::from_millis(500);
    let gap = Duration::from_millis(150);
    let server = Server::start(HttpSettings {
        keep_alive,
        ..HttpSettings::default()
    })
    .await;
    // Closed by the server no sooner than the keep-alive after the last answer (less a
    // margin for the time the answer took to reach the client), and not much later.
    let closed_in_time = |idle: Duration, proto: &str| {
        assert!(
            idle + Duration::from_millis(50) >= keep_alive,
            "{proto}: closed {idle:?} after the last answer"
        );
        assert!(idle < keep_alive * 6, "{proto}: still open after {idle:?}");
    };

    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut last = std::time::Instant::now();
    for i in 0..8 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n"),
            "request {i}: {head}"
        );
        let mut body = [0u8; 5];
        tokio::time::timeout(SOON, s.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&body, b"hello");
        last = std::time::Instant::now();
        if i < 7 {
            tokio::time::sleep(gap).await;
        }
    }
    assert_eq!(read_to_close(&mut s).await, "", "closed without a word");
    closed_in_time(last.elapsed(), "HTTP/1.1");

    let (mut send, conn) = server.h2c::<http_body_util::Empty<Bytes>>().await;
    for i in 0..8 {
        let req = axum::http::Request::get(server.url("/"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let r = tokio::time::timeout(SOON, send.send_request(req))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status(), 200);
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap();
        assert_eq!(body.to_bytes(), "hello");
        last = std::time::Instant::now();
        if i < 7 {
            tokio::time::sleep(gap).await;
        }
    }
    // The client's connection task ends when the server closes the connection.
    let _ = tokio::time::timeout(SOON, conn)
        .await
        .expect("the server closes the h2c connection");
    closed_in_time(last.elapsed(), "h2c");
}

/// A head that begins after a kept-alive wait is timed from its first byte, whichever
/// deadline comes first: begun 300 ms into a 3 s keep-alive, it gets 408 one header timeout
/// (400 ms) later; begun 300 ms into a 500 ms keep-alive with a 1 s header timeout, it still
/// has its whole second (the timer set for the keep-alive fires first and is set again),
/// then 408, not the keep-alive's silent close.
#[tokio::test]
async fn a_slow_head_after_a_kept_alive_wait_gets_its_own_header_timeout() {
    for (keep_alive, header_timeout) in [(3000, 400), (500, 1000)] {
        let (keep_alive, header_timeout) = (
            Duration::from_millis(keep_alive),
            Duration::from_millis(header_timeout),
        );
        let server = Server::start(HttpSettings {
            keep_alive,
            header_timeout,
            ..HttpSettings::default()
        })
        .await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        let began = std::time::Instant::now();
        let got = read_to_close(&mut s).await;
        let took = began.elapsed();
        assert!(
            got.starts_with("hello") && got.contains("HTTP/1.1 408 Request Timeout\r\n"),
            "keep-alive {keep_alive:?}, header timeout {header_timeout:?}: {got:?}"
        );
        assert!(
            took >= header_timeout && took < header_timeout + Duration::from_secs(2),
            "keep-alive {keep_alive:?}: 408 {took:?} after the head began"
        );
    }
}

/// Part of a head pipelined behind a request (in the same write, or while the request is in
/// flight, behind a request with no body or a chunked one) is a slow head, not a kept-alive
/// wait: 408 one header timeout after the request before it ended, well before the
/// keep-alive's silent close (`io`'s module docs, "A head pipelined behind a request").
#[tokio::test]
async fn a_partial_head_pipelined_behind_a_request_gets_408_at_the_header_timeout() {
    let (keep_alive, header_timeout) = (Duration::from_secs(5), Duration::from_millis(400));
    let server = Server::start(HttpSettings {
        keep_alive,
        header_timeout,
        ..HttpSettings::default()
    })
    .await;
    let partial: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n";
    let chunked: &[u8] = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\n";
    let cases: [(&str, &[u8], Option<Duration>, &str); 3] = [
        (
            "same write",
            b"GET /sleep/300 HTTP/1.1\r\nhost: x\r\n\r\n",
            None,
            "slept",
        ),
        (
            "sent while in flight",
            b"GET /sleep/300 HTTP/1.1\r\nhost: x\r\n\r\n",
            Some(Duration::from_millis(100)),
            "slept",
        ),
        ("behind a chunked body", chunked, None, "hello"),
    ];
    for (case, first, gap, body) in cases {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        match gap {
            None => s.write_all(&[first, partial].concat()).await.unwrap(),
            Some(gap) => {
                s.write_all(first).await.unwrap();
                tokio::time::sleep(gap).await;
                s.write_all(partial).await.unwrap();
            }
        }
        let head = read_head(&mut s).await;
        // The first answer is out when its head is read: its request has (about) ended.
        let ended = std::time::Instant::now();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{case}: {head}");
        let got = read_to_close(&mut s).await;
        let took = ended.elapsed();
        assert!(
            got.starts_with(body) && got.contains("HTTP/1.1 408 Request Timeout\r\n"),
            "{case}: {got:?}"
        );
        assert!(
            took + Duration::from_millis(100) >= header_timeout && took < keep_alive / 2,
            "{case}: 408 {took:?} after the first answer"
        );
    }
}

/// A request whose last bytes are its body's (a `Content-Length` body, a chunked one), or a
/// bodiless one followed by an empty line (which a head may begin with), then nothing: a
/// kept-alive wait, closed without a word at the keep-alive deadline, never a 408 (the header
/// timeout, shorter, would have come first).
#[tokio::test]
async fn a_complete_request_then_silence_is_closed_at_keep_alive_without_a_408() {
    let (keep_alive, header_timeout) = (Duration::from_millis(900), Duration::from_millis(300));
    let server = Server::start(HttpSettings {
        keep_alive,
        header_timeout,
        ..HttpSettings::default()
    })
    .await;
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "content-length body",
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
            "hello",
        ),
        // Refused before the app (no `Host`), the connection kept and the body drained.
        (
            "content-length body refused with 400",
            b"POST /echo HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "400 Bad Request\n",
        ),
        (
            "chunked body",
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
            "hello",
        ),
        (
            "chunked body with a trailer",
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
            "hello",
        ),
        (
            "an empty line after",
            b"GET / HTTP/1.1\r\nhost: x\r\n\r\n\r\n",
            "hello",
        ),
    ];
    for (case, request, body) in cases {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let head = read_head(&mut s).await;
        let answered = std::time::Instant::now();
        let status = if body.starts_with("400") {
            "400"
        } else {
            "200"
        };
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{case}: {head}"
        );
        let got = read_to_close(&mut s).await;
        let took = answered.elapsed();
        assert_eq!(got, body, "{case}: closed without a word");
        assert!(
            took + Duration::from_millis(100) >= keep_alive && took < keep_alive * 6,
            "{case}: closed {took:?} after the answer"
        );
    }
}

#[tokio::test]
async fn the_request_deadline_gives_503_and_drops_the_handler() {
    let server = Server::start(HttpSettings {
        request_timeout: Some(Duration::from_millis(200)),
        ..HttpSettings::default()
    })
    .await;
    let http = client();
    let r = http.get(server.url("/sleep/5000")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = http.get(server.url("/sleep/10")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_panicking_handler_costs_one_request() {
    let server = Server::start(HttpSettings::default()).await;
    let http = client();
    let r = http.get(server.url("/panic")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    // The same client (same kept-alive connection) and the server go on.
    for _ in 0..2 {
        let r = http.get(server.url("/")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "hello");
    }
}

#[tokio::test]
async fn forwarded_headers_are_believed_only_from_allowed_peers() {
    let xff = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
    ];
    let ask = |server: &Server| {
        let mut req = client().get(server.url("/client"));
        for (k, v) in xff {
            req = req.header(k, v);
        }
        req.send()
    };
    // Default: 127.0.0.1 is a trusted proxy.
    let trusting = Server::start(HttpSettings::default()).await;
    let text = ask(&trusting).await.unwrap().text().await.unwrap();
    assert!(text.starts_with("203.0.113.9 https 127.0.0.1:"), "{text}");
    // Only 10.0.0.1 is: the headers are ignored.
    let strict = Server::start(HttpSettings {
        forwarded_allow_ips: "10.0.0.1".parse().unwrap(),
        ..HttpSettings::default()
    })
    .await;
    let text = ask(&strict).await.unwrap().text().await.unwrap();
    assert!(text.starts_with("127.0.0.1 http 127.0.0.1:"), "{text}");
}

#[tokio::test]
async fn websocket_echo_through_axum_outlives_the_http_deadlines_and_a_stop() {
    let server = Server::start(HttpSettings {
        // The upgraded stream has no HTTP deadlines: it must outlive these.
        keep_alive: Duration::from_millis(100),
        header_timeout: Duration::from_millis(100),
        ..HttpSettings::default()
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455 §1.3's example key and accept value.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws_echo(&mut s, "hello").await;
    // A graceful stop leaves the WebSocket to the worker's deadline, and the connection's
    // task waits for it, so the worker's drain does too.
    server.stop.cancel();
    server.conns.close();
    ws_echo(&mut s, "still here").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), server.conns.wait())
            .await
            .is_err(),
        "the connection task lives as long as the WebSocket"
    );
    drop(s);
    tokio::time::timeout(SOON, server.conns.wait())
        .await
        .expect("the task ends once the app drops the socket");
}

/// Sends `text` in a WebSocket frame and expects it back.
async fn ws_echo(s: &mut TcpStream, text: &str) {
    s.write_all(&ws_text_frame(text)).await.unwrap();
    let mut got = vec![0u8; 2 + text.len()];
    tokio::time::timeout(SOON, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got[0], 0x81, "FIN + text");
    assert_eq!(got[1] as usize, text.len(), "unmasked, short length");
    assert_eq!(&got[2..], text.as_bytes());
}

/// A masked client text frame (RFC 6455 §5.2), payload under 126 bytes.
fn ws_text_frame(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(SOON, s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn a_graceful_stop_lets_the_request_in_flight_finish_and_closes_the_connection() {
    let server = Server::start(HttpSettings::default()).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /sleep/300 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // An idle kept-alive connection, served once.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.cancel();
    let got = read_to_close(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(got.ends_with("slept"), "{got}");
    // The idle connection sends one more request within the stop's grace: it is answered,
    // with `connection: close`, rather than reset under the client.
    let mut rest = [0u8; 5];
    idle.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"hello");
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let last = read_to_close(&mut idle).await;
    assert!(last.starts_with("HTTP/1.1 200 OK\r\n"), "{last}");
    assert!(last.contains("connection: close"), "{last}");
    server.conns.close();
    tokio::time::timeout(SOON, server.conns.wait())
        .await
        .expect("every connection task ends");
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request() {
    let (server, _dir, path) = logged_server(LogFormat::default()).await;
    let http = client();
    http.get(server.url("/"))
        .header("user-agent", "test/1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    http.get(server.url("/nope"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let text = log_lines(&path, 2).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("127.0.0.1 - - ["), "{text}");
    assert!(
        lines[0].contains("\"GET / HTTP/1.1\" 200 5 \"-\" \"test/1\" "),
        "{text}"
    );
    assert!(lines[1].contains("\"GET /nope HTTP/1.1\" 404 0 "), "{text}");
}

#[tokio::test]
async fn http2_gets_goaway_and_its_stream_in_flight_finishes() {
    let server = Server::start(HttpSettings::default()).await;
    let h2 = h2c_client();
    let slow = tokio::spawn(h2.get(server.url("/sleep/300")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.cancel();
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "slept");
    server.conns.close();
    tokio::time::timeout(SOON, server.conns.wait())
        .await
        .expect("the HTTP/2 connection ends after its last stream");
}

/// An idle HTTP/2 connection that opens a stream within the stop's grace has it answered,
/// and is shut (GOAWAY) as that stream begins, not at the end of the grace (1 s): the stop
/// hears of the request (`ConnState::request_began`, notified once the stop began).
#[tokio::test]
async fn an_http2_stream_begun_in_the_stops_grace_is_answered_and_shuts_the_connection() {
    let server = Server::start(HttpSettings::default()).await;
    let (mut send, conn) = server.h2c::<http_body_util::Empty<Bytes>>().await;
    let get = |path: &str| {
        axum::http::Request::get(server.url(path))
            .body(http_body_util::Empty::new())
            .unwrap()
    };
    let r = send.send_request(get("/")).await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = std::time::Instant::now();
    server.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = tokio::time::timeout(SOON, send.send_request(get("/sleep/100")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "slept");
    let _ = tokio::time::timeout(SOON, conn)
        .await
        .expect("the server closes the connection");
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "closed {took:?} after the stop: at the grace's end, not as the stream began"
    );
}

#[tokio::test]
async fn a_unix_socket_peer_is_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let app = Arc::new(AppService::new(
        router(),
        HttpSettings {
            forwarded_allow_ips: "10.0.0.1".parse().unwrap(),
            ..HttpSettings::default()
        },
    ));
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let ctx = ConnContext::detached(Peer::Unix, CancellationToken::new());
        app.serve(Stream::Unix(s), ctx).await;
    });
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(
        b"GET /client HTTP/1.1\r\nhost: x\r\nx-forwarded-for: 198.51.100.4\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(SOON, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.ends_with("198.51.100.4 http unix"), "{out}");
}

#[tokio::test]
async fn static_files_as_a_tower_service_under_a_mount_point() {
    use oxicorn::service::http::app::StaticFiles;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "0123456789").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/b.txt"), "bee").unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .nest_service("/static", StaticFiles::new(dir.path()));
    let server = Server::start_with(AppService::new(app, HttpSettings::default())).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(server.url("/static/a.txt")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    let etag = r.headers()["etag"].clone();
    assert_eq!(r.text().await.unwrap(), "0123456789");
    let r = http
        .get(server.url("/static/a.txt"))
        .header("range", "bytes=2-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.text().await.unwrap(), "234");
    let r = http
        .get(server.url("/static/a.txt"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = http.head(server.url("/static/a.txt")).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "10");
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    // A directory without its slash is redirected relative to the mount point.
    let r = http.get(server.url("/static/sub")).send().await.unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "sub/");
    let r = http.get(server.url("/static/sub/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let listing = r.text().await.unwrap();
    assert!(listing.contains("b.txt"), "a listing");
    // Its breadcrumbs and the 404 page's root link are below the mount point.
    assert!(
        listing.contains(
            "<h1>Index of <a href=\"/static/\">/static/</a><a href=\"/static/sub/\">sub</a>/</h1>"
        ),
        "{listing}"
    );
    let r = http.get(server.url("/static/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<a href=\"/static/\">Go to the root</a>")
    );
    // Traversal stays refused.
    let got = server
        .raw(b"GET /static/../../../../etc/passwd HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert!(!got.contains("root:"), "{got}");
    let got = server
        .raw(b"GET /static/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert!(!got.contains("root:"), "{got}");
    assert!(status_line(&got).starts_with("HTTP/1.1 4"), "{got}");
}

/// `StaticFiles::mount_path` names the mount point when it cannot be seen: here a proxy in
/// front is supposed to serve the app's `/static/` at `/files/`.
#[tokio::test]
async fn static_files_with_a_mount_path_link_below_it() {
    use oxicorn::service::http::app::StaticFiles;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let app = Router::new().nest_service(
        "/static",
        StaticFiles::new(dir.path()).mount_path("/files/"),
    );
    let server = Server::start_with(AppService::new(app, HttpSettings::default())).await;
    let listing = client()
        .get(server.url("/static/sub/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listing.contains("<a href=\"/files/\">/files/</a><a href=\"/files/sub/\">sub</a>/"),
        "{listing}"
    );
}

/// Serves one connection to the example router on 127.0.0.1, registered with a reclaim
/// table of its own (the connection cap's): the address, the table, and the serving task.
async fn serve_one_with_reclaim(
    settings: HttpSettings,
) -> (
    std::net::SocketAddr,
    oxicorn::service::reclaim::Reclaimer,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Arc::new(AppService::new(router(), settings));
    let reclaimer = oxicorn::service::reclaim::Reclaimer::default();
    let table = reclaimer.clone();
    let served = tokio::spawn(async move {
        let (s, peer) = listener.accept().await.unwrap();
        let ctx = ConnContext {
            reclaim: table.register(),
            ..ConnContext::detached(Peer::Tcp(peer), CancellationToken::new())
        };
        app.serve(Stream::Tcp(s), ctx).await;
    });
    (addr, reclaimer, served)
}

#[tokio::test]
async fn at_the_connection_cap_an_idle_kept_alive_connection_makes_room() {
    let (addr, reclaimer, _served) = serve_one_with_reclaim(HttpSettings::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /sleep/300 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!reclaimer.has_idle(), "a request in flight is never chosen");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let deadline = std::time::Instant::now() + SOON;
    while !reclaimer.has_idle() {
        assert!(std::time::Instant::now() < deadline, "never became idle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(reclaimer.evict_one());
    assert_eq!(
        read_to_close(&mut s).await,
        "slept",
        "the rest, then closed"
    );
}

/// A connection that has sent its last answer lingers (reads and drops what its client still
/// sends, for up to 2 s, so the answer is not destroyed by a reset): after a 408 or a 505 the
/// stream wrote itself, after a 413 that leaves a body unread. It is still idle for the
/// connection cap (the oldest that sent no request, or a served one), so it may be the one
/// chosen to make room, and the accept loop then waits for it to close before it admits the
/// newcomer. So once chosen it closes at once: a silent client that never closes must not
/// make a newcomer wait out the linger.
#[tokio::test]
async fn at_the_connection_cap_a_lingering_connection_closes_when_chosen() {
    let settings = HttpSettings {
        header_timeout: Duration::from_millis(300),
        limit_request_body: 10,
        ..HttpSettings::default()
    };
    let cases: [(&[u8], &str); 3] = [
        (b"GET / HTTP/1.1\r\nhost: x\r\n", "408"),
        (b"GET / HTTP/2.0\r\nhost: x\r\n\r\n", "505"),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc",
            "413",
        ),
    ];
    for (request, status) in cases {
        let (addr, reclaimer, served) = serve_one_with_reclaim(settings.clone()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        // The answer, then the server's FIN: it lingers now, the client silent and open.
        let text = read_to_close(&mut s).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(
            reclaimer.has_idle(),
            "{status}: a lingering one may be chosen"
        );
        assert!(reclaimer.evict_one());
        tokio::time::timeout(Duration::from_millis(1000), served)
            .await
            .unwrap_or_else(|_| panic!("{status}: closed when chosen, not after its linger (2 s)"))
            .unwrap();
    }
}

/// A reqwest client speaking HTTP/2 over cleartext with prior knowledge (h2c), no proxy.
fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// A response body that sends one chunk, has nothing for a moment (so the head and the chunk
/// go out, as a server-sent events stream's would), then panics: a stream whose producer fails
/// after the head was sent.
struct PanicsAfterOneChunk(u8);

impl hyper::body::Body for PanicsAfterOneChunk {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0 += 1;
        match self.0 {
            1 => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                b"data: 1\n\n",
            ))))),
            2 => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            _ => panic!("the stream's producer panics on purpose"),
        }
    }
}

/// A panic after the head was sent cannot become a 500: that response is cut short (HTTP/1:
/// no last chunk, the connection closed; HTTP/2: the stream reset), and only it.
#[tokio::test]
async fn a_body_that_panics_mid_stream_cuts_only_its_response() {
    let app = router().route(
        "/events",
        get(|| async { axum::body::Body::new(PanicsAfterOneChunk(0)) }),
    );
    let server = Server::start_with(AppService::new(app, HttpSettings::default())).await;
    let text = server
        .raw(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(
        text.ends_with("9\r\ndata: 1\n\n\r\n"),
        "no last chunk: {text:?}"
    );
    assert!(
        !text.contains("hello"),
        "the pipelined request is not answered"
    );
    // HTTP/2: the stream fails, the connection serves the next one.
    let h2 = h2c_client();
    let r = h2.get(server.url("/events")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "the stream is reset, not ended");
    let r = h2.get(server.url("/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    // And a new HTTP/1 connection is served.
    let r = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
}

/// A client that sends its request and shuts down its writing side (`printf ... | nc -q1`,
/// `shutdown(SHUT_WR)`) still gets its answer, as the static service, gunicorn and nginx give
/// it. Every try must be answered: the bug was a race between the answer and hyper's EOF.
#[tokio::test]
async fn a_request_followed_by_a_half_close_is_answered() {
    let server = Server::start(HttpSettings::default()).await;
    for i in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /sleep/5 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let text = read_to_close(&mut s).await;
        assert!(text.ends_with("slept"), "try {i}: {text:?}");
    }
}

/// A connection the server closes while the client is still sending must not be reset
/// under it (RFC 9112 §9.6: close in stages): a client that keeps writing a body over the
/// limit after its 413, or more bytes after a head answered 400, still writes without error
/// and reads its answer. Before the lingering close, its late writes met a reset
/// (`EPIPE`/`ECONNRESET`): curl uploading past the limit said "Connection reset by peer"
/// instead of showing the 413.
#[tokio::test]
async fn a_client_still_sending_after_its_answer_is_not_reset() {
    let settings = HttpSettings {
        limit_request_body: 1024,
        ..HttpSettings::default()
    };
    let server = Server::start(settings).await;
    let heads: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length: 1048576\r\n\r\n",
    ];
    for (head, status) in heads.into_iter().zip(["400", "413"]) {
        keeps_sending_after_its_answer(&server, head, Duration::from_millis(300), status).await;
    }
}

/// Sends `head`, waits `wait` (the server answers and closes meanwhile), then goes on
/// sending 16 x 4 KiB as a client that writes its whole request before reading would: every
/// write succeeds, and the answer read after is `status`.
async fn keeps_sending_after_its_answer(
    server: &Server,
    head: &[u8],
    wait: Duration,
    status: &str,
) {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(head).await.unwrap();
    tokio::time::sleep(wait).await;
    for i in 0..16 {
        s.write_all(&[b'x'; 4096])
            .await
            .unwrap_or_else(|e| panic!("{status}: write {i} after the answer failed: {e}"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let text = read_to_close(&mut s).await;
    assert!(
        text.starts_with(&format!("HTTP/1.1 {status} ")),
        "{status}: got {text:?}"
    );
}

/// The same for the answers the connection's clock writes itself: a 408 to a head that came
/// too slowly, a 505 to a request line naming HTTP/2.0 as text. A client that goes on
/// sending after them (it writes its whole request before reading) writes without error and
/// reads its answer.
#[tokio::test]
async fn a_client_still_sending_after_a_408_or_505_is_not_reset() {
    let timeout = Duration::from_millis(300);
    let server = Server::start(HttpSettings {
        header_timeout: timeout,
        ..HttpSettings::default()
    })
    .await;
    let heads: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nhost: x\r\n",
        b"GET / HTTP/2.0\r\nhost: x\r\n\r\n",
    ];
    // The server answers at the head deadline (408) or at once (505).
    let wait = timeout + Duration::from_millis(200);
    for (head, status) in heads.into_iter().zip(["408", "505"]) {
        keeps_sending_after_its_answer(&server, head, wait, status).await;
    }
}

/// HTTP/2 has no request line: its `:path` is what HTTP/1's target is, so `%(r)s` reads
/// `GET /a?b=1 HTTP/2.0` and `%(U)s` is `/a` (as nginx logs `$request`), not the URI hyper
/// rebuilds from `:scheme` and `:authority`.
#[tokio::test]
async fn the_access_log_shows_an_http2_request_by_its_path() {
    let (server, _dir, path) = logged_server(LogFormat::parse("%(r)s|%(U)s|%(q)s").unwrap()).await;
    let r = h2c_client().get(server.url("/?b=1")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    r.text().await.unwrap();
    let text = log_lines(&path, 1).await;
    assert_eq!(text, "GET /?b=1 HTTP/2.0|/|b=1\n");
}

/// Issue 9: "Access log: ... for every request". A request whose client gives up before the
/// answer (here an HTTP/2 stream reset while the handler sleeps) gets a line too, with nginx's
/// 499 and no body bytes; the connection's other requests go on.
#[tokio::test]
async fn a_request_the_client_gives_up_on_is_logged_499() {
    let (server, _dir, path) = logged_server(LogFormat::parse("%(r)s %(s)s %(b)s").unwrap()).await;
    let h2 = h2c_client();
    let gave_up = h2
        .get(server.url("/sleep/2000"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    let text = log_lines(&path, 1).await;
    assert_eq!(text, "GET /sleep/2000 HTTP/2.0 499 0\n");
    let r = h2.get(server.url("/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let text = log_lines(&path, 2).await;
    assert!(text.ends_with("GET / HTTP/2.0 200 5\n"), "{text}");
}

/// Issue 9: "Access log: ... for every request". Heads hyper cannot parse (a malformed field,
/// a bad Content-Length, TLS spoken to a cleartext port) are answered 400 by hyper itself;
/// they get a line with `-` for the request, as the static service and the app's own 505
/// write one.
#[tokio::test]
async fn a_head_hyper_refuses_gets_an_access_log_line() {
    let (server, _dir, path) = logged_server(LogFormat::parse("%(r)s %(s)s").unwrap()).await;
    let text = server.raw(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    let text = server.raw(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 505 "), "{text}");
    let log = log_lines(&path, 2).await;
    assert_eq!(log, "- 400\n- 505\n");
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without `Host`, and to any
/// request with more than one or an invalid one (a proxy and the app could each read another
/// site from it). hyper lets all three through; the static service refuses the first two.
/// A client that stalls inside the HTTP/2 preface, after its first line (`PRI * HTTP/2.0`),
/// gets one answer, the 408, and the access log one line: told EOF after the 408, hyper-util
/// gives up on HTTP/2 and hands the bytes it holds to HTTP/1, which answered them with a
/// 400 behind the 408 (and logged a second line).
#[tokio::test]
async fn a_stall_inside_the_http2_preface_gets_one_408() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let settings = HttpSettings {
        header_timeout: Duration::from_millis(300),
        ..HttpSettings::default()
    };
    let app = AppService::new(router(), settings)
        .with_access_log(AccessLog::open(&path, LogFormat::parse("%(r)s %(s)s").unwrap()).unwrap());
    let server = Server::start_with(app).await;
    for stalled in [&b"PRI * HTTP/2.0\r\n"[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n"] {
        let text = server.raw(stalled).await;
        assert_eq!(
            text, "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "after {stalled:?}"
        );
    }
    // A request after them, so that a late second line would be seen.
    let r = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    log_lines(&path, 3).await;
    // Time for a late line to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = std::fs::read_to_string(&path).unwrap();
    assert_eq!(log, "- 408\n- 408\nGET / HTTP/1.1 200\n");
}

#[tokio::test]
async fn a_missing_repeated_or_malformed_host_gets_400() {
    let server = Server::start(HttpSettings::default()).await;
    for head in [
        &b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a@b\r\nconnection: close\r\n\r\n",
    ] {
        let got = server.raw(head).await;
        assert_eq!(
            status_line(&got),
            "HTTP/1.1 400 Bad Request",
            "{}: {got}",
            String::from_utf8_lossy(head)
        );
    }
    // HTTP/1.0 may leave it out.
    let got = server.raw(b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
}

/// `/static//nope` (a doubled slash after the mount point, which axum strips with it) gets the
/// 404 page whose root link is the mount point's, as `/static/nope` does, not the site's root.
#[tokio::test]
async fn a_doubled_slash_after_the_mount_point_keeps_the_mount_points_links() {
    use oxicorn::service::http::app::StaticFiles;
    let dir = tempfile::tempdir().unwrap();
    let app = Router::new().nest_service("/static", StaticFiles::new(dir.path()));
    let server = Server::start_with(AppService::new(app, HttpSettings::default())).await;
    for path in ["/static/nope", "/static//nope"] {
        let got = server
            .raw(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
            .await;
        assert!(got.starts_with("HTTP/1.1 404 "), "{path}: {got}");
        assert!(got.contains("href=\"/static/\""), "{path}: {got}");
        assert!(!got.contains("href=\"/\""), "{path}: {got}");
    }
}

/// gunicorn's header atoms: `%({name}i)s` a request header, `%({name}o)s` one the app set,
/// either case, `-` when absent. The values are the client's and the app's own, so they are
/// escaped as the other atoms are and cut at `HEADER_ATOM_MAX` (1024) bytes, marked `\...`.
#[tokio::test]
async fn the_access_log_shows_request_and_response_headers_named_in_the_format() {
    let format = "%(s)s %({User-Agent}i)s %({content-type}o)s %({x-missing}i)s %({x-reply}o)s";
    let (server, _dir, path) = logged_server(LogFormat::parse(format).unwrap()).await;
    let http = client();
    http.get(server.url("/"))
        .header("user-agent", "test/1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // A hostile user agent: quotes, a tab, a byte that is not UTF-8, and long.
    let mut head =
        b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\nuser-agent: a\"b\tc\xffd".to_vec();
    head.extend(std::iter::repeat_n(b'x', 3000));
    head.extend_from_slice(b"\r\n\r\n");
    let text = server.raw(&head).await;
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    let text = server
        .raw(b"GET /hostile-header HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    // HTTP/2 carries the same headers (lowercase on the wire).
    let r = h2c_client()
        .get(server.url("/"))
        .header("User-Agent", "h2/1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    r.text().await.unwrap();
    let log = log_lines(&path, 4).await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert_eq!(lines[3], "200 h2/1 text/plain; charset=utf-8 - -");
    assert_eq!(lines[0], "200 test/1 text/plain; charset=utf-8 - -");
    let agent = format!("a\\x22b\\x09c\\xffd{}\\...", "x".repeat(1024 - 16));
    assert_eq!(lines[1], format!("404 {agent} - - -"));
    let reply = format!("q\\x22\\x09\\xfe{}\\...", "z".repeat(1024 - 13));
    assert_eq!(
        lines[2],
        format!("200 - text/plain; charset=utf-8 - {reply}")
    );

    // `%(a)s` shows a user agent that is not ASCII as the header atom does (it was `-`).
    let (server, _dir, path) =
        logged_server(LogFormat::parse("%(a)s|%({user-agent}i)s").unwrap()).await;
    let text = server
        .raw(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\nuser-agent: caf\xc3\xa9 \xff\r\n\r\n")
        .await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(log_lines(&path, 1).await, "café \\xff|café \\xff\n");
}

/// `%({host}i)s` over HTTP/2: the host travels in `:authority` and clients send no `Host`
/// line, so every HTTP/2 line showed `-` where HTTP/1.1's showed the host. It shows the
/// authority now; cookies sent one per line (as HTTP/2 clients do) join with `; `.
#[tokio::test]
async fn the_host_atom_shows_an_http2_requests_authority() {
    let (server, _dir, path) =
        logged_server(LogFormat::parse("%(H)s %({host}i)s %({cookie}i)s").unwrap()).await;
    let r = h2c_client()
        .get(server.url("/"))
        .header("cookie", "a=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    r.text().await.unwrap();
    let text = server
        .raw(b"GET / HTTP/1.1\r\nhost: x.test\r\ncookie: a=1\r\ncookie: b=2\r\nconnection: close\r\n\r\n")
        .await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let log = log_lines(&path, 2).await;
    let host = server.url("/");
    let host = host.trim_start_matches("http://").trim_end_matches('/');
    assert_eq!(
        log,
        format!("HTTP/2.0 {host} a=1\nHTTP/1.1 x.test a=1; b=2\n")
    );
}

/// A response header the app sets twice shows both values, in order; pipelined requests each
/// show their own request headers (nothing carried over from the request before).
#[tokio::test]
async fn repeated_response_headers_and_pipelined_requests_keep_their_own_values() {
    let (server, _dir, path) =
        logged_server(LogFormat::parse("%(U)s [%({x-a}i)s] [%({x-reply}o)s]").unwrap()).await;
    let text = server
        .raw(
            b"GET /twice HTTP/1.1\r\nhost: x\r\nx-a: 1\r\nX-A: 2\r\n\r\n\
              GET / HTTP/1.1\r\nhost: x\r\n\r\n\
              GET /twice HTTP/1.1\r\nhost: x\r\nx-a: 3\r\nconnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 3, "{text}");
    assert_eq!(
        log_lines(&path, 3).await,
        "/twice [1, 2] [one, two]\n/ [-] [-]\n/twice [3] [one, two]\n"
    );
}

/// No content goes out in an answer to HEAD, nor in a 204 or a 304, over HTTP/2 as over
/// HTTP/1 (RFC 9110 §9.3.2, §15.3.5, §15.4.5), whatever body the app gave: hyper's HTTP/2
/// writer sent it as DATA frames (a `StaticFiles` under `nest_service`, which axum does not
/// strip, answered `HEAD` with the whole file). The head stays as the app made it.
#[tokio::test]
async fn no_content_goes_out_for_head_204_or_304_over_http2() {
    use oxicorn::service::http::app::StaticFiles;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "0123456789").unwrap();
    let app = router()
        .route(
            "/no-content",
            get(|| async { (axum::http::StatusCode::NO_CONTENT, "content anyway") }),
        )
        .route(
            "/not-modified",
            get(|| async { (axum::http::StatusCode::NOT_MODIFIED, "content anyway") }),
        )
        // A service axum does not strip for HEAD, as it does not a nested one.
        .route_service(
            "/raw",
            tower::service_fn(|_req: axum::extract::Request| async {
                let mut r = axum::response::Response::new(axum::body::Body::from("raw body"));
                r.headers_mut()
                    .insert("content-length", axum::http::HeaderValue::from_static("8"));
                Ok::<_, std::convert::Infallible>(r)
            }),
        )
        .nest_service("/static", StaticFiles::new(dir.path()));
    let server = Server::start_with(AppService::new(app, HttpSettings::default())).await;
    for http in [client(), h2c_client()] {
        for (method, path, status, length) in [
            ("HEAD", "/static/a.txt", 200, Some("10")),
            ("HEAD", "/raw", 200, Some("8")),
            ("HEAD", "/", 200, Some("5")),
            ("GET", "/no-content", 204, None),
            ("GET", "/not-modified", 304, None),
        ] {
            let r = http
                .request(method.parse().unwrap(), server.url(path))
                .send()
                .await
                .unwrap();
            let what = format!("{method} {path} {:?}", r.version());
            assert_eq!(r.status(), status, "{what}");
            if let Some(length) = length {
                assert_eq!(r.headers()["content-length"], length, "{what}");
            }
            assert_eq!(r.bytes().await.unwrap().len(), 0, "{what}");
        }
        // GET still gets the content.
        let r = http.get(server.url("/static/a.txt")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "0123456789");
    }
    // On the wire: the h2c answer to HEAD ends its stream with its HEADERS frame, no DATA.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut hpack = Vec::new();
    for (name, value) in [
        (":method", "HEAD"),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", "/static/a.txt"),
    ] {
        // A literal field, not indexed, with a new name (RFC 7541 §6.2.2), no Huffman.
        hpack.push(0);
        hpack.push(u8::try_from(name.len()).unwrap());
        hpack.extend_from_slice(name.as_bytes());
        hpack.push(u8::try_from(value.len()).unwrap());
        hpack.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&h2_frame(4, 0, 0, &[]));
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    out.extend_from_slice(&h2_frame(1, 0x5, 1, &hpack));
    s.write_all(&out).await.unwrap();
    let frames = tokio::time::timeout(SOON, async {
        let mut frames = Vec::new();
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.unwrap();
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if stream == 1 {
                frames.push((head[3], head[4]));
                // END_STREAM on HEADERS or DATA: the stream's last frame.
                if matches!(head[3], 0 | 1) && head[4] & 0x1 != 0 {
                    return frames;
                }
            }
        }
    })
    .await
    .expect("the stream ends");
    assert_eq!(
        frames,
        [(1, 0x5)],
        "one HEADERS frame ending the stream, no DATA"
    );
}

/// An HTTP/2 frame: type, flags, stream and payload (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A transfer coding hyper does not undo (it undoes `chunked` alone) gets 501 and a closed
/// connection (RFC 9112 §6.1), not a body the app reads still coded: `gzip, chunked` reached
/// the echo route as the gzip bytes, `chunked, chunked` as the inner chunks.
#[tokio::test]
async fn a_transfer_coding_other_than_chunked_gets_501() {
    let server = Server::start(HttpSettings::default()).await;
    for te in [
        &b"transfer-encoding: gzip, chunked\r\n"[..],
        b"transfer-encoding: chunked, chunked\r\n",
        b"transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n",
    ] {
        let mut request = b"POST /echo HTTP/1.1\r\nhost: x\r\n".to_vec();
        request.extend_from_slice(te);
        // The body, then a request behind it that must not be answered.
        request.extend_from_slice(b"\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n");
        let got = server.raw(&request).await;
        let te = String::from_utf8_lossy(te);
        assert_eq!(
            status_line(&got),
            "HTTP/1.1 501 Not Implemented",
            "{te}: {got}"
        );
        assert!(got.contains("\r\nconnection: close\r\n"), "{te}: {got}");
        assert!(!got.contains("hello"), "{te}: {got}");
    }
    // `chunked` alone, in any case, is read.
    let got = server
        .raw(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\
              connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
}

/// A `Host` that names another authority than the target does gets 400: an absolute-form
/// target on HTTP/1 (which RFC 9112 §3.2.2 has win, while the app reads `Host`), `:authority`
/// on HTTP/2 (RFC 9113 §8.3.1). A proxy routing by one and the app by the other would
/// disagree on the request's site.
#[tokio::test]
async fn a_host_naming_another_authority_than_the_target_gets_400() {
    let server = Server::start(HttpSettings::default()).await;
    let got = server
        .raw(b"GET http://a.example/ HTTP/1.1\r\nhost: b.example\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(status_line(&got), "HTTP/1.1 400 Bad Request", "{got}");
    let got = server
        .raw(b"GET http://a.example/ HTTP/1.1\r\nhost: A.example\r\nconnection: close\r\n\r\n")
        .await;
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
    // HTTP/2: `:authority` and `host` both sent, and not the same.
    for (host, status) in [("b.example", "400"), ("a.example", "200")] {
        let mut hpack = Vec::new();
        for (name, value) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "a.example"),
            (":path", "/"),
            ("host", host),
        ] {
            // A literal field, not indexed, with a new name (RFC 7541 §6.2.2), no Huffman.
            hpack.push(0);
            hpack.push(u8::try_from(name.len()).unwrap());
            hpack.extend_from_slice(name.as_bytes());
            hpack.push(u8::try_from(value.len()).unwrap());
            hpack.extend_from_slice(value.as_bytes());
        }
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend_from_slice(&h2_frame(4, 0, 0, &[]));
        out.extend_from_slice(&h2_frame(1, 0x5, 1, &hpack));
        s.write_all(&out).await.unwrap();
        // The response's HEADERS: `:status` is its first field, sent indexed (RFC 7541
        // Appendix A: 8 is 200, 12 is 400).
        let first = tokio::time::timeout(SOON, async {
            loop {
                let mut head = [0u8; 9];
                s.read_exact(&mut head).await.unwrap();
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                s.read_exact(&mut payload).await.unwrap();
                if head[3] == 1 {
                    return payload[0];
                }
            }
        })
        .await
        .expect("a response");
        let expected = if status == "200" { 0x88 } else { 0x8c };
        assert_eq!(first, expected, "host {host}: status {status} expected");
    }
}
