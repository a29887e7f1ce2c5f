//! Several services in one pool, from a TOML file with `[[service]]` tables: every worker
//! serves every service, each on its own listeners; a HUP can add a service, and a broken
//! file changes nothing. Issue 8: "a config of several services".

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

/// `GET path` over a fresh connection; the whole response.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(SOON)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// One line from a unix stream, without its terminator.
fn unix_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).trim_end().to_string()
}

#[test]
fn one_pool_serves_static_and_chat_and_a_hup_adds_a_third() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from static\n").unwrap();
    let conf = |extra: &str| {
        format!(
            "workers = 2\n\
             [[service]]\nkind = \"static\"\nbind = \"127.0.0.1:0\"\nroot = {root:?}\n\
             [[service]]\nkind = \"chat\"\nname = \"room\"\nbind = \"unix:chat.sock\"\n{extra}",
            root = dir.path()
        )
    };
    let cwd = tempfile::tempdir().unwrap();
    let path = write_file(cwd.path(), "oxicorn.toml", &conf(""));
    let s = Oxicorn::start_with(cwd, &["-c", "oxicorn.toml"], &[]);
    let listening = s.wait_ready(2, 2);
    let http: std::net::SocketAddr = listening[0].parse().unwrap();
    assert!(http_get(http, "/hello.txt").ends_with("hello from static\n"));

    // The chat service, on its unix socket, from the same pool.
    let chat = path.parent().unwrap().join("chat.sock");
    let mut a = UnixStream::connect(&chat).unwrap();
    a.set_read_timeout(Some(SOON)).unwrap();
    assert!(unix_line(&mut a).contains("what is your name"));
    a.write_all(b"ann\n").unwrap();
    assert!(unix_line(&mut a).contains("you joined as ann"));

    // HUP with a third service: echo on another socket. The first two go on.
    let mark = s.mark();
    write_file(
        path.parent().unwrap(),
        "oxicorn.toml",
        &conf("[[service]]\nkind = \"echo\"\nbind = \"unix:echo.sock\"\n"),
    );
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "reload complete", 1, SOON);
    let mut e = UnixStream::connect(path.parent().unwrap().join("echo.sock")).unwrap();
    e.set_read_timeout(Some(SOON)).unwrap();
    e.write_all(b"ping\n").unwrap();
    assert_eq!(unix_line(&mut e), "ping");
    assert!(http_get(http, "/hello.txt").ends_with("hello from static\n"));
    // A reload retires the old workers, and their chat members are carried on by the new
    // generation on the same connection, without a notice (issue 10): ann is still there, and
    // still holds her name.
    s.wait_for_lines_after(mark, "handed 1 connection(s) to a newer worker", 1, SOON);
    let mut b = UnixStream::connect(&chat).unwrap();
    b.set_read_timeout(Some(SOON)).unwrap();
    assert!(unix_line(&mut b).contains("what is your name"));
    b.write_all(b"ann\n").unwrap();
    assert!(unix_line(&mut b).contains("the name ann is taken"));
    b.write_all(b"bob\n").unwrap();
    assert!(unix_line(&mut b).contains("you joined as bob"));
    assert_eq!(unix_line(&mut a), "* bob joined");
    b.write_all(b"hi ann\n").unwrap();
    assert_eq!(unix_line(&mut a), "<bob> hi ann");

    // A broken third service changes nothing.
    let mark = s.mark();
    write_file(
        path.parent().unwrap(),
        "oxicorn.toml",
        &conf("[[service]]\nkind = \"ftp\"\nbind = \"unix:ftp.sock\"\n"),
    );
    s.signal(Signal::SIGHUP);
    let refused = s.wait_for_lines_after(mark, "reload refused", 1, SOON);
    assert!(
        refused[0].contains("unknown service kind `ftp`"),
        "{refused:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(http_get(http, "/hello.txt").ends_with("hello from static\n"));
    e.write_all(b"still\n").unwrap();
    assert_eq!(unix_line(&mut e), "still");
    b.write_all(b"and again\n").unwrap();
    assert_eq!(unix_line(&mut a), "<bob> and again");
    assert!(!path.parent().unwrap().join("ftp.sock").exists());
}

/// Issue 12: an HTTP listener hands a client to a worker only once its request has come
/// (TCP_DEFER_ACCEPT), so the worker can answer it at accept; a listener whose server speaks
/// first (chat) or whose clients may sit at a terminal (echo) accepts at once, and a chat
/// client that sends nothing still gets its greeting straight away.
#[test]
fn http_listeners_defer_accepting_until_the_request_and_the_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from static\n").unwrap();
    let conf = format!(
        "workers = 1\n\
         [[service]]\nkind = \"static\"\nbind = \"127.0.0.1:0\"\nroot = {root:?}\n\
         [[service]]\nkind = \"chat\"\nbind = \"127.0.0.2:0\"\n\
         [[service]]\nkind = \"echo\"\nbind = \"127.0.0.3:0\"\n",
        root = dir.path()
    );
    // One loopback address each (all of 127/8 is loopback): three port-0 binds on one
    // address would be the same bind given three times.
    let cwd = tempfile::tempdir().unwrap();
    write_file(cwd.path(), "oxicorn.toml", &conf);
    let s = Oxicorn::start_with(cwd, &["-c", "oxicorn.toml"], &[]);
    let listening = s.wait_ready(3, 1);
    let addr = |i: usize| listening[i].parse::<std::net::SocketAddr>().unwrap();
    let (http, chat, echo) = (addr(0), addr(1), addr(2));
    let worker = s.booted_pids()[0];

    // Chat speaks first: its greeting comes at once, well before the kernel's hold of a
    // deferred client (about a second) could have ended.
    let started = std::time::Instant::now();
    let mut q = std::net::TcpStream::connect(chat).unwrap();
    q.set_read_timeout(Some(SOON)).unwrap();
    let mut first = [0u8; 1];
    assert_eq!(q.read(&mut first).unwrap(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the greeting took {:?}",
        started.elapsed()
    );

    // Echo: a silent client is accepted at once.
    let before = sockets_of(worker);
    let _e = std::net::TcpStream::connect(echo).unwrap();
    assert!(eventually(Duration::from_millis(900), || {
        sockets_of(worker) > before
    }));

    // Static: a silent client stays in the kernel; its request brings it in and is answered.
    let before = sockets_of(worker);
    let mut c = std::net::TcpStream::connect(http).unwrap();
    c.set_read_timeout(Some(SOON)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sockets_of(worker),
        before,
        "a silent HTTP client was accepted"
    );
    c.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.ends_with("hello from static\n"), "{out}");
}
