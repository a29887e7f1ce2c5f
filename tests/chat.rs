//! `oxicorn chat`, end to end: the real binary, several workers, and members placed on
//! different workers on purpose: with `--worker-connections 1`, each open connection holds a
//! whole worker, so N members need N workers; the debug log line of each connection names the
//! worker that serves it, and the tests check the placement instead of hoping for it.
//! Issue 4: "Line services across workers: `chat`, `quote`, the embedded bus, and
//! `oxicorn connect`".

mod lineclient;
mod support;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use lineclient::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

const WELCOME: &str = "* welcome to oxicorn chat; what is your name?";

/// A chat server with `workers` workers, one connection each.
fn start(workers: usize, extra: &[&str]) -> (Oxicorn, SocketAddr) {
    start_line_service("chat", workers, extra)
}

/// A connected client that got the name prompt, and the worker serving it.
fn connect(s: &Oxicorn, addr: SocketAddr) -> (LineClient, i32) {
    let mut c = LineClient::connect(addr);
    c.expect(WELCOME);
    let pid = worker_of(s, &c);
    (c, pid)
}

/// A member named `name`.
fn join(s: &Oxicorn, addr: SocketAddr, name: &str) -> (LineClient, i32) {
    let (mut c, pid) = connect(s, addr);
    c.send(format!("{name}\r\n").as_bytes());
    c.expect(&format!(
        "* you joined as {name}; /who lists the members, /quit leaves"
    ));
    (c, pid)
}

fn distinct(pids: &[i32]) {
    let set: HashSet<_> = pids.iter().collect();
    assert_eq!(set.len(), pids.len(), "clients share a worker: {pids:?}");
}

#[test]
fn names_are_checked_and_unique_across_workers_ignoring_case() {
    let (s, addr) = start(2, &[]);
    let (mut alice, pa) = join(&s, addr, "Alice");
    let (mut b, pb) = connect(&s, addr);
    distinct(&[pa, pb]);

    b.send(b"alice\n");
    b.expect("* the name alice is taken; try another");
    b.send(b"ALICE\r\n");
    b.expect("* the name ALICE is taken; try another");
    b.send(b"two words\n");
    b.expect("* invalid name: no spaces or control characters; try again");
    b.send(b"bell\x07\n");
    b.expect("* invalid name: no spaces or control characters; try again");
    b.send(format!("{}\n", "x".repeat(33)).as_bytes());
    b.expect("* invalid name: use at most 32 characters; try again");
    b.send(b"\n");
    b.expect("* invalid name: it is empty; try again");
    b.send(b"caf\xe9\n");
    b.expect("* a name must be valid UTF-8; try again");
    // Nobody saw any of that.
    alice.expect_quiet(Duration::from_millis(200));

    let name = "é".repeat(32); // 32 characters, 64 bytes
    b.send(format!("{name}\n").as_bytes());
    b.expect(&format!(
        "* you joined as {name}; /who lists the members, /quit leaves"
    ));
    alice.expect(&format!("* {name} joined"));

    // Once Alice leaves, her name is free again, on any worker.
    alice.send(b"/quit\n");
    alice.expect("* bye");
    alice.read_to_close();
    b.expect("* Alice left");
    let (_c, _) = join(&s, addr, "aLiCe");
    b.expect("* aLiCe joined");
}

#[test]
fn lines_reach_every_other_member_in_order_across_workers() {
    let (s, addr) = start(3, &[]);
    let (mut a, pa) = join(&s, addr, "a");
    let (mut b, pb) = join(&s, addr, "b");
    a.expect("* b joined");
    let (mut c, pc) = join(&s, addr, "c");
    a.expect("* c joined");
    b.expect("* c joined");
    distinct(&[pa, pb, pc]);

    // a with CRLF, b with LF, interleaved, in bursts much larger than one read.
    const N: usize = 300;
    let a_lines: String = (0..N).map(|i| format!("from a {i}\r\n")).collect();
    let b_lines: String = (0..N).map(|i| format!("from b {i}\n")).collect();
    let (ah, bh) = a_lines.split_at(a_lines.len() / 2);
    let (bh1, bh2) = b_lines.split_at(b_lines.len() / 3);
    a.send(ah.as_bytes());
    b.send(bh1.as_bytes());
    a.send(bh.as_bytes());
    b.send(bh2.as_bytes());

    // c gets all of both, each sender's lines in its order.
    let (mut next_a, mut next_b) = (0, 0);
    for _ in 0..2 * N {
        let l = c.line();
        if let Some(rest) = l.strip_prefix("<a> from a ") {
            assert_eq!(rest.parse::<usize>().unwrap(), next_a, "{l}");
            next_a += 1;
        } else if let Some(rest) = l.strip_prefix("<b> from b ") {
            assert_eq!(rest.parse::<usize>().unwrap(), next_b, "{l}");
            next_b += 1;
        } else {
            panic!("unexpected line {l:?}");
        }
    }
    // a and b get each other's lines, never their own.
    for i in 0..N {
        a.expect(&format!("<b> from b {i}"));
        b.expect(&format!("<a> from a {i}"));
    }
    for m in [&mut a, &mut b, &mut c] {
        m.expect_quiet(Duration::from_millis(200));
    }
}

