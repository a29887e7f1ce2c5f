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

#[tokio::test]
async fn a_panic_costs_one_request_and_the_same_worker_serves_the_next() {
    let (_server, addr) = start(&["--workers", "2"], 2, &[]);
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
    let r = http.get(url("/panic")).send().await.unwrap();
    assert_eq!(r.status(), 500);
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
    let pid = pid_of(
        &http
            .get(format!("http://{addr}/worker"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(
        !old.contains(&pid),
        "served by a new worker after the reload"
    );
}

#[tokio::test]
async fn term_lets_a_sleep_finish_and_cuts_events_at_the_graceful_deadline() {
    let (mut server, addr) = start(&["--workers", "1", "--graceful-timeout", "2"], 1, &[]);
    let http = client();
    let slow = tokio::spawn(http.get(format!("http://{addr}/sleep/800")).send());
    let mut events = h2()
        .get(format!("http://{addr}/events"))
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
    // A masked text frame (RFC 6455 §5.2), echoed back unmasked.
    let mask = [7u8, 1, 2, 3];
    let text = b"over the pool";
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
    let mut got = vec![0u8; 2 + text.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got[..2], &[0x81, text.len() as u8]);
    assert_eq!(&got[2..], text);
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
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
