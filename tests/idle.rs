//! Idle connections cost little in every service (issue 13): a few thousand idle connections
//! to echo, quote, chat and static, each after one exchange, grow the server's memory (PSS of
//! the arbiter and all its children, from /proc/PID/smaps_rollup) by less than a bound each,
//! and every one of them still works afterwards. Echo, quote and static connections park once
//! idle (`service::park`), so theirs is [`PARKED_BOUND`]; joined chat members park too, once
//! the room has been quiet for a second, and keep entries in the room's, the parking's and the
//! bus's tables (which grow in steps, a large one for a few hundred members), so theirs is
//! [`CHAT_BOUND`]. The bounds are generous on purpose: noise must not fail them, a regression
//! to the figures before parking (1.4 to 1.8 KB, or the 12 to 19 KB the issue measured; 2.4 to
//! 2.5 KB for a chat member whose small allocations kept the heap's pages resident) must.
//! `benches/idle.sh` measures the real figures.
//!
//! The tests run one at a time (a lock): a server started or stopped by a parallel test shares
//! the binary's pages with this one, and would move its PSS.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::*;

/// The most memory one idle chat member may add, in bytes: 1,205 to 1,491 in this test (a
/// debug build, 800 members, 2026-11-30, load average 5 to 22), 2.4 to 2.5 KB (release, 10,000
/// members) before a parked member's state lived in its worker's tables alone; 4 KiB before
/// that was measured.
const CHAT_BOUND: i64 = 2048;

/// The most memory one idle connection of a service that parks them may add, in bytes: a
/// parked one costs its 24-byte record, and what the tasks of many left behind (the heap is
/// trimmed after many parkings, not after each); 1.4 to 1.8 KB before parking.
const PARKED_BOUND: i64 = 1024;

/// How long an idle connection waits before it has parked: `service::park::PARK_AFTER`, and
/// time for the worker to trim its heap once they have (half a second after the last one).
const PARKED_AFTER: Duration = Duration::from_millis(2500);

/// How much longer than [`PARKED_AFTER`] the figure may take to come within its bound: on a
/// machine at a load average of 15 or more a worker may not have run its parking and trim by
/// then (quote measured 1.8 KB at 2.5 s in such runs, 300 B when it had).
const SETTLE: Duration = Duration::from_secs(15);

/// Connections per service: a few thousand, well inside a 20,000 fd limit for the client.
const CONNECTIONS: usize = 2000;

/// Chat members: every join is announced to every member already there, so the notices grow
/// with the square of the count; 800 members' notices fit in their socket buffers unread.
const MEMBERS: usize = 800;

/// How long each phase (opening them all, checking them all) may take.
const PHASE: Duration = Duration::from_secs(120);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// PSS of `pid`, in KiB (0 once it is gone).
fn pss_kib(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// PSS of `pid` and of each of its descendants, in KiB, by pid.
fn tree_pss_kib(pid: i32) -> Vec<(i32, i64)> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        out.push((p, pss_kib(p)));
        todo.extend(children_of(p));
    }
    out.sort_unstable();
    out
}

fn total(tree: &[(i32, i64)]) -> i64 {
    tree.iter().map(|(_, kib)| kib).sum()
}