#[test]
fn who_quit_and_leave_notices() {
    let (s, addr) = start(3, &[]);
    let (mut zed, pz) = join(&s, addr, "zed");
    let (mut amy, pa) = join(&s, addr, "Amy");
    zed.expect("* Amy joined");
    let (mut bob, pb) = join(&s, addr, "bob");
    distinct(&[pz, pa, pb]);
    zed.expect("* bob joined");
    amy.expect("* bob joined");

    bob.send(b"/who\r\n");
    bob.expect("* members (3): Amy, bob, zed");
    bob.send(b"/nope\n");
    bob.expect("* unknown command /nope: try /who or /quit");

    // /quit: a goodbye, then the server closes; the others see the leave notice.
    amy.send(b"/QUIT\n");
    amy.expect("* bye");
    assert!(amy.read_to_close().is_empty());
    zed.expect("* Amy left");
    bob.expect("* Amy left");

    // Dropping the connection is leaving too.
    drop(bob);
    zed.expect("* bob left");
    zed.send(b"/who\n");
    zed.expect("* members (1): zed");
}

#[test]
fn an_unterminated_last_line_before_half_close_is_delivered() {
    let (s, addr) = start(2, &[]);
    let (mut a, pa) = join(&s, addr, "a");
    let (mut b, pb) = join(&s, addr, "b");
    distinct(&[pa, pb]);
    a.expect("* b joined");
    b.send(b"first\nno newline at the end");
    b.shutdown_write();
    a.expect("<b> first");
    a.expect("<b> no newline at the end");
    a.expect("* b left");
    b.read_to_close();
}

#[test]
fn bad_input_loses_nothing_and_harms_no_one() {
    let (s, addr) = start(2, &["--max-line", "16"]);
    let (mut a, pa) = join(&s, addr, "a");
    let (mut b, pb) = join(&s, addr, "b");
    distinct(&[pa, pb]);
    a.expect("* b joined");

    // Too long (even split across writes): an error for the sender, nothing for the others,
    // and the next line is intact. Exactly the limit is fine, with LF or CRLF.
    b.send(&[b'x'; 40]);
    b.send(&[b'y'; 40]);
    b.send(b"\nafter\n");
    b.expect("* line too long (more than 16 bytes): discarded");
    a.expect("<b> after");
    b.send(b"0123456789abcdef\r\n0123456789abcdef\n0123456789abcdefg\n");
    a.expect("<b> 0123456789abcdef");
    a.expect("<b> 0123456789abcdef");
    b.expect("* line too long (more than 16 bytes): discarded");

    // Invalid UTF-8 shows as U+FFFD; control characters are stripped, tabs kept.
    b.send(b"bad \xff\xfe ok\n");
    a.expect("<b> bad \u{fffd}\u{fffd} ok");
    b.send(b"a\tb\x07c\x1b[2Jd\x00\n");
    a.expect("<b> a\tbc[2Jd");
    // A line of nothing but control characters says nothing.
    b.send(b"\x07\x08\nend\n");
    a.expect("<b> end");
    a.expect_quiet(Duration::from_millis(200));
    b.expect_quiet(Duration::from_millis(200));
}

#[test]
fn a_line_as_long_as_a_large_max_line_reaches_everyone() {
    // 600,000 bytes of invalid UTF-8 become 1.8 MB of U+FFFD: more than the default backlog a
    // member may have, which must not make a legal line drop its readers.
    const N: usize = 600_000;
    let (s, addr) = start(2, &["--max-line", "700000"]);
    let (mut a, pa) = join(&s, addr, "a");
    let (mut b, pb) = join(&s, addr, "b");
    distinct(&[pa, pb]);
    a.expect("* b joined");
    let mut line = vec![0xff; N];
    line.push(b'\n');
    b.send(&line);
    let got = a.line();
    assert_eq!(got.len(), "<b> ".len() + 3 * N);
    assert!(got.starts_with("<b> \u{fffd}") && got.ends_with('\u{fffd}'));
    b.send(b"after\n");
    a.expect("<b> after");
}

