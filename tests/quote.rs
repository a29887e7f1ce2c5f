//! `oxicorn quote`, end to end: one quote for the whole server, whatever worker a client is
//! on (clients placed on different workers with `--worker-connections 1`, checked from the
//! per-connection debug log line), and kept when the bus hub is killed.
//! Issue 4: "Line services across workers".

mod lineclient;
mod support;

use std::net::SocketAddr;
use std::process::Command;

use lineclient::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

fn start(workers: usize, extra: &[&str]) -> (Oxicorn, SocketAddr) {
    start_line_service("quote", workers, extra)
}

/// Two clients held by two different workers.
fn two_clients(s: &Oxicorn, addr: SocketAddr) -> (LineClient, LineClient) {
    let mut a = LineClient::connect(addr);
    let mut b = LineClient::connect(addr);
    // A first exchange makes sure each connection is accepted (and logged).
    a.send(b"from a\n");
    a.line();
    b.send(b"from b\n");
    assert_eq!(b.line(), "from a");
    assert_ne!(worker_of(s, &a), worker_of(s, &b), "both on one worker");
    (a, b)
}

#[test]
fn one_quote_for_the_whole_server() {
    let (s, addr) = start(2, &[]);
    let mut a = LineClient::connect(addr);
    a.send(b"one\n");
    a.expect("An apple a day keeps the doctor away");
    let mut b = LineClient::connect(addr);
    b.send(b"two\r\n");
    b.expect("one");
    assert_ne!(worker_of(&s, &a), worker_of(&s, &b), "both on one worker");
    a.send(b"three\n");
    a.expect("two");
    // Several lines in one write: one swap each, in order.
    b.send(b"four\nfive\n");
    b.expect("three");
    b.expect("four");
    // An unterminated last line before the half-close counts too.
    a.send(b"six");
    a.shutdown_write();
    a.expect("five");
    assert!(a.read_to_close().is_empty());
    b.send(b"\n");
    b.expect("six");
    // Binary-safe: the bytes come back as sent.
    b.send(b"\xff\x00\tz\n");
    b.expect("");
    let mut c = LineClient::connect(addr);
    c.send(b"x\n");
    assert_eq!(c.try_raw_line(SOON).unwrap(), b"\xff\x00\tz");
}

#[test]
fn the_first_quote_comes_from_the_flag_or_the_file() {
    let (_s, addr) = start(1, &["--quote", "Carpe diem."]);
    let mut a = LineClient::connect(addr);
    a.send(b"next\n");
    a.expect("Carpe diem.");

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "q.toml",
        "quote = \"From the file\"\nmax_line = 8\n",
    );
    let cfg = cfg.to_str().unwrap();
    let out = Command::new(BIN)
        .args(["quote", "-c", cfg, "--print-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_line = 8"), "{text}");
    assert!(text.contains("quote = \"From the file\""), "{text}");
    let out = Command::new(BIN)
        .args(["quote", "-c", cfg, "--check-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"From the file\""), "{text}");
    let out = Command::new(BIN)
        .args(["chat", "--max-line", "0", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid max-line"),
        "{out:?}"
    );
}

#[test]
fn an_over_long_line_gets_an_error_and_the_connection_closes() {
    let (_s, addr) = start(1, &["--max-line", "8"]);
    let mut a = LineClient::connect(addr);
    a.send(b"12345678\n");
    a.expect("An apple a day keeps the doctor away");
    a.send(&[b'x'; 100]);
    a.send(b"\nnever\n");
    a.expect("* line too long (more than 8 bytes): closing");
    assert!(a.read_to_close().is_empty());
    // The quote is untouched by the refused line.
    let mut b = LineClient::connect(addr);
    b.send(b"y\n");
    b.expect("12345678");
}

#[test]
fn the_quote_survives_the_hub_being_killed() {
    let (s, addr) = start(2, &[]);
    let (mut a, mut b) = two_clients(&s, addr);
    a.send(b"keep me\n");
    a.expect("from b");
    let hub = hub_pid(&s);
    let mark = s.mark();
    kill(Pid::from_raw(hub), Signal::SIGKILL).unwrap();
    s.wait_for_lines_after(mark, &format!("hub {hub} was killed by SIGKILL"), 1, SOON);
    s.wait_for_lines_after(mark, "hub recovered", 1, SOON);
    // Same connections, same quote.
    b.send(b"next\n");
    b.expect("keep me");
    a.send(b"last\n");
    a.expect("next");
}

/// Issue 11: Ctrl-C in a terminal (SIGINT to the whole process group) stops quote, hub
/// included, without a warning first.
#[test]
fn ctrl_c_in_a_terminal_stops_the_quote_without_warnings() {
    let (mut s, addr) = start(2, &[]);
    let (_a, _b) = two_clients(&s, addr);
    ctrl_c(&s);
    let status = s.wait_exit(SOON).expect("the arbiter exits");
    assert!(status.success(), "{status:?}");
    assert_no_warnings(&s);
}
