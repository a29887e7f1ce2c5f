//! Long-lived connections survive a reload (issue 10, "Long-lived connections survive a
//! reload"): a worker retired by a HUP or a TTOU hands its chat, echo and quote connections
//! to a ready worker, which carries them on: no notice, no lost or duplicated line, no second
//! join or leave, the same connection (the client's local port is unchanged). A full stop
//! (TERM), or no worker able to take a connection, keeps the old behaviour.
//!
//! As in `tests/chat.rs`, `--worker-connections` places members on chosen workers, and the
//! debug log says which worker serves whom.

mod lineclient;
mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lineclient::*;
use nix::sys::signal::Signal;
use support::*;

const WELCOME: &str = "* welcome to oxicorn chat; what is your name?";

/// A connected client that got the name prompt, and the worker serving it.
fn connect(s: &Oxicorn, addr: SocketAddr) -> (LineClient, i32) {
    let mut c = LineClient::connect(addr);
    c.expect(WELCOME);
    let pid = worker_of(s, &c);
    (c, pid)
}

/// Makes `c` a member named `name`.
fn name(c: &mut LineClient, name: &str) {
    c.send(format!("{name}\r\n").as_bytes());
    c.expect(&format!(
        "* you joined as {name}; /who lists the members, /quit leaves"
    ));
}

/// The worker that took `client` over (from its "taken over peer=..." debug line).
fn taker_of(s: &Oxicorn, client: &LineClient) -> i32 {
    let pattern = format!(" taken over peer=127.0.0.1:{}", client.local_port());
    let matches = |l: &String| {
        l.split_once(&pattern)
            .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with(' '))
    };
    assert!(
        eventually(SOON, || s.lines().iter().any(matches)),
        "nobody took port {} over; log:\n{}",
        client.local_port(),
        s.lines().join("\n")
    );
    pid_of_line(s.lines().iter().rfind(|l| matches(l)).expect("a line"))
}

/// Asserts that `a` and `b` still talk to each other, and nothing else arrives.
fn still_talking(a: &mut LineClient, an: &str, b: &mut LineClient, bn: &str, tag: &str) {
    a.send(format!("{tag} from {an}\r\n").as_bytes());
    b.expect(&format!("<{an}> {tag} from {an}"));
    b.send(format!("{tag} from {bn}\n").as_bytes());
    a.expect(&format!("<{bn}> {tag} from {bn}"));
    a.send(b"/who\r\n");
    let mut names = [an, bn];
    names.sort();
    a.expect(&format!("* members (2): {}, {}", names[0], names[1]));
    a.expect_quiet(Duration::from_millis(200));
    b.expect_quiet(Duration::from_millis(200));
}

#[test]
fn chat_members_on_every_worker_carry_on_across_a_hup() {
    chat_members_on_every_worker_carry_on_across(Signal::SIGHUP, "reload complete");
}

/// USR2 re-executes the binary at the path the server started from (here the same build) and
/// rolls the workers as a reload does: the members are handed over the same way.
#[test]
fn chat_members_on_every_worker_carry_on_across_a_usr2_upgrade() {
    chat_members_on_every_worker_carry_on_across(Signal::SIGUSR2, "upgrade complete");
}