#[test]
fn a_telnet_ctrl_c_is_answered_and_not_shown_to_anyone() {
    let (s, addr) = start(2, &[]);
    let (mut t, pt) = join(&s, addr, "t");
    let (mut o, po) = join(&s, addr, "o");
    distinct(&[pt, po]);
    t.expect("* o joined");
    // netkit telnet on Ctrl-C: IAC IP, IAC DO TIMING-MARK; it then discards all output until
    // the server answers the mark. The user types on.
    t.send(b"\xff\xf4\xff\xfd\x06");
    t.send(b"still here\r\n");
    o.expect("<t> still here");
    o.send(b"hi t\n");
    // IAC WILL TIMING-MARK, before what the room says next.
    assert_eq!(t.try_raw_line(SOON).unwrap(), b"\xff\xfb\x06<o> hi t");
    // A raw 0xFF from nc is data, shown as U+FFFD, as before.
    o.send(b"\xff\xfe\n");
    t.expect("<o> \u{fffd}\u{fffd}");
}

#[test]
fn a_member_whose_worker_catches_up_on_its_lines_is_not_dropped() {
    // The member's worker is stopped while it sends ~3 MB of long lines, then resumed: the
    // worker reads them as fast as it can. Its own lines count as behind until its writer
    // skips them, so a writer starved by its own session dropped the member that was sending.
    const N: usize = 48;
    let (s, addr) = start(2, &["--max-line", "70000"]);
    for round in 0..3 {
        let (mut sender, ps) = join(&s, addr, &format!("sender{round}"));
        let (mut other, po) = join(&s, addr, &format!("other{round}"));
        distinct(&[ps, po]);
        sender.expect(&format!("* other{round} joined"));
        kill(Pid::from_raw(ps), Signal::SIGSTOP).unwrap();
        let mut stream = sender.stream.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let line = format!("{}\n", "y".repeat(64 * 1024));
            for _ in 0..N {
                stream.write_all(line.as_bytes()).unwrap();
            }
        });
        // Let the kernel buffers fill while the worker cannot read.
        std::thread::sleep(Duration::from_millis(300));
        kill(Pid::from_raw(ps), Signal::SIGCONT).unwrap();
        writer.join().unwrap();
        for _ in 0..N {
            let l = other.line();
            assert_eq!(l.len(), format!("<sender{round}> ").len() + 64 * 1024);
        }
        sender.send(b"/quit\n");
        sender.expect("* bye");
        other.expect(&format!("* sender{round} left"));
        other.send(b"/quit\n");
        other.expect("* bye");
    }
}

#[test]
fn a_member_that_stops_reading_is_dropped_and_the_others_get_everything() {
    let (s, addr) = start(3, &[]);
    // The stalled member takes as little as the kernel allows into its socket, so its queue
    // on the server fills quickly.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap();
    let mut slow = LineClient::from_stream(sock.into());
    slow.expect(WELCOME);
    let ps = worker_of(&s, &slow);
    slow.send(b"slow\n");
    slow.expect_prefix("* you joined as slow");

    let (mut reader, pr) = join(&s, addr, "reader");
    slow.expect("* reader joined");
    let (mut sender, pw) = join(&s, addr, "sender");
    distinct(&[ps, pr, pw]);
    reader.expect("* sender joined");
    // `slow` never reads again.

    const N: usize = 10_000;
    let payload = "p".repeat(1000);
    let writer = std::thread::spawn(move || {
        let text: String = (0..N).map(|i| format!("{i} {payload}\n")).collect();
        sender.send(text.as_bytes());
        sender
    });
    let mut left_at = None;
    let mut next = 0;
    while next < N {
        let l = reader.line();
        if l == "* slow left" {
            left_at = Some(next);
            continue;
        }
        let (i, rest) = l
            .strip_prefix("<sender> ")
            .and_then(|r| r.split_once(' '))
            .unwrap_or_else(|| panic!("unexpected line {l:?}"));
        assert_eq!(i.parse::<usize>().unwrap(), next);
        assert_eq!(rest.len(), 1000);
        next += 1;
    }
    let mut sender = writer.join().unwrap();
    if left_at.is_none() {
        reader.expect("* slow left");
    }
    s.wait_for_line("name=slow overflow=true");
    // The stalled member's connection was closed by the server: reading it all ends.
    let got = slow.read_to_close();
    assert!(got.len() < N * 1000, "the slow member got everything?");
    // And the room goes on.
    sender.send(b"still here\n");
    reader.expect("<sender> still here");
    reader.send(b"/who\n");
    reader.expect("* members (2): reader, sender");
}

