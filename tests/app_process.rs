//! The application hook as an operator runs it: the real `examples/axum_app.rs` binary, its
//! arbiter and 2+ workers, driven from outside with reqwest (HTTP/1.1 and h2c), raw sockets,
//! curl where installed, and real signals.
//!
//! The example is built by this test (`cargo build --example axum_app`, a no-op when
//! `cargo test` has built it already): cargo gives tests the path of the crate's binaries
//! (`CARGO_BIN_EXE_*`) but not of its examples, and the example is the program the README
//! walks through, so it is the one to test rather than a copy declared as a `[[bin]]` (which
//! could not use the dev-dependency axum).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Oxicorn, SOON};

/// The example binary, built once per test run.
fn app_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/app_process-HASH → target/<profile>
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", "axum_app", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build --example axum_app");
        assert!(status.success(), "cargo build --example axum_app failed");
        let bin: PathBuf = profile_dir.join("examples").join("axum_app");
        bin.to_string_lossy().into_owned()
    })
}

/// Starts the example with `args` (plus `--bind 127.0.0.1:0`) and waits for `workers`.
fn start(args: &[&str], workers: usize, env: &[(&str, &str)]) -> (Oxicorn, SocketAddr) {
    let mut all = vec!["--bind", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let server = Oxicorn::start_program(
        std::path::Path::new(app_bin()),
        tempfile::tempdir().unwrap(),
        &all,
        env,
    );
    server.wait_ready(1, workers);
    let addr = server.tcp_addr();
    (server, addr)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn h2() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// Sends raw bytes and reads until the server closes (or `SOON`).
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The pid of the worker that answers `GET /worker` on a new connection to `addr`.
async fn worker_pid(addr: SocketAddr) -> i32 {
    let text = client()
        .get(format!("http://{addr}/worker"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    pid_of(&text)
}

fn pid_of(json: &str) -> i32 {
    json.trim()
        .trim_start_matches("{\"pid\":")
        .trim_end_matches('}')
        .parse()
        .unwrap_or_else(|_| panic!("not a pid: {json}"))
}

#[tokio::test]
async fn every_route_over_http11_and_h2c() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "static hello\n").unwrap();
    let static_dir = dir.path().to_str().unwrap().to_string();
    let (server, addr) = start(
        &["--workers", "2", "--greeting", "howdy"],
        2,
        &[("APP_STATIC_DIR", &static_dir)],
    );
    let booted = server.booted_pids();
    for (http, version) in [
        (client(), reqwest::Version::HTTP_11),
        (h2(), reqwest::Version::HTTP_2),
    ] {
        let url = |p: &str| format!("http://{addr}{p}");
        let r = http.get(url("/")).send().await.unwrap();
        assert_eq!(r.version(), version);
        let text = r.text().await.unwrap();
        assert!(text.starts_with("howdy from worker "), "{text}");
        let pid = pid_of(
            &http
                .get(url("/worker"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        assert!(booted.contains(&pid), "{pid} not in {booted:?}");
        let echo = http.post(url("/echo")).body("ping").send().await.unwrap();
        assert_eq!(echo.text().await.unwrap(), "ping");
        let slept = http.get(url("/sleep/50")).send().await.unwrap();
        assert!(slept.text().await.unwrap().starts_with("slept 50 ms"));
        let file = http.get(url("/static/hello.txt")).send().await.unwrap();
        assert_eq!(file.status(), 200);
        assert_eq!(file.text().await.unwrap(), "static hello\n");
        let ranged = http
            .get(url("/static/hello.txt"))
            .header("range", "bytes=0-5")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), 206);
        assert_eq!(ranged.text().await.unwrap(), "static");
        let mut events = http.get(url("/events")).send().await.unwrap();
        let first = events.chunk().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: 1 from worker "), "{first:?}");
    }
}

/// Where the example's `/panic` handler panics, as a panic's location names it:
/// `examples/axum_app.rs:LINE:COLUMN` (found in the source, so an edit of the example does not
/// break the test).
fn panic_place_in_example() -> String {
    let source = include_str!("../examples/axum_app.rs");
    let marker = "panic!(\"GET /panic panics on purpose\")";
    let (line, text) = source
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(marker))
        .expect("the example's /panic handler");
    let column = text.find(marker).unwrap() + 1;
    format!("examples/axum_app.rs:{}:{column}", line + 1)
}

/// A handler's panic costs its request a 500, and the log has one ERROR line for it, naming
/// the request, the peer, the panic's text and its place in the code (the child's panic hook
/// leaves it to the app hook rather than log it a second time).
#[tokio::test]
async fn a_panic_costs_one_request_and_the_same_worker_serves_the_next() {
    let (server, addr) = start(&["--workers", "2"], 2, &[]);
    // One kept-alive connection: the same worker throughout.
    let http = client();
    let url = |p: &str| format!("http://{addr}{p}");
    let before = pid_of(
        &http
            .get(url("/worker"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let mark = server.mark();
    let r = http.get(url("/panic")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    // Written after anything the hook would have logged for the same panic, by the same
    // thread: once it is read, such a line would have been too.
    server.wait_for_lines_after(mark, "handler panicked: 500", 1, SOON);
    let errors: Vec<String> = server.lines()[mark..]
        .iter()
        .filter(|l| l.contains(" ERROR "))
        .cloned()
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR line per panic: {errors:#?}");
    let line = &errors[0];
    for part in [
        &format!("[{before}] ERROR "),
        "handler panicked: 500",
        "request=GET /panic HTTP/1.1",
        "peer=127.0.0.1:",
        "GET /panic panics on purpose",
        &format!("at={}", panic_place_in_example()),
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
    let after = pid_of(
        &http
            .get(url("/worker"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(before, after);
}

#[tokio::test]
async fn limits_and_deadlines_from_the_command_line() {
    let (_server, addr) = start(
        &[
            "--workers",
            "2",
            "--limit-request-body",
            "8",
            "--limit-request-field-size",
            "100",
            "--header-timeout",
            "0.5",
            "--request-timeout",
            "0.3",
        ],
        2,
        &[],
    );
    let got = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 413 "), "{got}");
    let long = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-a: {}\r\n\r\n",
        "a".repeat(200)
    );
    let got = raw(addr, long.as_bytes());
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    let started = Instant::now();
    let got = raw(addr, b"GET / HTTP/1.1\r\n");
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    let r = client()
        .get(format!("http://{addr}/sleep/5000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

/// At the connection cap, connections that were answered 408 and linger (their clients
/// silent and still open) make room for a newcomer at once: the accept loop chooses one (the
/// oldest that sent no request) and waits for it to close, which must not be the end of its
/// 2 s linger.
#[test]
fn at_the_cap_a_newcomer_does_not_wait_out_the_linger_after_a_408() {
    let (_server, addr) = start(
        &[
            "--workers",
            "1",
            "--worker-connections",
            "2",
            "--header-timeout",
            "0.3",
        ],
        1,
        &[],
    );
    // Two slow heads fill the worker; each gets its 408 and the server's FIN, and lingers.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
        held.push(s);
    }
    for s in &mut held {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    }
    let started = Instant::now();
    let got = raw(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the newcomer waited {:?}",
        started.elapsed()
    );
    drop(held);
}

#[tokio::test]
async fn x_forwarded_for_is_trusted_only_from_allowed_addresses() {
    for (allow, expect) in [("127.0.0.1", "203.0.113.5"), ("10.1.1.1", "127.0.0.1")] {
        let (_server, addr) = start(&["--workers", "1", "--forwarded-allow-ips", allow], 1, &[]);
        let r = client()
            .get(format!("http://{addr}/client"))
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await
            .unwrap();
        let text = r.text().await.unwrap();
        assert!(text.starts_with(expect), "allow {allow}: {text}");
    }
}

/// A proxy that appends to `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`) passes a
/// client's own `Forwarded` through untouched: the loopback peer is trusted by default, so these
/// requests are what the app sees behind such a proxy. A contradicting pair names no one.
#[tokio::test]
async fn a_forwarded_header_passed_through_a_proxy_cannot_spoof_the_client() {
    let (_server, addr) = start(&["--workers", "1"], 1, &[]);
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let mut r = client().get(format!("http://{addr}/client"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        async move { r.send().await.unwrap().text().await.unwrap() }
    };
    let text = get(&[
        ("forwarded", "for=1.2.3.4;proto=https"),
        ("x-forwarded-for", "203.0.113.7"),
    ])
    .await;
    assert_eq!(text, "127.0.0.1 http\n", "a contradiction believes neither");
    let text = get(&[("forwarded", "for=1.1.1.1;proto=https, for=203.0.113.7")]).await;
    assert_eq!(
        text, "203.0.113.7 http\n",
        "the client's own element is not read"
    );
    let text = get(&[("forwarded", "for=203.0.113.7;proto=https")]).await;
    assert_eq!(text, "203.0.113.7 https\n");
}

/// Issue 9: "the app can sit beside the built-in services in one config (the app on :8000,
/// static on :8001)". The program names no service on its command line, so a file with
/// [[service]] tables is read as it is. (Static on a Unix socket: two `127.0.0.1:0` binds
/// in one config are refused as the same address.)
#[tokio::test]
async fn the_app_beside_static_in_one_config_file() {
    let dir = tempfile::tempdir().unwrap();
    support::write_file(dir.path(), "hello.txt", "static hello\n");
    let sock = dir.path().join("static.sock");
    let config = format!(
        "workers = 2\n[[service]]\nkind = \"app\"\nbind = \"127.0.0.1:0\"\n\
         [[service]]\nkind = \"static\"\nbind = \"unix:{}\"\nroot = {:?}\n",
        sock.display(),
        dir.path()
    );
    let path = support::write_file(dir.path(), "services.toml", &config);
    let server = Oxicorn::start_program(
        std::path::Path::new(app_bin()),
        tempfile::tempdir().unwrap(),
        &["-c", path.to_str().unwrap()],
        &[],
    );
    server.wait_ready(2, 2);
    let pid = worker_pid(server.tcp_addr()).await;
    assert!(server.booted_pids().contains(&pid), "{pid}");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    s.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nstatic hello\n"), "{out}");
}

/// USR2 upgrades a program embedding its app in place as it does the oxicorn command: the
/// arbiter's PID stays, new workers run the new image, no request fails meanwhile. (Before, the
/// program did not answer the pre-exec probe and every USR2 was refused.)
#[tokio::test]
async fn usr2_upgrades_the_app_in_place() {
    let (server, addr) = start(&["--workers", "2"], 2, &[]);
    let before = server.booted_pids();
    let mark = server.mark();
    let http = client();
    server.signal(Signal::SIGUSR2);
    let until = Instant::now() + SOON;
    let mut served = 0;
    while server.lines()[mark..]
        .iter()
        .all(|l| !l.contains("upgrade complete"))
    {
        assert!(
            Instant::now() < until,
            "no upgrade: {:#?}",
            &server.lines()[mark..]
        );
        let r = http
            .get(format!("http://{addr}/worker"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 0);
    let lines = server.lines()[mark..].join("\n");
    assert!(
        lines.contains(&format!("(pid {} kept)", server.pid)),
        "{lines}"
    );
    // A new connection (the pooled one may be a retired worker's, finishing with close).
    let pid = worker_pid(addr).await;
    assert!(!before.contains(&pid), "a new worker answers: {pid}");
}

#[test]
fn a_failing_factory_stops_the_server_with_its_cause_and_no_fork_loop() {
    let mut server = Oxicorn::start_program(
        std::path::Path::new(app_bin()),
        tempfile::tempdir().unwrap(),
        &["--bind", "127.0.0.1:0", "--workers", "2"],
        &[("APP_STATIC_DIR", "/nonexistent/oxicorn-test")],
    );
    let status = server.wait_exit(SOON).expect("the server gives up");
    assert!(!status.success());
    let log = server.lines().join("\n");
    assert!(log.contains("/nonexistent/oxicorn-test"), "{log}");
    assert!(
        log.contains("No such file or directory"),
        "the cause chain: {log}"
    );
    assert!(!log.contains(" booted"), "{log}");
    // The pool's back-off and halt: a handful of attempts, then the arbiter gives up.
    let failed = server
        .lines()
        .iter()
        .filter(|l| l.contains("failed to boot"))
        .count();
    assert!((1..=8).contains(&failed), "no fork loop: {log}");
    assert!(log.contains("giving up"), "{log}");
}

#[tokio::test]
async fn a_slow_factory_delays_readiness_and_a_reload_waits_for_it() {
    let started = Instant::now();
    let (server, addr) = start(&["--workers", "2", "--warmup-ms", "700"], 2, &[]);
    assert!(started.elapsed() >= Duration::from_millis(700));
    // A HUP under a client loop: new workers take 700 ms to be ready; the old ones serve
    // until then, and nothing is refused or cut.
    let old: Vec<i32> = server.booted_pids();
    let mark = server.mark();
    server.signal(Signal::SIGHUP);
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < deadline {
        let r = http.get(format!("http://{addr}/worker")).send().await;
        let r = r.unwrap_or_else(|e| panic!("request {served} failed during the reload: {e}"));
        assert_eq!(r.status(), 200);
        served += 1;
    }
    let new = server.wait_for_lines_after(mark, " booted", 2, SOON);
    assert!(served > 10);
    assert_eq!(new.len(), 2);
    let pid = worker_pid(addr).await;
    assert!(
        !old.contains(&pid),
        "served by a new worker after the reload"
    );
}

/// A stop while the factory still runs (a slow start: a pool, templates) drops the factory
/// and the worker exits at once: nothing was served yet. Before, the worker saw no signal
/// until its factory returned, and the arbiter killed it when the stop deadline passed
/// ("did not exit after SIGQUIT: killing").
#[test]
fn a_stop_during_a_slow_factory_ends_the_worker_at_once() {
    let mut server = Oxicorn::start_program(
        std::path::Path::new(app_bin()),
        tempfile::tempdir().unwrap(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--warmup-ms",
            "30000",
            "--graceful-timeout",
            "20",
        ],
        &[],
    );
    server.wait_for_line("listening on");
    // Both workers forked and inside their factory.
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(SOON).expect("the arbiter exits");
    assert!(status.success(), "{status:?}");
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "took {:?}",
        stopped.elapsed()
    );
    let log = server.lines().join("\n");
    assert_eq!(
        log.matches("worker stopped before it was ready").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("killing"), "{log}");
}

/// An app that ignores the stop (`/events?ignore-stop` does not watch `oxicorn::Shutdown`)
/// has its stream cut at the graceful deadline, as before the handle existed.
#[tokio::test]
async fn term_lets_a_sleep_finish_and_cuts_events_at_the_graceful_deadline() {
    let (mut server, addr) = start(&["--workers", "1", "--graceful-timeout", "2"], 1, &[]);
    let http = client();
    let slow = tokio::spawn(http.get(format!("http://{addr}/sleep/800")).send());
    let mut events = h2()
        .get(format!("http://{addr}/events?ignore-stop"))
        .send()
        .await
        .unwrap();
    events.chunk().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    let r = slow.await.unwrap().unwrap();
    assert!(r.text().await.unwrap().starts_with("slept 800"));
    // Events keep coming until the deadline, then the stream ends.
    while let Ok(Some(_)) = tokio::time::timeout(SOON, events.chunk()).await.unwrap() {}
    let cut = stopped.elapsed();
    assert!(cut >= Duration::from_millis(1500), "cut after {cut:?}");
    assert!(cut < Duration::from_secs(8), "cut after {cut:?}");
    assert!(server.wait_exit(SOON).is_some());
}

/// Reads an event stream until it ends; panics if it ends with an error (a cut stream: an
/// HTTP/1 chunked body without its last chunk, an HTTP/2 stream reset) or runs past `within`.
async fn read_events_to_a_clean_end(events: &mut reqwest::Response, within: Duration) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => return text,
            Ok(Err(err)) => panic!("the stream was cut: {err:?}; had {text:?}"),
            Err(_) => panic!("the stream did not end within {within:?}; had {text:?}"),
        }
    }
}

/// Opens `GET /events` on `client` and reads its first event.
async fn open_events(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Response {
    open_events_with_pid(client, addr).await.1
}

/// Opens `GET /events` on `client` and reads its first event: the worker it names, and the
/// stream.
async fn open_events_with_pid(
    client: &reqwest::Client,
    addr: SocketAddr,
) -> (i32, reqwest::Response) {
    let mut events = client
        .get(format!("http://{addr}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let first = events.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: 1 "), "{first:?}");
    (event_pid(&first), events)
}

/// Upgrades a raw socket to the example's WebSocket echo (`/ws`): the 101 read, nothing more.
fn ws_upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    s
}

/// Opens the example's WebSocket echo with a raw socket, and checks one echo.
fn open_ws(addr: SocketAddr) -> TcpStream {
    let mut s = ws_upgrade(addr);
    s.write_all(&masked_frame(0x1, b"before the stop")).unwrap();
    let (opcode, payload) = read_frame(&mut s);
    assert_eq!((opcode, &payload[..]), (0x1, &b"before the stop"[..]));
    s
}

/// A client's frame (RFC 6455 §5.2): final, `opcode`, masked, a payload under 126 bytes.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [7u8, 1, 2, 3];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one server frame (unmasked, final, a payload under 126 bytes): its opcode and payload.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0] & 0x80, 0x80, "a final frame");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = usize::from(head[1] & 0x7f);
    assert!(len < 126, "a short frame");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

/// Expects a Close frame with 1001, Going Away (RFC 6455 §7.4.1), answers it as a client
/// does (§5.5.1), and expects the server to close the connection then.
fn expect_going_away(s: &mut TcpStream) {
    let (opcode, payload) = read_frame(s);
    assert_eq!(
        opcode, 0x8,
        "a Close frame, got opcode {opcode}: {payload:?}"
    );
    assert_eq!(&payload[..2], &1001u16.to_be_bytes(), "{payload:?}");
    assert_eq!(&payload[2..], b"server stopping");
    s.write_all(&masked_frame(0x8, &1001u16.to_be_bytes()))
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "after the Close: {rest:?}");
}

/// issue 9: at a graceful stop the app learns of it (`oxicorn::Shutdown`) and ends its
/// server-sent events itself, with a last `event: shutdown`, over HTTP/1.1 and h2c, long
/// before the graceful deadline; the worker then has nothing in flight and exits at once.
#[tokio::test]
async fn term_ends_event_streams_cleanly_long_before_the_deadline() {
    let (mut server, addr) = start(&["--workers", "1", "--graceful-timeout", "30"], 1, &[]);
    let (http1, http2) = (client(), h2());
    let mut one = open_events(&http1, addr).await;
    let mut two = open_events(&http2, addr).await;
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    let (a, b) = tokio::join!(
        read_events_to_a_clean_end(&mut one, Duration::from_secs(10)),
        read_events_to_a_clean_end(&mut two, Duration::from_secs(10)),
    );
    let ended = stopped.elapsed();
    let pid = server.booted_pids()[0];
    for text in [a, b] {
        assert!(
            text.ends_with(&format!(
                "event: shutdown\ndata: worker {pid} is stopping\n\n"
            )),
            "{text:?}"
        );
    }
    assert!(ended < Duration::from_secs(5), "ended after {ended:?}");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let exited = stopped.elapsed();
    assert!(exited < Duration::from_secs(8), "exited after {exited:?}");
}

/// issue 9: a WebSocket gets a Close frame with 1001, Going Away, at a graceful stop (not the
/// abnormal closure, 1006, of a connection cut at the deadline), and the worker exits once
/// the closing handshake is done.
#[test]
fn term_sends_websockets_a_close_frame_with_going_away() {
    let (mut server, addr) = start(&["--workers", "1", "--graceful-timeout", "30"], 1, &[]);
    let mut ws = open_ws(addr);
    let stopped = Instant::now();
    server.signal(Signal::SIGTERM);
    expect_going_away(&mut ws);
    let closed = stopped.elapsed();
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let exited = stopped.elapsed();
    assert!(exited < Duration::from_secs(8), "exited after {exited:?}");
}

/// Sends `signal` to a one-worker server with an event stream and a WebSocket on its worker,
/// and checks that both end cleanly within `limit` (`event: shutdown`, a Close 1001) and that
/// the old worker exits.
async fn old_workers_streams_end_cleanly_at(signal: Signal, limit: Duration) {
    let (server, addr) = start(&["--workers", "1", "--graceful-timeout", "30"], 1, &[]);
    let old = worker_pid(addr).await;
    let http = client();
    let mut events = open_events(&http, addr).await;
    let ws = tokio::task::spawn_blocking(move || open_ws(addr))
        .await
        .unwrap();
    let signalled = Instant::now();
    server.signal(signal);
    let ws = tokio::task::spawn_blocking(move || {
        let mut ws = ws;
        expect_going_away(&mut ws);
    });
    let text = read_events_to_a_clean_end(&mut events, Duration::from_secs(10)).await;
    assert!(
        text.ends_with(&format!(
            "event: shutdown\ndata: worker {old} is stopping\n\n"
        )),
        "{text:?}"
    );
    ws.await.unwrap();
    let ended = signalled.elapsed();
    assert!(ended < limit, "{signal:?}: ended after {ended:?}");
    assert!(
        support::eventually(SOON, || !support::alive(old)),
        "the old worker exits"
    );
    if signal == Signal::SIGHUP {
        let new = worker_pid(addr).await;
        assert_ne!(new, old, "a new worker serves after the reload");
    }
}

/// issue 9: a HUP reload stops the old workers gracefully, so their event streams and
/// WebSockets end as at TERM, while the new workers serve.
#[tokio::test]
async fn hup_ends_the_old_workers_streams_and_websockets_cleanly() {
    old_workers_streams_end_cleanly_at(Signal::SIGHUP, Duration::from_secs(8)).await;
}

/// The pid an event names (`data: 1 from worker 1234`).
fn event_pid(event: &[u8]) -> i32 {
    let text = String::from_utf8_lossy(event);
    text.trim_end()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"))
}

/// issue 9: TTOU retires a worker gracefully: its event stream ends with `event: shutdown`,
/// the other worker's goes on.
#[tokio::test]
async fn ttou_ends_the_retired_workers_event_stream_and_no_other() {
    let (server, addr) = start(&["--workers", "2", "--graceful-timeout", "30"], 2, &[]);
    let workers = server.booted_pids();
    // One stream on each worker: new connections until both have one.
    let http = client();
    let mut streams: Vec<(i32, reqwest::Response)> = Vec::new();
    let until = Instant::now() + SOON;
    while streams.len() < 2 {
        assert!(Instant::now() < until, "no stream on each of {workers:?}");
        let (pid, events) = open_events_with_pid(&http, addr).await;
        if streams.iter().all(|(p, _)| *p != pid) {
            streams.push((pid, events));
        }
    }
    let stopped = Instant::now();
    server.signal(Signal::SIGTTOU);
    let survivor = server.wait_children(1, SOON)[0];
    assert!(workers.contains(&survivor));
    for (pid, mut events) in streams {
        if pid == survivor {
            let next = tokio::time::timeout(SOON, events.chunk()).await.unwrap();
            let next = next.unwrap().unwrap();
            assert!(next.starts_with(b"data: "), "{next:?}");
        } else {
            let text = read_events_to_a_clean_end(&mut events, Duration::from_secs(10)).await;
            assert!(
                text.ends_with(&format!(
                    "event: shutdown\ndata: worker {pid} is stopping\n\n"
                )),
                "{text:?}"
            );
        }
    }
    let retired = stopped.elapsed();
    assert!(
        retired < Duration::from_secs(8),
        "retired after {retired:?}"
    );
}

/// issue 9: a USR2 upgrade stops the old workers gracefully, so their event streams and
/// WebSockets end as at TERM.
#[tokio::test]
async fn an_upgrade_ends_the_old_workers_streams_and_websockets_cleanly() {
    old_workers_streams_end_cleanly_at(Signal::SIGUSR2, Duration::from_secs(10)).await;
}

#[test]
fn the_access_log_follows_access_logformat() {
    let server = Oxicorn::start_program(
        std::path::Path::new(app_bin()),
        tempfile::tempdir().unwrap(),
        &[
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--access-logfile",
            "access.log",
            "--access-logformat",
            "%(h)s %(m)s %(U)s %(q)s %(s)s %(b)s %(p)s",
        ],
        &[],
    );
    server.wait_ready(1, 1);
    let addr = server.tcp_addr();
    let got = raw(
        addr,
        b"GET /echo-nope?x=1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    let pid = server.booted_pids()[0];
    let path = server.path("access.log");
    assert!(support::eventually(SOON, || std::fs::read_to_string(&path)
        .is_ok_and(|t| t.lines().count() == 1)));
    let line = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        line,
        format!("127.0.0.1 GET /echo-nope x=1 404 0 <{pid}>\n")
    );
}

#[test]
fn websocket_echo_and_curl_h2c() {
    let (_server, addr) = start(&["--workers", "2"], 2, &[]);
    let mut s = ws_upgrade(addr);
    // A masked text frame (RFC 6455 §5.2), echoed back unmasked.
    let text = b"over the pool";
    s.write_all(&masked_frame(0x1, text)).unwrap();
    let mut got = vec![0u8; 2 + text.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got[..2], &[0x81, text.len() as u8]);
    assert_eq!(&got[2..], text);
    if support::installed("curl") {
        let out = std::process::Command::new("curl")
            .args(["-s", "--noproxy", "*", "--http2-prior-knowledge"])
            .args(["-w", " %{http_version}"])
            .arg(format!("http://{addr}/worker"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("{\"pid\":") && text.ends_with(" 2"),
            "{text}"
        );
    }
}

/// Issue 11's `--user` for an application: the arbiter creates the access log and gives it to
/// the user before the fork, so workers running as that user can write it (root only).
#[test]
fn with_user_the_access_log_belongs_to_the_user_and_is_written() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Oxicorn::start_program(
        std::path::Path::new(app_bin()),
        dir,
        &[
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--user",
            "nobody",
            "--access-logfile",
            "access.log",
        ],
        &[],
    );
    server.wait_ready(1, 1);
    let got = raw(
        server.tcp_addr(),
        b"GET /worker HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let path = server.path("access.log");
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), nobody.uid.as_raw());
    assert!(support::eventually(SOON, || std::fs::read_to_string(&path)
        .is_ok_and(|t| t.contains("GET /worker"))));
}

/// A request body that sends `first`, then ends if `end`, or else sends nothing, ever: the
/// client that declared a `Content-Length` and stopped.
struct StalledBody {
    first: Option<bytes::Bytes>,
    end: bool,
}

impl hyper::body::Body for StalledBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.first.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(b)))),
            None if self.end => std::task::Poll::Ready(None),
            // Never woken: the body never goes on.
            None => std::task::Poll::Pending,
        }
    }
}

/// An h2c connection from hyper's client whose streams get a receive window of `window`
/// bytes; its driver runs in a task of the test's runtime.
async fn h2_conn<B>(addr: SocketAddr, window: u32) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(window)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// nginx's `client_body_timeout`: a body that stops arriving fails the handler's read after
/// `--client-body-timeout` of silence; the client gets 408 and (HTTP/1) the connection closes.
/// A body that keeps arriving, however slowly, is not cut.
#[tokio::test]
async fn a_stalled_request_body_gets_408_and_a_slow_one_is_read() {
    let (_server, addr) = start(&["--workers", "2", "--client-body-timeout", "1"], 2, &[]);
    let started = Instant::now();
    let got = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\nabc",
        )
    })
    .await
    .unwrap();
    let waited = started.elapsed();
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(got.contains("connection: close"), "{got}");
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // Trickled: a piece every 400 ms, each within the limit, 1.6 s in all.
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 8\r\n\r\n",
        )
        .unwrap();
        for piece in [b"ab", b"cd", b"ef", b"gh"] {
            std::thread::sleep(Duration::from_millis(400));
            s.write_all(piece).unwrap();
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
    assert!(got.ends_with("\r\n\r\nabcdefgh"), "{got}");

    // HTTP/2: the stream gets 408; the connection carries on.
    let mut send = h2_conn(addr, 65_535).await;
    let req = http::Request::post(format!("http://{addr}/echo"))
        .header("content-length", "1000000")
        .body(StalledBody {
            first: Some(bytes::Bytes::from_static(b"abc")),
            end: false,
        })
        .unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(SOON, send.send_request(req))
        .await
        .expect("an answer before SOON")
        .unwrap();
    assert_eq!(r.status(), 408);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let req = http::Request::post(format!("http://{addr}/echo"))
        .body(StalledBody {
            first: Some(bytes::Bytes::from_static(b"ok")),
            end: true,
        })
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "ok");
}