/// Two members on two workers; `signal` replaces the workers and logs `done` once it has.
fn chat_members_on_every_worker_carry_on_across(signal: Signal, done: &str) {
    // A third worker stays free, for a newcomer after the reload.
    let (s, addr) = start_line_service("chat", 3, &["--graceful-timeout", "30"]);
    let (mut alice, pa) = connect(&s, addr);
    name(&mut alice, "alice");
    let (mut bob, pb) = connect(&s, addr);
    name(&mut bob, "bob");
    assert_ne!(pa, pb, "alice and bob share a worker");
    alice.expect("* bob joined");
    let ports = (alice.local_port(), bob.local_port());

    let mark = s.mark();
    s.signal(signal);
    s.wait_for_lines_after(mark, done, 1, SOON);
    s.wait_for_lines_after(mark, "handed 1 connection(s) to a newer worker", 2, SOON);
    // Both old workers are gone long before the graceful timeout: nothing held them.
    assert!(eventually(SOON, || !alive(pa) && !alive(pb)));

    let (na, nb) = (taker_of(&s, &alice), taker_of(&s, &bob));
    assert!(![pa, pb].contains(&na) && ![pa, pb].contains(&nb));
    assert_ne!(na, nb);
    assert_eq!((alice.local_port(), bob.local_port()), ports);
    still_talking(&mut alice, "alice", &mut bob, "bob", "after the swap");
    // The name stayed reserved throughout: a newcomer cannot take it.
    let (mut eve, _) = connect(&s, addr);
    eve.send(b"Alice\r\n");
    eve.expect("* the name Alice is taken; try another");
}

/// Sends `count` numbered lines as `who`, a few milliseconds apart, from another thread.
fn talk(c: &LineClient, who: &str, count: usize) -> std::thread::JoinHandle<()> {
    let mut w = c.stream.try_clone().unwrap();
    let who = who.to_string();
    std::thread::spawn(move || {
        for i in 0..count {
            // Now and then two lines in one write, so some arrive mid-read.
            let line = if i % 7 == 0 {
                format!("{who} {i}\r\n")
            } else {
                format!("{who} {i}\n")
            };
            w.write_all(line.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
    })
}

/// Reads lines until every sender in `from` said its `count` lines; asserts each sender's
/// lines came in order, once, and nothing else came.
fn hear_all(c: &mut LineClient, from: &[&str], count: usize) {
    let mut next: Vec<usize> = vec![0; from.len()];
    while next.iter().any(|&n| n < count) {
        let l = c.line();
        let (who, i) = l
            .strip_prefix('<')
            .and_then(|r| r.split_once("> "))
            .and_then(|(who, text)| {
                let (w2, i) = text.split_once(' ')?;
                (w2 == who).then_some((who.to_string(), i.parse::<usize>().ok()?))
            })
            .unwrap_or_else(|| panic!("unexpected line {l:?} (port {})", c.local_port()));
        let k = from.iter().position(|f| *f == who).expect("a sender");
        assert_eq!(i, next[k], "{who}'s lines out of order or repeated: {l:?}");
        next[k] += 1;
    }
    c.expect_quiet(Duration::from_millis(300));
}

#[test]
fn a_conversation_spans_two_reloads_without_a_lost_or_repeated_line() {
    a_conversation_spans_two(Signal::SIGHUP, "reload complete");
}

#[test]
fn a_conversation_spans_two_upgrades_without_a_lost_or_repeated_line() {
    a_conversation_spans_two(Signal::SIGUSR2, "upgrade complete");
}

/// Three members on three workers talk while `signal` (logging `done`) replaces the workers
/// twice: every line arrives once, in order, and nobody left or joined.
fn a_conversation_spans_two(signal: Signal, done: &str) {
    let (s, addr) = start_line_service("chat", 3, &["--graceful-timeout", "30"]);
    let mut members = Vec::new();
    let mut pids = Vec::new();
    for n in ["ann", "ben", "cat"] {
        let (mut c, p) = connect(&s, addr);
        name(&mut c, n);
        members.push(c);
        pids.push(p);
    }
    assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 3, "{pids:?}");
    members[0].expect("* ben joined");
    members[0].expect("* cat joined");
    members[1].expect("* cat joined");

    // ann and ben talk all the time; cat listens. Two swaps happen meanwhile.
    const N: usize = 400;
    let senders = [talk(&members[0], "ann", N), talk(&members[1], "ben", N)];
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(250));
        let mark = s.mark();
        s.signal(signal);
        s.wait_for_lines_after(mark, done, 1, SOON);
        s.wait_for_lines_after(mark, "handed 1 connection(s) to a newer worker", 3, SOON);
    }
    for t in senders {
        t.join().unwrap();
    }
    let [ann, ben, cat] = &mut members[..] else {
        unreachable!()
    };
    hear_all(cat, &["ann", "ben"], N);
    hear_all(ann, &["ben"], N);
    hear_all(ben, &["ann"], N);
    // Nobody left or joined, as far as the room knows.
    ann.send(b"/who\r\n");
    ann.expect("* members (3): ann, ben, cat");
    let log = s.lines().join("\n");
    assert!(!log.contains("please reconnect"), "{log}");
}