#[test]
fn the_hub_killed_mid_conversation_recovers_by_itself() {
    let (s, addr) = start(3, &[]);
    let (mut a, pa) = join(&s, addr, "anna");
    let (mut b, pb) = join(&s, addr, "ben");
    a.expect("* ben joined");
    let (mut c, pc) = connect(&s, addr);
    distinct(&[pa, pb, pc]);
    a.send(b"before\n");
    b.expect("<anna> before");

    let hub = hub_pid(&s);
    let mark = s.mark();
    kill(Pid::from_raw(hub), Signal::SIGKILL).unwrap();
    let line =
        &s.wait_for_lines_after(mark, &format!("hub {hub} was killed by SIGKILL"), 1, SOON)[0];
    assert!(line.contains("restarting"), "{line}");
    s.wait_for_lines_after(mark, " ready", 1, SOON);
    // Every worker reconnects; the two with members re-register one name each.
    s.wait_for_lines_after(mark, "reconnected to the bus hub", 3, SOON);
    s.wait_for_lines_after(mark, "hub recovered", 1, SOON);
    assert_ne!(hub_pid(&s), hub);

    // Names stay reserved for connected members.
    c.send(b"ANNA\n");
    c.expect("* the name ANNA is taken; try another");
    c.send(b"cid\n");
    c.expect_prefix("* you joined as cid");
    a.expect("* cid joined");
    b.expect("* cid joined");
    // The members stayed connected, and lines sent after the recovery are delivered.
    a.send(b"after\n");
    b.expect("<anna> after");
    c.expect("<anna> after");
    b.send(b"/who\n");
    b.expect("* members (3): anna, ben, cid");
    assert!(eventually(SOON, || zombies_of(s.pid).is_empty()));
}

/// What a member is told when the hub does not answer a reserve within the bus's request
/// timeout (5 s).
const CANNOT_CHECK: &str = "* names cannot be checked right now; try again in a moment";

/// Kills the hub and waits until its successor is ready.
fn restart_hub(s: &Oxicorn) {
    let hub = hub_pid(s);
    kill(Pid::from_raw(hub), Signal::SIGKILL).unwrap();
    assert!(
        eventually(SOON, || hub_pid(s) != hub),
        "no new hub; log:\n{}",
        s.lines().join("\n")
    );
}