/// Bytes of the file the slow-reader tests ask for: far more than loopback's socket buffers
/// hold (a few MiB each way), so a client that stops reading stalls the server's writes.
const BIG: u64 = 64 << 20;

/// A static directory holding `big` ([`BIG`] bytes, sparse: zeros cost no disk).
fn big_file_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("big"))
        .unwrap()
        .set_len(BIG)
        .unwrap();
    dir
}

/// nginx's `send_timeout`, which oxicorn calls `--idle-timeout` for apps: a client that stops
/// reading a large response is cut once no write made progress for that long. HTTP/1.1 loses
/// its connection; an HTTP/2 stream held by flow control (the client sends no WINDOW_UPDATE)
/// is reset on its own, and the connection's other streams go on.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let dir = big_file_dir();
    let static_dir = dir.path().to_str().unwrap().to_string();
    let (_server, addr) = start(
        &["--workers", "2", "--idle-timeout", "1"],
        2,
        &[("APP_STATIC_DIR", &static_dir)],
    );
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /static/big HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        // Not reading: the buffers fill, the server's writes stall and, 1 s later, fail.
        std::thread::sleep(Duration::from_secs(4));
        s.set_read_timeout(Some(SOON)).unwrap();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break n,
                Ok(k) => n += k as u64,
            }
        }
    })
    .await
    .unwrap();
    assert!(
        got > 0 && got < BIG,
        "HTTP/1.1: {got} bytes, the whole file or none"
    );

    let mut send = h2_conn(addr, 65_535).await;
    let get = || {
        http::Request::get(format!("http://{addr}/static/big"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let r = send.send_request(get()).await.unwrap();
    assert_eq!(r.status(), 200);
    // The body unread: hyper's client returns no window, the server's stream waits on it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut body = r.into_body();
    let mut n = 0u64;
    let outcome = loop {
        match tokio::time::timeout(SOON, http_body_util::BodyExt::frame(&mut body))
            .await
            .expect("the stream ends before SOON")
        {
            Some(Ok(frame)) => n += frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    let err = outcome.expect_err("the stream is reset, not finished");
    assert!(n < BIG, "{n}");
    assert!(
        format!("{err:?}").to_lowercase().contains("cancel"),
        "{err:?}"
    );
    // The connection lives on: a request read promptly is served in full.
    let r = send
        .send_request(
            http::Request::get(format!("http://{addr}/worker"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `oxicorn::StaticFiles` under axum's `nest_service("/static", ..)`: every link of a listing
/// (entries, parent, breadcrumbs) and the 404 page's root link lead to pages under the mount
/// point, and the mount point without its slash is redirected to it.
#[tokio::test]
async fn static_listing_and_404_links_stay_under_the_mount_point() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
    std::fs::write(dir.path().join("sub/b.txt"), "bee").unwrap();
    std::fs::write(dir.path().join("top.txt"), "top").unwrap();
    let static_dir = dir.path().to_str().unwrap().to_string();
    let (_server, addr) = start(&["--workers", "1"], 1, &[("APP_STATIC_DIR", &static_dir)]);
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = reqwest::Url::parse(&format!("http://{addr}/")).unwrap();
    let hrefs = |html: &str| -> Vec<String> {
        html.split("href=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().to_string())
            .collect()
    };
    for page in ["/static/", "/static/sub/", "/static/sub/deeper/"] {
        let url = base.join(page).unwrap();
        let r = http.get(url.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{page}");
        let html = r.text().await.unwrap();
        let links = hrefs(&html);
        assert!(!links.is_empty(), "{page}: {html}");
        for href in links {
            let to = url.join(&href).unwrap();
            assert!(
                to.path().starts_with("/static/"),
                "{page}: {href} leads to {to}, outside the mount point"
            );
            let r = http.get(to.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200, "{page}: {href} ({to})");
        }
    }
    // The breadcrumbs of /static/sub/deeper/: the root of the files, sub, deeper.
    let html = http
        .get(base.join("/static/sub/deeper/").unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let h1 = html
        .split("<h1>")
        .nth(1)
        .unwrap()
        .split("</h1>")
        .next()
        .unwrap();
    let crumbs: Vec<String> = hrefs(h1)
        .iter()
        .map(|h| {
            base.join("/static/sub/deeper/")
                .unwrap()
                .join(h)
                .unwrap()
                .path()
                .to_string()
        })
        .collect();
    assert_eq!(
        crumbs,
        ["/static/", "/static/sub/", "/static/sub/deeper/"],
        "{h1}"
    );
    // 404: its root link is the mount point.
    let url = base.join("/static/sub/nope.txt").unwrap();
    let r = http.get(url.clone()).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let html = r.text().await.unwrap();
    let root: Vec<String> = hrefs(&html)
        .iter()
        .map(|h| url.join(h).unwrap().path().to_string())
        .collect();
    assert_eq!(root, ["/static/"], "{html}");
    // The mount point without its slash: to the listing, whose relative links then work.
    let r = http
        .get(base.join("/static").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    let to = base
        .join("/static")
        .unwrap()
        .join(r.headers()["location"].to_str().unwrap())
        .unwrap();
    assert_eq!(to.path(), "/static/");
}

/// A program embedding oxicorn names itself (`oxicorn::program!()`): its `--version` gives its
/// own name and version, then the oxicorn serving it, and the arbiter's lines (its start, a
/// USR2 upgrade) name the program, not oxicorn as if it were the program.
#[test]
fn version_and_the_arbiters_lines_name_the_program() {
    let v = env!("CARGO_PKG_VERSION");
    for flag in ["--version", "-V"] {
        let out = std::process::Command::new(app_bin())
            .arg(flag)
            .output()
            .unwrap();
        assert!(out.status.success(), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("axum_app {v} (oxicorn {v}, commit ")),
            "{flag}: {text}"
        );
    }
    let (server, _addr) = start(&["--workers", "1"], 1, &[]);
    let started = server.wait_for_line(" arbiter ");
    assert!(
        started.contains(&format!("axum_app {v} arbiter ")),
        "{started}"
    );
    let mark = server.mark();
    server.signal(Signal::SIGUSR2);
    let done = server.wait_for_lines_after(mark, "upgrade complete", 1, SOON);
    assert!(
        done[0].contains(&format!(
            "upgrade complete: axum_app {v} serving with 1 worker(s)"
        )) && done[0].ends_with(&format!("(was axum_app {v})")),
        "{done:?}"
    );
    let upgrade = server.lines()[mark..]
        .iter()
        .find(|l| l.contains("upgrade: axum_app"))
        .cloned()
        .unwrap_or_default();
    assert!(
        upgrade.contains(&format!("upgrade: axum_app {v} -> axum_app {v} (pid ")),
        "{upgrade}"
    );
}

/// issue 9: `ps` and `top` name an embedding program's processes by the program's name
/// (`oxicorn::program!()`), not oxicorn's; gunicorn's `-n`/`--name` (`proc_name` in a file,
/// `--proc-name`) names them otherwise, and a HUP reload applies a changed one.
#[test]
fn process_titles_name_the_program_or_the_proc_name() {
    use support::{process_comm, process_title};
    let (server, addr) = start(&["--workers", "1"], 1, &[]);
    assert_eq!(
        process_title(server.pid),
        format!("axum_app: arbiter [app {addr}]")
    );
    // `comm` holds 15 bytes: the name, then as much of the kind as fits.
    assert_eq!(process_comm(server.pid), "axum_app-arbite");
    let worker = server.wait_children(1, SOON)[0];
    assert_eq!(process_title(worker), "axum_app: worker 1 [gen 1]");
    assert_eq!(process_comm(worker), "axum_app-worker");
    drop(server);

    for flag in ["-n", "--name", "--proc-name"] {
        let (server, addr) = start(&["--workers", "1", flag, "web"], 1, &[]);
        assert_eq!(
            process_title(server.pid),
            format!("web: arbiter [app {addr}]"),
            "{flag}"
        );
        assert_eq!(process_comm(server.pid), "web-arbiter");
        let worker = server.wait_children(1, SOON)[0];
        assert_eq!(process_title(worker), "web: worker 1 [gen 1]", "{flag}");
        assert_eq!(process_comm(worker), "web-worker");
    }

    let dir = tempfile::tempdir().unwrap();
    let config = support::write_file(dir.path(), "app.toml", "proc_name = \"one\"\n");
    let server = Oxicorn::start_program(
        std::path::Path::new(app_bin()),
        dir,
        &["--bind", "127.0.0.1:0", "--workers", "1", "-c", "app.toml"],
        &[],
    );
    server.wait_ready(1, 1);
    assert!(process_title(server.pid).starts_with("one: arbiter [app "));
    std::fs::write(&config, "proc_name = \"two\"\n").unwrap();
    let mark = server.mark();
    server.signal(Signal::SIGHUP);
    server.wait_for_lines_after(mark, "reload complete", 1, SOON);
    // Retitled just after the line.
    assert!(support::eventually(SOON, || process_title(server.pid)
        .starts_with("two: arbiter [app ")));
    assert_eq!(process_comm(server.pid), "two-arbiter");
    assert!(support::eventually(SOON, || {
        let titles: Vec<String> = server.children().into_iter().map(process_title).collect();
        titles.len() == 1
            && titles[0].starts_with("two: worker ")
            && titles[0].ends_with(" [gen 2]")
    }));
}