/// One client connection, with a line reader.
struct Conn {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        s.set_read_timeout(Some(SOON)).unwrap();
        s.set_write_timeout(Some(SOON)).unwrap();
        Conn {
            rd: BufReader::with_capacity(256, s.try_clone().unwrap()),
            wr: s,
        }
    }

    fn send(&mut self, data: &[u8]) {
        self.wr.write_all(data).expect("send");
    }

    /// The next line, LF included; panics at EOF or after [`SOON`].
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.rd.read_line(&mut line).expect("read a line");
        assert!(n > 0, "the server closed the connection");
        line
    }

    /// Lines until one starts with `prefix`; that one.
    fn line_starting(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line();
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// One kept-alive GET of `/hello.txt`; the body.
    fn get(&mut self) -> String {
        self.send(b"GET /hello.txt HTTP/1.1\r\nHost: idle\r\n\r\n");
        let status = self.line();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut length = 0;
        loop {
            let h = self.line();
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        self.rd.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }
}

/// Starts `args` on 2 workers with room for every connection, opens `count` connections,
/// takes each through `exchange` (the first time) and checks the memory growth, then takes
/// every one through `exchange` again (they all still work).
fn idle_connections(
    service: &str,
    extra: &[&str],
    count: usize,
    bound: i64,
    exchange: fn(&mut Conn, usize, bool),
) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut args = vec![
        service,
        "-w",
        "2",
        "-b",
        "127.0.0.1:0",
        "--worker-connections",
        "10000",
        "--idle-timeout",
        "0",
    ];
    args.extend_from_slice(extra);
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "hello.txt", "hello, idle\n");
    let s = Oxicorn::start_with(dir, &args, &[]);
    s.wait_ready(1, 2);
    let addr = s.tcp_addr();
    // A first connection through once: what every worker allocates once is not per connection.
    for i in 0..4 {
        let mut c = Conn::open(addr);
        exchange(&mut c, count + i, true);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = tree_pss_kib(s.pid);

    let start = Instant::now();
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let mut c = Conn::open(addr);
        exchange(&mut c, i, true);
        conns.push(c);
        assert!(start.elapsed() < PHASE, "opening {count} took too long");
    }
    // Let the workers finish what the last exchanges started, and the idle ones park: at
    // least PARKED_AFTER, then, on a loaded machine where a worker may not have run yet, look
    // again until the figure is within the bound or SETTLE has passed (the lowest one seen
    // counts). A regression keeps its memory however long it is given, so it still fails.
    std::thread::sleep(PARKED_AFTER);
    let settled_by = Instant::now() + SETTLE;
    let (mut after_tree, mut per) = (Vec::new(), i64::MAX);
    loop {
        let tree = tree_pss_kib(s.pid);
        let now = (total(&tree) - total(&before)) * 1024 / count as i64;
        if now < per {
            (after_tree, per) = (tree, now);
        }
        if per < bound || Instant::now() >= settled_by {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (before_tree, before, after) = (&before, total(&before), total(&after_tree));
    eprintln!(
        "{service}: {count} idle connections, {before} → {after} KiB PSS, {per} bytes each; \
         by process (KiB): {before_tree:?} → {after_tree:?}"
    );
    assert!(
        per < bound,
        "{service}: an idle connection costs {per} bytes ({before} → {after} KiB for {count})"
    );

    let start = Instant::now();
    for (i, c) in conns.iter_mut().enumerate() {
        exchange(c, i, false);
        assert!(start.elapsed() < PHASE, "checking {count} took too long");
    }
}

#[test]
fn idle_echo_connections_are_cheap_and_all_still_echo() {
    idle_connections("echo", &[], CONNECTIONS, PARKED_BOUND, |c, i, _| {
        let line = format!("echo {i}\n");
        c.send(line.as_bytes());
        assert_eq!(c.line(), line);
    });
}

#[test]
fn idle_quote_connections_are_cheap_and_all_still_answer() {
    idle_connections("quote", &[], CONNECTIONS, PARKED_BOUND, |c, i, _| {
        c.send(format!("quote {i}\n").as_bytes());
        assert!(c.line().ends_with("\r\n"));
    });
}

#[test]
fn idle_chat_members_are_cheap_and_all_still_answer() {
    idle_connections("chat", &[], MEMBERS, CHAT_BOUND, |c, i, first| {
        if first {
            c.line_starting("* welcome");
            c.send(format!("u{i}\r\n").as_bytes());
            c.line_starting("* you joined as");
        } else {
            // Answered to this member alone (after the join notices it has not read yet).
            c.send(b"/ping\r\n");
            c.line_starting("* unknown command");
        }
    });
}

#[test]
fn idle_kept_alive_static_connections_are_cheap_and_all_still_serve() {
    idle_connections(
        "static",
        &["--keep-alive", "600"],
        CONNECTIONS,
        PARKED_BOUND,
        |c, _, _| {
            assert_eq!(c.get(), "hello, idle\n");
        },
    );
}