/// Waits until exactly the workers `pids` have said hello to a hub since `mark` (from the hub's
/// debug line; a worker may say it twice: a connection accepted by the dying hub is reset).
fn wait_hellos(s: &Oxicorn, mark: usize, pids: &[i32]) {
    let want: HashSet<i32> = pids.iter().copied().collect();
    let back = || -> HashSet<i32> {
        s.lines()[mark..]
            .iter()
            .filter_map(|l| l.split("worker joined the bus worker=").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect()
    };
    assert!(
        eventually(SOON, || back() == want),
        "expected hellos from {want:?}, got {:?}; log:\n{}",
        back(),
        s.lines().join("\n")
    );
}

/// Whether a "hub recovered" line was logged after `mark`.
fn recovered_since(s: &Oxicorn, mark: usize) -> bool {
    s.lines()[mark..]
        .iter()
        .any(|l| l.contains("hub recovered"))
}

/// A worker that needs longer than the old fixed 3 s window to come back (here: stopped, and
/// the heartbeat timeout is far off) keeps its members' names: the restarted hub waits for that
/// very process, not for a number of hellos or a clock.
#[test]
fn a_restarted_hub_waits_for_a_stopped_worker_before_granting_names() {
    let (s, addr) = start(3, &["--timeout", "30"]);
    let (mut alice, pa) = join(&s, addr, "alice");
    let (mut b, pb) = connect(&s, addr);
    let (mut c, pc) = connect(&s, addr);
    distinct(&[pa, pb, pc]);

    kill(Pid::from_raw(pa), Signal::SIGSTOP).unwrap();
    let mark = s.mark();
    restart_hub(&s);
    // The two running workers are back on the bus; alice's is not.
    wait_hellos(&s, mark, &[pb, pc]);

    b.send(b"alice\n");
    c.send(b"carol\n");
    // Past the old 3 s window: alice's name is not given away while her worker is stopped.
    // The reserve waits in the hub until the bus request times out.
    assert_eq!(b.try_line(Duration::from_secs(4)), None);
    b.expect(CANNOT_CHECK);
    c.expect(CANNOT_CHECK);
    assert!(
        !recovered_since(&s, mark),
        "recovery ended without alice's worker"
    );

    kill(Pid::from_raw(pa), Signal::SIGCONT).unwrap();
    let line = &s.wait_for_lines_after(mark, "re-registered 1 name(s)", 1, SOON)[0];
    assert_eq!(pid_of_line(line), pa, "{line}");
    let line = &s.wait_for_lines_after(mark, "hub recovered", 1, SOON)[0];
    assert!(
        line.contains("every earlier worker is back or gone"),
        "{line}"
    );

    // alice kept her name and her connection.
    b.send(b"alice\n");
    b.expect("* the name alice is taken; try another");
    // carol's reserve was granted when recovery ended, after its waiter gave up: the worker
    // gave the name back instead of holding it for nobody.
    assert!(
        eventually(SOON, || {
            alice.send(b"/who\n");
            alice.line() == "* members (1): alice"
        }),
        "carol's abandoned reservation leaked"
    );
    c.send(b"carol\n");
    c.expect_prefix("* you joined as carol");
    alice.expect("* carol joined");
    alice.send(b"still here\n");
    c.expect("<alice> still here");
}

/// During a reload there are more live workers than `--workers`: the new generation's hellos
/// (no names yet) must not end recovery while an old worker holding names is still away.
#[test]
fn a_hub_restarted_during_a_reload_waits_for_the_old_generation() {
    let (s, addr) = start(2, &["--timeout", "30", "--graceful-timeout", "30"]);
    let (mut alice, pa) = join(&s, addr, "alice");
    // Stopped, alice's worker cannot act on the reload's SIGTERM: it stays, holding her name.
    kill(Pid::from_raw(pa), Signal::SIGSTOP).unwrap();
    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "reload complete", 1, SOON);
    let fresh: Vec<i32> = s
        .wait_for_lines_after(mark, " booted", 2, SOON)
        .iter()
        .map(|l| {
            l.split("worker ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();

    let mark = s.mark();
    restart_hub(&s);
    // Both new workers are back on the bus: as many hellos as `--workers`.
    wait_hellos(&s, mark, &fresh);

    let (mut n, pn) = connect(&s, addr);
    assert!(fresh.contains(&pn), "the newcomer is on an old worker");
    n.send(b"alice\n");
    assert_eq!(n.try_line(Duration::from_secs(4)), None);
    assert!(
        !recovered_since(&s, mark),
        "recovery ended without alice's worker"
    );

    // Resumed, the old worker finishes its retirement, and recovery ends (the worker said
    // hello or is gone). Alice is either handed to a new worker (issue 10), if the hub had
    // recovered when the hand-over reached it, or told to reconnect, if not.
    kill(Pid::from_raw(pa), Signal::SIGCONT).unwrap();
    s.wait_for_lines_after(mark, "hub recovered", 1, SOON);
    assert!(eventually(SOON, || !alive(pa)));
    let handed = s
        .lines()
        .iter()
        .any(|l| l.contains(&format!("[{pa}]")) && l.contains("handed 1 connection(s)"));
    if handed {
        alice.send(b"/who\r\n");
        assert!(alice.line().contains("alice"));
    } else {
        let rest = String::from_utf8_lossy(&alice.read_to_close()).into_owned();
        assert!(
            rest.ends_with("* the server is restarting or stopping; please reconnect\r\n"),
            "{rest:?}"
        );
    }
    let answer = n.line();
    assert!(
        answer == CANNOT_CHECK
            || answer == "* the name alice is taken; try another"
            || answer.starts_with("* you joined as alice"),
        "{answer}"
    );
}

#[test]
fn a_wedged_hub_misses_its_heartbeat_and_is_replaced() {
    let (s, addr) = start(2, &["-t", "2"]);
    let (mut a, pa) = join(&s, addr, "al");
    let (mut b, pb) = join(&s, addr, "bo");
    distinct(&[pa, pb]);
    a.expect("* bo joined");
    let hub = hub_pid(&s);
    let mark = s.mark();
    // Alive but not serving: only the heartbeat can tell.
    kill(Pid::from_raw(hub), Signal::SIGSTOP).unwrap();
    s.wait_for_lines_after(
        mark,
        &format!("hub {hub} missed its heartbeat"),
        1,
        Duration::from_secs(8),
    );
    let line = &s.wait_for_lines_after(mark, &format!("hub {hub} was killed"), 1, SOON)[0];
    assert!(line.contains("heartbeat timeout"), "{line}");
    s.wait_for_lines_after(mark, "hub recovered", 1, SOON);
    a.send(b"after\n");
    b.expect("<al> after");
    b.send(b"/who\n");
    b.expect("* members (2): al, bo");
}

#[test]
fn a_dead_worker_s_members_leave_and_free_their_names() {
    let (s, addr) = start(2, &[]);
    let (mut a, pa) = join(&s, addr, "ada");
    let (b, pb) = join(&s, addr, "bea");
    distinct(&[pa, pb]);
    a.expect("* bea joined");
    kill(Pid::from_raw(pb), Signal::SIGKILL).unwrap();
    // The hub publishes the leave notice the member left with it (its "will").
    a.expect("* bea left");
    drop(b);
    a.send(b"/who\n");
    a.expect("* members (1): ada");
}

#[test]
fn the_hub_runs_only_for_services_that_need_it_and_stops_last() {
    let (mut s, _addr) = start(2, &[]);
    let hub = hub_pid(&s);
    assert_eq!(s.wait_children(3, SOON).len(), 3, "two workers and the hub");
    assert!(s.children().contains(&hub));
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(SOON).expect("the arbiter exits");
    assert!(status.success(), "{status:?}");
    let lines = s.lines();
    let hub_exit = lines
        .iter()
        .position(|l| l.contains(&format!("hub {hub} exited")));
    let last_worker = lines
        .iter()
        .rposition(|l| l.contains("worker ") && l.contains(" exited"));
    assert!(
        hub_exit > last_worker && last_worker.is_some(),
        "the hub must stop after the workers:\n{}",
        lines.join("\n")
    );
    assert!(!alive(hub));

    // echo has no bus: only workers.
    let e = Oxicorn::start(&["echo", "-w", "2", "-b", "127.0.0.1:0"]);
    e.wait_ready(1, 2);
    e.wait_children(2, SOON);
    assert!(!e.lines().iter().any(|l| l.contains("hub ")));
}

#[test]
fn a_graceful_stop_tells_members_and_does_not_wait_for_the_timeout() {
    let (mut s, addr) = start(2, &["--graceful-timeout", "30"]);
    let (mut a, pa) = join(&s, addr, "a");
    let (mut b, pb) = join(&s, addr, "b");
    distinct(&[pa, pb]);
    a.expect("* b joined");
    term_tells_members_to_reconnect(&mut s, [&mut a, &mut b]);
}

#[test]
fn nc_drives_the_chat() {
    if Command::new("nc").arg("-h").output().is_err() {
        eprintln!("nc is not installed: skipped");
        return;
    }
    let (s, addr) = start(2, &[]);
    let (mut watcher, pw) = join(&s, addr, "watcher");
    // nc -N: half-close when stdin ends, as a user's Ctrl-D; the last line has no newline.
    let mut nc = Command::new("nc")
        .args(["-N", "127.0.0.1", &addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nc");
    nc.stdin
        .take()
        .unwrap()
        .write_all(b"netcat\nhello from nc\n/who\nbye without newline")
        .unwrap();
    watcher.expect("* netcat joined");
    watcher.expect("<netcat> hello from nc");
    watcher.expect("<netcat> bye without newline");
    watcher.expect("* netcat left");
    let out = nc.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        format!(
            "{WELCOME}\r\n* you joined as netcat; /who lists the members, /quit leaves\r\n\
             * members (2): netcat, watcher\r\n"
        )
    );
    let nc_worker = s
        .lines()
        .iter()
        .find(|l| l.contains("name=netcat"))
        .map(|l| pid_of_line(l))
        .unwrap();
    distinct(&[pw, nc_worker]);
}

/// Issue 11: a terminal's Ctrl-C sends SIGINT to the whole foreground process group (the
/// arbiter, the workers and the hub at once). The arbiter stops everything in order; nobody
/// warns first (before: the hub exited at once, and the workers warned it was gone).
#[test]
fn ctrl_c_in_a_terminal_stops_the_chat_without_warnings() {
    let (mut s, addr) = start(2, &[]);
    let (mut a, pa) = join(&s, addr, "a");
    let (_b, pb) = join(&s, addr, "b");
    distinct(&[pa, pb]);
    a.expect("* b joined");
    ctrl_c(&s);
    let status = s.wait_exit(SOON).expect("the arbiter exits");
    assert!(status.success(), "{status:?}");
    assert_no_warnings(&s);
}

/// A service manager stopping the whole process group (systemd's default `KillMode` sends
/// TERM to every process): the workers drain while the hub, which ignores a TERM while the
/// arbiter lives, keeps the bus up for them; the arbiter stops it last. Nobody warns.
#[test]
fn term_to_the_whole_group_stops_the_chat_in_order_without_warnings() {
    let (mut s, addr) = start(2, &[]);
    let (mut a, pa) = join(&s, addr, "a");
    let (_b, pb) = join(&s, addr, "b");
    distinct(&[pa, pb]);
    a.expect("* b joined");
    nix::sys::signal::killpg(Pid::from_raw(s.pid), Signal::SIGTERM).unwrap();
    drop(a);
    drop(_b);
    let status = s.wait_exit(SOON).expect("the arbiter exits");
    assert!(status.success(), "{status:?}");
    assert_no_warnings(&s);
    assert!(
        s.lines()
            .iter()
            .any(|l| l.contains("hub") && l.contains("exited"))
    );
}

/// Issue 11: PuTTY (and telnet on port 23) opens with option negotiation. It used to get "a
/// name must be valid UTF-8" for its first line; now every option is refused as a line-mode
/// server does, and the name that follows is taken.
#[test]
fn a_client_opening_with_telnet_negotiation_gets_the_prompt_and_its_name() {
    let (s, addr) = start(2, &[]);
    let mut c = LineClient::connect(addr);
    // WILL NAWS, WILL TSPEED, WILL TTYPE, WILL NEW-ENVIRON, DO ECHO, WILL SGA, DO SGA, and an
    // unsolicited subnegotiation (terminal type "xterm").
    c.send(b"\xff\xfb\x1f\xff\xfb\x20\xff\xfb\x18\xff\xfb\x27\xff\xfd\x01\xff\xfb\x03\xff\xfd\x03");
    c.send(b"\xff\xfa\x18\x00xterm\xff\xf0");
    c.send(b"putty\r\n");
    assert_eq!(c.try_raw_line(SOON).unwrap(), WELCOME.as_bytes());
    let mut want =
        b"\xff\xfe\x1f\xff\xfe\x20\xff\xfe\x18\xff\xfe\x27\xff\xfc\x01\xff\xfe\x03\xff\xfc\x03"
            .to_vec();
    want.extend_from_slice(b"* you joined as putty; /who lists the members, /quit leaves");
    assert_eq!(
        String::from_utf8_lossy(&c.try_raw_line(SOON).unwrap()),
        String::from_utf8_lossy(&want)
    );
    // IAC IAC is one 0xFF byte of data (shown as U+FFFD); the others see no command bytes.
    let (mut o, _) = join(&s, addr, "other");
    c.expect("* other joined");
    c.send(b"a\xff\xffb\xff\xf1c\r\n");
    o.expect("<putty> a\u{fffd}bc");
}

/// Issue 11: names that impersonate. While `alice` is present (on another worker), a name
/// that looks the same is refused with a clear line: `alice` + U+200B, a name of invisible
/// characters only, a right-to-left override, a Cyrillic look-alike. Names in other scripts
/// are welcome.
#[test]
fn names_that_impersonate_a_member_are_refused_across_workers() {
    let (s, addr) = start(3, &[]);
    let (mut alice, pa) = join(&s, addr, "alice");
    let (mut b, pb) = connect(&s, addr);
    distinct(&[pa, pb]);
    for (name, why) in [
        (
            "alice\u{200b}",
            "* invalid name: no invisible characters (U+200B); try again",
        ),
        (
            "\u{200b}\u{2060}",
            "* invalid name: no invisible characters (U+200B); try again",
        ),
        (
            "\u{202e}ecila",
            "* invalid name: no invisible characters (U+202E); try again",
        ),
        (
            "\u{430}lice",
            "* the name \u{430}lice looks too much like a present member's name; try another",
        ),
        ("ALICE", "* the name ALICE is taken; try another"),
    ] {
        b.send(format!("{name}\r\n").as_bytes());
        b.expect(why);
    }
    alice.expect_quiet(Duration::from_millis(200));
    b.send("Дмитрий\r\n".as_bytes());
    b.expect("* you joined as Дмитрий; /who lists the members, /quit leaves");
    alice.expect("* Дмитрий joined");
    // The Latin look-alike of the Cyrillic name is refused the other way round too.
    let (mut c, _) = connect(&s, addr);
    c.send("Дмитрий\r\n".as_bytes());
    c.expect("* the name Дмитрий is taken; try another");
}

/// Issue 11, capacity: at the connection cap, a connection still at the name prompt is closed
/// to admit a newcomer (a silent client must not hold a slot a real one waits for), but a
/// member never is: an idle member still reads the room, and a newcomer then waits its turn.
#[test]
fn a_full_worker_makes_room_by_closing_a_nameless_connection_never_a_member() {
    let s = Oxicorn::start(&[
        "chat",
        "-w",
        "1",
        "--worker-connections",
        "2",
        "-b",
        "127.0.0.1:0",
    ]);
    s.wait_ready(1, 1);
    let addr = s.tcp_addr();
    let mut silent = LineClient::connect(addr);
    silent.expect(WELCOME);
    let mut a = LineClient::connect(addr);
    a.expect(WELCOME);
    a.send(b"ann\r\n");
    a.expect("* you joined as ann; /who lists the members, /quit leaves");
    // Full: the newcomer is admitted at once, the nameless connection told why it goes.
    let mut b = LineClient::connect(addr);
    b.expect(WELCOME);
    silent.expect("* the server is full; please try again in a moment");
    b.send(b"bob\r\n");
    b.expect("* you joined as bob; /who lists the members, /quit leaves");
    a.expect("* bob joined");
    // Full of members: a newcomer waits for a slot, and the members are left alone.
    let mut c = LineClient::connect(addr);
    assert!(c.try_line(Duration::from_millis(700)).is_none());
    a.send(b"still here\r\n");
    b.expect("<ann> still here");
    b.send(b"/quit\r\n");
    c.expect(WELCOME);
}

/// A chat server with `workers` workers, each with room for many connections (so that its
/// idle members may park: a worker at its cap parks nothing).
fn start_roomy(workers: usize) -> (Oxicorn, SocketAddr) {
    let w = workers.to_string();
    let s = Oxicorn::start(&[
        "chat",
        "-w",
        &w,
        "--worker-connections",
        "100",
        "-b",
        "127.0.0.1:0",
        "--log-level",
        "debug",
        "--graceful-timeout",
        "30",
    ]);
    s.wait_ready(1, workers);
    hub_pid(&s);
    let addr = s.tcp_addr();
    (s, addr)
}

/// How many members the workers' debug log says parked since `mark`.
fn parked_since(s: &Oxicorn, mark: usize) -> usize {
    s.lines()
        .iter()
        .skip(mark)
        .filter(|l| l.contains("chat member parked"))
        .count()
}

/// Issue 13: a joined member idle for a while parks (its task ends; its socket and its room
/// entry wait). Room output resumes it (through the room's wake-up), and so does its own
/// input, its `/who`, and its peer closing the socket (the others see it leave); nothing is
/// lost or repeated.
#[test]
fn a_parked_member_resumes_for_room_output_and_for_its_own_input() {
    let (s, addr) = start_roomy(1);
    let mark = s.mark();
    let (mut a, _) = join(&s, addr, "a");
    let (mut b, _) = join(&s, addr, "b");
    a.expect("* b joined");
    let (mut c, _) = join(&s, addr, "c");
    a.expect("* c joined");
    b.expect("* c joined");
    // Idle well past the moment they park (`service::park::PARK_AFTER`, 1 s).
    assert!(
        eventually(SOON, || parked_since(&s, mark) >= 3),
        "log:\n{}",
        s.lines().join("\n")
    );

    // b's own input resumes b; its line resumes a and c through the room.
    b.send(b"hi from b\r\n");
    a.expect("<b> hi from b");
    c.expect("<b> hi from b");
    b.expect_quiet(Duration::from_millis(200));
    a.send(b"/who\r\n");
    a.expect("* members (3): a, b, c");

    // Parked again, several times over: every line, once, in order.
    let mark = s.mark();
    assert!(eventually(SOON, || parked_since(&s, mark) >= 3));
    for i in 0..5 {
        a.send(format!("line {i}\r\n").as_bytes());
    }
    for i in 0..5 {
        b.expect(&format!("<a> line {i}"));
        c.expect(&format!("<a> line {i}"));
    }
    a.expect_quiet(Duration::from_millis(200));

    // A parked member whose client goes away leaves, and the others are told.
    let mark = s.mark();
    assert!(eventually(SOON, || parked_since(&s, mark) >= 3));
    drop(c);
    a.expect("* c left");
    b.expect("* c left");
    // Its name is free again.
    let (_c2, _) = join(&s, addr, "C");
    a.expect("* C joined");
    b.expect("* C joined");
    // And /quit from a parked member.
    let mark = s.mark();
    assert!(eventually(SOON, || parked_since(&s, mark) >= 2));
    b.send(b"/quit\n");
    b.expect("* bye");
    b.read_to_close();
    a.expect("* b left");
}

/// A graceful stop reaches parked members too: each is told, as a member in its task is, and
/// nothing holds the worker until the graceful timeout.
#[test]
fn a_graceful_stop_tells_parked_members() {
    let (mut s, addr) = start_roomy(1);
    let mark = s.mark();
    let (mut a, _) = join(&s, addr, "a");
    let (mut b, _) = join(&s, addr, "b");
    a.expect("* b joined");
    assert!(eventually(SOON, || parked_since(&s, mark) >= 2));
    term_tells_members_to_reconnect(&mut s, [&mut a, &mut b]);
}

/// Sends TERM and checks that every member is told to reconnect before its connection closes,
/// and that the arbiter exits cleanly within 10 s (it does not wait for a graceful timeout).
fn term_tells_members_to_reconnect(s: &mut Oxicorn, members: [&mut LineClient; 2]) {
    let asked = std::time::Instant::now();
    s.signal(Signal::SIGTERM);
    for m in members {
        let rest = String::from_utf8_lossy(&m.read_to_close()).into_owned();
        assert!(
            rest.ends_with("* the server is restarting or stopping; please reconnect\r\n"),
            "{rest:?}"
        );
    }
    let status = s.wait_exit(SOON).expect("the arbiter exits");
    assert!(status.success());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}
