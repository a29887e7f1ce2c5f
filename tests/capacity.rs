//! At the connection cap, idle clients must not lock out a real one: the worker closes an idle
//! kept-alive connection (then one that never sent a request) to admit it, as nginx reuses
//! connections when its table is full; a connection in the middle of a request is never
//! closed for this. Issue 11, "Capacity: idle connections must not lock out new clients".

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;

fn site(extra: &[&str]) -> (Oxicorn, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "A").unwrap();
    let mut args = vec![
        "static",
        ".",
        "-w",
        "1",
        "--worker-connections",
        "4",
        "-b",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let s = Oxicorn::start_with(dir, &args, &[]);
    s.wait_ready(1, 1);
    let addr = s.tcp_addr();
    (s, addr)
}

/// Reads one response with a `Content-Length` body from a kept-alive connection.
fn response(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "closed mid-response");
        out.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&out).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// A client arriving at the full cap gets its answer within 5 s (room was made for it, not
/// waited for).
fn a_newcomer_is_served_soon(addr: std::net::SocketAddr) {
    let started = Instant::now();
    let mut newcomer = TcpStream::connect(addr).unwrap();
    newcomer.set_read_timeout(Some(SOON)).unwrap();
    assert!(get(&mut newcomer).ends_with("\r\n\r\nA"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

fn get(c: &mut TcpStream) -> String {
    c.write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    response(c)
}

/// True when the server closed `c` (EOF) within `within`.
fn closed(c: &mut TcpStream, within: Duration) -> bool {
    c.set_read_timeout(Some(within)).unwrap();
    match c.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn idle_kept_alive_clients_make_room_for_a_new_one_oldest_first() {
    let (s, addr) = site(&["--keep-alive", "20"]);
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(SOON)).unwrap();
            assert!(get(&mut c).ends_with("\r\n\r\nA"));
            std::thread::sleep(Duration::from_millis(50));
            c
        })
        .collect();
    // Without making room it would wait for the 20 s keep-alive.
    a_newcomer_is_served_soon(addr);
    // The least recently active one made room; the others are still served.
    assert!(closed(&mut idle[0], Duration::from_secs(2)));
    for c in &mut idle[2..] {
        c.set_read_timeout(Some(SOON)).unwrap();
        assert!(get(c).ends_with("\r\n\r\nA"));
    }
    s.wait_for_line("worker_connections are not enough");
}

#[test]
fn silent_clients_make_room_too() {
    let (s, addr) = site(&["--header-timeout", "30"]);
    let worker = s.wait_children(1, SOON)[0];
    let before = sockets_of(worker);
    let _silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The static listener defers accepting a client until it sends (TCP_DEFER_ACCEPT), and the
    // kernel queues a silent one anyway after about a second: wait until the worker holds all
    // four, so the newcomer finds the cap full of silent connections.
    assert!(
        eventually(Duration::from_secs(10), || sockets_of(worker) >= before + 4),
        "the worker never accepted the silent clients"
    );
    std::thread::sleep(Duration::from_millis(200));
    a_newcomer_is_served_soon(addr);
}

#[test]
fn a_request_in_progress_is_never_closed_to_make_room() {
    let (_s, addr) = site(&["--header-timeout", "2"]);
    // Four requests begun (a head not finished yet): none may be cut for the fifth client,
    // which waits for a slot; the four get their 408 when their head's time runs out.
    let mut begun: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /a.txt HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = TcpStream::connect(addr).unwrap();
    fifth.set_read_timeout(Some(SOON)).unwrap();
    fifth
        .write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    for c in &mut begun {
        c.set_read_timeout(Some(SOON)).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    }
    assert!(response(&mut fifth).ends_with("\r\n\r\nA"));
}

/// Kept-alive connections idle for a while are parked (their tasks ended, issue 13): at the cap
/// the oldest parked one is closed first to admit a newcomer, and the others are still served.
#[test]
fn parked_kept_alive_clients_make_room_first() {
    let (s, addr) = site(&["--keep-alive", "20"]);
    let open = || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(SOON)).unwrap();
        assert!(get(&mut c).ends_with("\r\n\r\nA"));
        c
    };
    // Two that park (idle past `service::park::PARK_AFTER`, 1 s) ...
    let mut parked = vec![open()];
    std::thread::sleep(Duration::from_millis(100));
    parked.push(open());
    std::thread::sleep(Duration::from_millis(2500));
    // ... and two that fill the cap of 4 while they wait in their tasks.
    let mut waiting = [open(), open()];
    a_newcomer_is_served_soon(addr);
    assert!(closed(&mut parked[0], Duration::from_secs(2)));
    for c in parked[1..].iter_mut().chain(waiting.iter_mut()) {
        c.set_read_timeout(Some(SOON)).unwrap();
        assert!(get(c).ends_with("\r\n\r\nA"));
    }
    s.wait_for_line("worker_connections are not enough");
}
