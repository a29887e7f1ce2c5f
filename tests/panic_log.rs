//! One panic, one ERROR line: a worker's panic hook (`oxicorn::child::install_panic_hook`)
//! leaves a panic under the app hook's catch to the app hook, which logs it once with the
//! request; any other panic the hook logs itself, as it always has.
//!
//! In-process, in a test binary of its own (the hook and the logger are global to a process):
//! a "worker" thread runs a current-thread runtime, as a worker does, with the child's hook and
//! oxicorn's logger writing to a temp file. Served there: an axum app (its handler panics, its
//! response body panics, a handler catches a panic of its own, a handler spawns a task that
//! panics) and a line service on the real accept loop whose connection task panics. Panics of
//! the test's own thread (a failed assertion) go to the default hook, so failures read as usual.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::get;
use oxicorn::net::{Peer, Stream};
use oxicorn::scoreboard::Scoreboard;
use oxicorn::service::http::access_log::{AccessLog, LogFormat};
use oxicorn::service::http::app::{AppService, HttpSettings};
use oxicorn::service::{ConnContext, Serve};
use oxicorn::worker::accept::{AcceptSocket, Acceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bound for anything that should take a moment.
const SOON: Duration = Duration::from_secs(10);

/// The lines on which this file's panics are raised, set just before each: the log must name
/// `tests/panic_log.rs:LINE`.
static HANDLER_LINE: AtomicU32 = AtomicU32::new(0);
static BODY_LINE: AtomicU32 = AtomicU32::new(0);
static CAUGHT_LINE: AtomicU32 = AtomicU32::new(0);
static SPAWNED_LINE: AtomicU32 = AtomicU32::new(0);
static CONN_LINE: AtomicU32 = AtomicU32::new(0);

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/panic",
            get(|| async {
                if true {
                    HANDLER_LINE.store(line!() + 1, Ordering::Relaxed);
                    panic!("the handler panics on purpose");
                }
                "unreachable"
            }),
        )
        .route(
            "/body-panic",
            get(|| async { axum::body::Body::new(PanicsAfterOneChunk(0)) }),
        )
        .route(
            "/caught",
            get(|| async {
                // The app's own catch: the hook logs this one (the app hook never sees it).
                let r = std::panic::catch_unwind(|| {
                    CAUGHT_LINE.store(line!() + 1, Ordering::Relaxed);
                    panic!("caught by the app itself");
                });
                assert!(r.is_err());
                "recovered"
            }),
        )
        .route(
            "/spawn-panic",
            get(|| async {
                // A task of its own, polled outside the app hook's catch: the hook's to log.
                tokio::spawn(async {
                    SPAWNED_LINE.store(line!() + 1, Ordering::Relaxed);
                    panic!("a task the app spawned panics");
                });
                "spawned"
            }),
        )
}

/// A response body that sends one chunk, has nothing for a moment (so the head and the chunk
/// go out), then panics.
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
            _ => {
                BODY_LINE.store(line!() + 1, Ordering::Relaxed);
                panic!("the body panics on purpose");
            }
        }
    }
}

/// A line service: echoes one byte, or its connection task panics when that byte is `!`.
struct Touchy;

impl Serve for Touchy {
    async fn serve(&self, mut stream: Stream, _ctx: ConnContext) {
        let mut b = [0u8; 1];
        if stream.read_exact(&mut b).await.is_err() {
            return;
        }
        if b[0] == b'!' {
            CONN_LINE.store(line!() + 1, Ordering::Relaxed);
            panic!("a bug in one connection's handling");
        }
        let _ = stream.write_all(&b).await;
    }
}

/// The worker thread's addresses: the app's and the line service's.
struct Worker {
    app: SocketAddr,
    line: SocketAddr,
    log: PathBuf,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Installs the child's hook for the "worker" thread (the default hook for every other) and
/// oxicorn's logger on `dir/server.log`, then starts the worker thread.
fn start_worker(dir: &Path) -> Worker {
    let log = dir.join("server.log");
    oxicorn::log::init(tracing::level_filters::LevelFilter::INFO, Some(&log)).unwrap();
    let default_hook = std::panic::take_hook();
    oxicorn::child::install_panic_hook("worker");
    let child_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("worker") {
            child_hook(info);
        } else {
            default_hook(info);
        }
    }));
    let access = dir.join("access.log");
    let stop = CancellationToken::new();
    let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let line_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addrs_tx
                    .send((
                        app_listener.local_addr().unwrap(),
                        line_listener.local_addr().unwrap(),
                    ))
                    .unwrap();
                // The line service on the worker's own accept loop.
                let acceptor = Acceptor {
                    listeners: vec![AcceptSocket::Tcp(line_listener)],
                    limit: Arc::new(tokio::sync::Semaphore::new(16)),
                    conns: TaskTracker::new(),
                    stop: stop2.clone(),
                    service: Arc::new(Touchy),
                    slot: Scoreboard::create().unwrap().slot(0),
                    idle_timeout: None,
                    reclaim: Default::default(),
                    targets: Default::default(),
                    yield_permit: Default::default(),
                };
                tokio::spawn(acceptor.run());
                // The app, with an access log (the body's panic names the request then).
                let app = Arc::new(
                    AppService::new(router(), HttpSettings::default())
                        .with_access_log(AccessLog::open(&access, LogFormat::default()).unwrap()),
                );
                loop {
                    let (s, peer) = tokio::select! {
                        r = app_listener.accept() => r.unwrap(),
                        () = stop2.cancelled() => break,
                    };
                    let app = Arc::clone(&app);
                    let ctx = ConnContext::detached(Peer::Tcp(peer), stop2.clone());
                    tokio::spawn(async move { app.serve(Stream::Tcp(s), ctx).await });
                }
            });
        })
        .unwrap();
    let (app, line) = addrs_rx.recv_timeout(SOON).unwrap();
    Worker {
        app,
        line,
        log,
        stop,
        thread: Some(thread),
    }
}