#[test]
fn chat_members_carry_on_across_a_ttou() {
    // Two workers of two connections: four raw connections fill both, then one is closed on
    // each, so each worker has one member and one free place.
    let s = Oxicorn::start(&[
        "chat",
        "-w",
        "2",
        "--worker-connections",
        "2",
        "-b",
        "127.0.0.1:0",
        "--log-level",
        "debug",
    ]);
    s.wait_ready(1, 2);
    hub_pid(&s);
    let addr = s.tcp_addr();
    let mut by_worker: std::collections::HashMap<i32, Vec<LineClient>> = Default::default();
    for _ in 0..4 {
        let (c, p) = connect(&s, addr);
        by_worker.entry(p).or_default().push(c);
    }
    assert_eq!(by_worker.len(), 2);
    let mut kept: Vec<(i32, LineClient)> = by_worker
        .into_iter()
        .map(|(p, mut cs)| {
            assert_eq!(cs.len(), 2);
            drop(cs.pop());
            (p, cs.pop().unwrap())
        })
        .collect();
    let (pb, mut bob) = kept.pop().unwrap();
    let (pa, mut alice) = kept.pop().unwrap();
    name(&mut alice, "alice");
    name(&mut bob, "bob");
    alice.expect("* bob joined");
    let ports = (alice.local_port(), bob.local_port());

    // Both talk all through the TTOU.
    const N: usize = 300;
    let senders = [talk(&alice, "alice", N), talk(&bob, "bob", N)];
    std::thread::sleep(Duration::from_millis(200));
    let mark = s.mark();
    s.signal(Signal::SIGTTOU);
    let handed = s.wait_for_lines_after(mark, "handed 1 connection(s) to a newer worker", 1, SOON);
    for t in senders {
        t.join().unwrap();
    }
    hear_all(&mut alice, &["bob"], N);
    hear_all(&mut bob, &["alice"], N);
    assert_eq!((alice.local_port(), bob.local_port()), ports);
    let retired = pid_of_line(&handed[0]);
    assert!([pa, pb].contains(&retired));
    let (moved, stayed) = if retired == pa {
        (&alice, pb)
    } else {
        (&bob, pa)
    };
    assert_eq!(taker_of(&s, moved), stayed);
    assert!(eventually(SOON, || !alive(retired)));
    still_talking(&mut alice, "alice", &mut bob, "bob", "after the ttou");
}

#[test]
fn with_no_worker_free_to_take_them_members_are_told_as_before_and_the_log_says_so() {
    // Two workers of one connection each, both with a member: after a TTOU the one left is
    // full, so the retired worker's member stays and is told to reconnect.
    let (s, addr) = start_line_service("chat", 2, &["--graceful-timeout", "30"]);
    let (mut a, pa) = connect(&s, addr);
    name(&mut a, "a");
    let (mut b, pb) = connect(&s, addr);
    name(&mut b, "b");
    assert_ne!(pa, pb);
    a.expect("* b joined");
    let mark = s.mark();
    s.signal(Signal::SIGTTOU);
    let said = s.wait_for_lines_after(mark, "found none to take them", 1, SOON);
    let retired = pid_of_line(&said[0]);
    let (gone, other, gone_name) = if retired == pa {
        (&mut a, &mut b, "a")
    } else {
        (&mut b, &mut a, "b")
    };
    let rest = String::from_utf8_lossy(&gone.read_to_close()).into_owned();
    assert!(
        rest.ends_with("* the server is restarting or stopping; please reconnect\r\n"),
        "{rest:?}"
    );
    other.expect(&format!("* {gone_name} left"));
}

