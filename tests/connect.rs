//! `oxicorn connect`: a line client with one clear line per failure.
//! Issue 4: "`oxicorn connect`".

mod lineclient;
mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lineclient::*;
use support::*;

/// Runs `oxicorn connect ARGS` with `input` on stdin.
fn connect(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oxicorn connect");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written from a thread: the child may exit (and close stdin) before taking it all.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn connection_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = connect(&[&format!("127.0.0.1:{port}")], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "oxicorn connect: connection refused\n");
}

#[test]
fn no_such_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let out = connect(&[&format!("unix:{}", path.display())], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("oxicorn connect: no such socket: {}\n", path.display())
    );
}

#[test]
fn timed_out() {
    // A listener with a backlog of one, already full: the kernel drops further SYNs, so a
    // connect waits on loopback without ever being refused.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            fillers.push(c);
        }
    }
    let started = Instant::now();
    let out = connect(&[&addr.to_string(), "--timeout", "1"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "oxicorn connect: timed out after 1s\n");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn timed_out_when_the_server_stops_reading() {
    // Accepts, then never reads: once the socket buffers are full, our writes cannot progress.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(8));
        drop(stream);
    });
    let line = format!("{}\n", "x".repeat(1 << 16));
    let input = line.repeat(1024); // 64 MiB: far more than loopback buffers hold
    let started = Instant::now();
    let out = connect(&[&addr.to_string(), "--timeout", "1"], input.as_bytes());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "oxicorn connect: timed out after 1s\n");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    drop(server);
}

#[test]
fn connection_reset_by_peer() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        // SO_LINGER 0: close with RST instead of FIN.
        let sock = socket2::Socket::from(stream);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(sock);
    });
    let out = connect(&[&addr.to_string()], b"");
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "oxicorn connect: connection reset by peer\n");
}

#[test]
fn talks_to_the_chat_and_exits_when_the_server_closes() {
    let s = Oxicorn::start(&[
        "chat",
        "-w",
        "2",
        "--worker-connections",
        "1",
        "-b",
        "127.0.0.1:0",
        "-b",
        "unix:chat.sock",
        "--log-level",
        "debug",
    ]);
    s.wait_ready(2, 2);
    hub_pid(&s);
    let addr = s.tcp_addr();
    let mut watcher = LineClient::connect(addr);
    watcher.line();
    watcher.send(b"watcher\n");
    watcher.line();

    // Over TCP: stdin ends (half-close), the chat says goodbye by closing; exit 0.
    let out = connect(&[&addr.to_string()], b"zed\nhello\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "* welcome to oxicorn chat; what is your name?\r\n\
         * you joined as zed; /who lists the members, /quit leaves\r\n"
    );
    watcher.expect("* zed joined");
    watcher.expect("<zed> hello");
    watcher.expect("* zed left");

    // Over the Unix socket, and /quit closing from the server's side while stdin is open.
    let unix = format!("unix:{}", s.path("chat.sock").display());
    let mut child = Command::new(BIN)
        .args(["connect", &unix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"amy\n/quit\n").unwrap();
    // stdin stays open: the exit must come from the server closing.
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("* bye\r\n"),
        "{out:?}"
    );
    watcher.expect("* amy joined");
    watcher.expect("* amy left");
}

#[test]
fn connects_over_ipv6_too() {
    let s = Oxicorn::start(&["quote", "-w", "1", "-b", "[::1]:0", "--quote", "over v6"]);
    let addr = s.wait_ready(1, 1).remove(0);
    assert!(addr.starts_with("[::1]:"), "{addr}");
    hub_pid(&s);
    let out = connect(&[&addr], b"next\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over v6\r\n");
}