impl Worker {
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The ERROR lines logged after `mark` lines, once one contains `pattern` (bounded).
    fn errors_after(&self, mark: usize, pattern: &str) -> Vec<String> {
        let deadline = Instant::now() + SOON;
        loop {
            let errors: Vec<String> = self
                .lines()
                .into_iter()
                .skip(mark)
                .filter(|l| l.contains(" ERROR "))
                .collect();
            if errors.iter().any(|l| l.contains(pattern)) {
                return errors;
            }
            assert!(
                Instant::now() < deadline,
                "no ERROR line with {pattern:?}; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts that exactly one ERROR line followed `mark`, with every one of `parts`.
    fn one_error_after(&self, mark: usize, parts: &[&str]) {
        self.errors_after(mark, parts[0]);
        // Anything logged for the same panic was written before the line just found, by the
        // same thread; a moment more for a straggler from elsewhere.
        std::thread::sleep(Duration::from_millis(100));
        let errors = self
            .lines()
            .into_iter()
            .skip(mark)
            .filter(|l| l.contains(" ERROR "))
            .collect::<Vec<_>>();
        assert_eq!(errors.len(), 1, "one ERROR line per panic: {errors:#?}");
        for part in parts {
            assert!(errors[0].contains(part), "{part:?} not in {}", errors[0]);
        }
    }

    /// The worker still serves the app.
    async fn serves(&self, http: &reqwest::Client) {
        let r = http
            .get(format!("http://{}/", self.app))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "hello");
    }
}

fn at(line: &AtomicU32) -> String {
    format!("tests/panic_log.rs:{}:", line.load(Ordering::Relaxed))
}

#[test]
fn every_panic_is_logged_once_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let worker = start_worker(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = |p: &str| format!("http://{}{p}", worker.app);

        // A handler's panic: a 500, and the app hook's line alone, naming the request, the
        // peer, the panic's text and its place.
        let mark = worker.lines().len();
        let r = http.get(url("/panic")).send().await.unwrap();
        assert_eq!(r.status(), 500);
        worker.one_error_after(
            mark,
            &[
                "handler panicked: 500",
                "request=GET /panic HTTP/1.1",
                "peer=127.0.0.1:",
                "the handler panics on purpose",
                &format!("at={}", at(&HANDLER_LINE)),
            ],
        );
        worker.serves(&http).await;

        // A response body's panic: its response is cut, one line names it.
        let mark = worker.lines().len();
        let r = http.get(url("/body-panic")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.is_err(), "the response is cut short");
        worker.one_error_after(
            mark,
            &[
                "response body panicked",
                "request=GET /body-panic HTTP/1.1",
                "peer=127.0.0.1:",
                "the body panics on purpose",
                &format!("at={}", at(&BODY_LINE)),
            ],
        );
        worker.serves(&http).await;

        // A panic the app catches itself never reaches the app hook: the hook logs it.
        let mark = worker.lines().len();
        let r = http.get(url("/caught")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "recovered");
        worker.one_error_after(
            mark,
            &[
                "worker code panicked",
                "caught by the app itself",
                &format!("panicked at {}", at(&CAUGHT_LINE)),
            ],
        );

        // A task the app spawns runs outside the catch: the hook logs its panic.
        let mark = worker.lines().len();
        let r = http.get(url("/spawn-panic")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "spawned");
        // The task runs after the answer: its line is known once it has panicked.
        worker.errors_after(mark, "a task the app spawned panics");
        worker.one_error_after(
            mark,
            &[
                "worker code panicked",
                "a task the app spawned panics",
                &format!("panicked at {}", at(&SPAWNED_LINE)),
            ],
        );
        worker.serves(&http).await;

        // A line service's connection task: the hook logs it, and the worker goes on.
        let mark = worker.lines().len();
        let mut bad = tokio::net::TcpStream::connect(worker.line).await.unwrap();
        bad.write_all(b"!").await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(SOON, bad.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "the connection is closed");
        worker.one_error_after(
            mark,
            &[
                "worker code panicked",
                "a bug in one connection's handling",
                &format!("panicked at {}", at(&CONN_LINE)),
            ],
        );
        let mut good = tokio::net::TcpStream::connect(worker.line).await.unwrap();
        good.write_all(b"a").await.unwrap();
        tokio::time::timeout(SOON, good.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"a");
        worker.serves(&http).await;
    });
}