#[test]
fn an_echo_client_mid_stream_keeps_echoing_across_a_hup() {
    let s = Oxicorn::start(&[
        "echo",
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        "--graceful-timeout",
        "30",
    ]);
    s.wait_ready(1, 2);
    let addr = s.tcp_addr();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(SOON)).unwrap();
    let port = c.local_addr().unwrap().port();
    // A writer thread streams numbered chunks; this thread reads the echo back.
    let mut w = c.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut sent = Vec::new();
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let chunk = format!("chunk {i:08}|");
            w.write_all(chunk.as_bytes()).unwrap();
            sent.extend_from_slice(chunk.as_bytes());
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    });
    let mut got = Vec::new();
    let read_some = |c: &mut TcpStream, got: &mut Vec<u8>, at_least: usize| {
        let deadline = Instant::now() + SOON;
        while got.len() < at_least {
            assert!(
                Instant::now() < deadline,
                "echo stalled at {} bytes",
                got.len()
            );
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "the server closed the echo connection");
            got.extend_from_slice(&buf[..n]);
        }
    };
    read_some(&mut c, &mut got, 500);
    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "reload complete", 1, SOON);
    s.wait_for_lines_after(mark, "handed 1 connection(s) to a newer worker", 1, SOON);
    let now = got.len();
    read_some(&mut c, &mut got, now + 500);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = writer.join().unwrap();
    read_some(&mut c, &mut got, sent.len());
    assert_eq!(got, sent, "the echo lost, repeated or reordered bytes");
    assert_eq!(c.local_addr().unwrap().port(), port);
    // Still the same connection, still echoing, served by the new generation alone.
    c.write_all(b"last|").unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"last|");
}

#[test]
fn a_quote_client_carries_on_across_a_hup() {
    let (s, addr) = start_line_service("quote", 1, &["--graceful-timeout", "30"]);
    let mut c = LineClient::connect(addr);
    c.send(b"first\n");
    let initial = c.line();
    // Half a line before the reload, the rest after: the old worker read the half, and the
    // new one gets it with the connection.
    c.send(b"sec");
    std::thread::sleep(Duration::from_millis(100));
    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "handed 1 connection(s) to a newer worker", 1, SOON);
    c.send(b"ond\n");
    c.expect("first");
    c.send(b"third\n");
    c.expect("second");
    assert!(!initial.is_empty());
}

#[test]
fn a_connection_still_choosing_its_name_carries_on_across_a_hup() {
    let (s, addr) = start_line_service("chat", 1, &["--graceful-timeout", "30"]);
    let (mut c, p) = connect(&s, addr);
    // Half a name before the reload: the old worker read it, the new one finishes it.
    c.send(b"zo");
    std::thread::sleep(Duration::from_millis(100));
    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "handed 1 connection(s) to a newer worker", 1, SOON);
    assert_ne!(taker_of(&s, &c), p);
    c.send(b"e\r\n");
    c.expect("* you joined as zoe; /who lists the members, /quit leaves");
    c.send(b"/quit\r\n");
    c.expect("* bye");
}

/// Echo and quote connections idle for a while are parked (their tasks ended, issue 13): a
/// HUP still hands every one of them to the new generation, where each carries on, on the
/// same connection, with nothing lost.
fn parked_connections_are_handed_over_across_a_hup(service: &str) {
    const CLIENTS: usize = 12;
    let s = Oxicorn::start(&[
        service,
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        "--worker-connections",
        "100",
        "--graceful-timeout",
        "30",
    ]);
    s.wait_ready(1, 2);
    let addr = s.tcp_addr();
    let mut clients: Vec<(LineClient, u16)> = (0..CLIENTS)
        .map(|i| {
            let mut c = LineClient::connect(addr);
            c.send(format!("before {i}\r\n").as_bytes());
            let _ = c.line();
            let port = c.local_port();
            (c, port)
        })
        .collect();
    // Idle well past the moment they park (`service::park::PARK_AFTER`, 1 s).
    std::thread::sleep(Duration::from_millis(2500));
    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "reload complete", 1, SOON);
    let handed = handed_after(&s, mark, CLIENTS);
    assert_eq!(handed, CLIENTS, "log:\n{}", s.lines().join("\n"));
    for (i, (c, port)) in clients.iter_mut().enumerate() {
        assert_eq!(c.local_port(), *port);
        c.send(format!("after {i}\r\n").as_bytes());
        let reply = c.line();
        if service == "echo" {
            assert_eq!(reply, format!("after {i}"));
        } else {
            assert!(!reply.is_empty());
        }
    }
}

#[test]
fn parked_echo_connections_are_handed_over_across_a_hup() {
    parked_connections_are_handed_over_across_a_hup("echo");
}

#[test]
fn parked_quote_connections_are_handed_over_across_a_hup() {
    parked_connections_are_handed_over_across_a_hup("quote");
}

/// Chat members idle for a while are parked too (issue 13): a HUP hands them to the new
/// generation with their names and their places in the room, as members in their tasks are:
/// no notice, no join or leave, no lost or repeated line, the same connection.
#[test]
fn parked_chat_members_are_handed_over_across_a_hup() {
    let s = Oxicorn::start(&[
        "chat",
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        "--worker-connections",
        "100",
        "--graceful-timeout",
        "30",
        "--log-level",
        "debug",
    ]);
    s.wait_ready(1, 2);
    let addr = s.tcp_addr();
    let mark = s.mark();
    let (mut alice, _) = connect(&s, addr);
    name(&mut alice, "alice");
    let (mut bob, _) = connect(&s, addr);
    name(&mut bob, "bob");
    alice.expect("* bob joined");
    let ports = (alice.local_port(), bob.local_port());
    // Idle well past the moment they park (`service::park::PARK_AFTER`, 1 s).
    let parked = |since: usize| {
        s.lines()
            .iter()
            .skip(since)
            .filter(|l| l.contains("chat member parked"))
            .count()
    };
    assert!(
        eventually(SOON, || parked(mark) >= 2),
        "log:\n{}",
        s.lines().join("\n")
    );

    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "reload complete", 1, SOON);
    let handed = handed_after(&s, mark, 2);
    assert_eq!(handed, 2, "log:\n{}", s.lines().join("\n"));
    taker_of(&s, &alice);
    taker_of(&s, &bob);
    assert_eq!((alice.local_port(), bob.local_port()), ports);
    still_talking(&mut alice, "alice", &mut bob, "bob", "after the hup");
    // Parked again in the new generation, and handed over again by a second HUP.
    let mark = s.mark();
    assert!(eventually(SOON, || parked(mark) >= 2));
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "reload complete", 1, SOON);
    still_talking(&mut alice, "alice", &mut bob, "bob", "after the second hup");
    // The names stayed reserved throughout.
    let (mut eve, _) = connect(&s, addr);
    eve.send(b"Alice\r\n");
    eve.expect("* the name Alice is taken; try another");
}

/// How many connections the retiring workers said they handed to a newer worker since `mark`,
/// waiting until there are `want` of them or [`SOON`] has passed.
fn handed_after(s: &Oxicorn, mark: usize, want: usize) -> usize {
    let deadline = Instant::now() + SOON;
    loop {
        let handed: usize = s
            .lines()
            .iter()
            .skip(mark)
            .filter_map(|l| {
                let (_, rest) = l.split_once("handed ")?;
                rest.split_once(" connection(s) to a newer worker")?
                    .0
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        if handed >= want || Instant::now() >= deadline {
            return handed;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
