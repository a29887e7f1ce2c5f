//! oxicorn under valgrind, as a developer runs it to find a leak or count instructions
//! (`benches/app_instructions.sh`): the arbiter and its worker start, answer and stop.
//!
//! Two things broke that: rustix's own vDSO lookup (the monotonic clock of the scoreboard)
//! faulted in the arbiter, since valgrind gives its guest no vDSO; and the process title,
//! written over the argument and environment area, overwrote what valgrind reads its own
//! options from, so the worker exited at once ("Bad option: --log-file="). And valgrind has no
//! `openat2`: the static service answered every file 500 where it gets `ENOSYS` (as on Linux
//! before 5.6 or under an old seccomp profile); it now opens with `openat` and the same
//! below-the-root check, which this test holds to (a symlink out of the root is still 403).
//! Run where valgrind is installed (`.ci/run` installs it).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{BIN, Oxicorn};

#[test]
fn a_worker_serves_and_the_pool_stops_cleanly_under_valgrind() {
    if !support::installed("valgrind") {
        eprintln!("valgrind not installed; skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    support::write_file(dir.path(), "hello.txt", "hello under valgrind\n");
    let outside = tempfile::tempdir().expect("temp dir");
    let secret = support::write_file(outside.path(), "secret.txt", "not for clients\n");
    std::os::unix::fs::symlink(&secret, dir.path().join("out.txt")).unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.path().join("in.txt")).unwrap();
    let log = dir.path().join("valgrind.log");
    let log_arg = format!("--log-file={}", log.display());
    let mut server = Oxicorn::start_program(
        Path::new("valgrind"),
        dir,
        &[
            "--tool=none",
            &log_arg,
            BIN,
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        &[],
    );
    server.wait_ready(1, 1);
    let addr = server.tcp_addr();
    let get = |path: &str| {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).expect("the answer");
        got
    };
    for path in ["/hello.txt", "/in.txt"] {
        let got = get(path);
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {got}");
        assert!(got.ends_with("hello under valgrind\n"), "{path}: {got}");
    }
    let got = get("/out.txt");
    assert!(
        got.starts_with("HTTP/1.1 403 "),
        "a symlink out of the root: {got}"
    );
    assert!(!got.contains("not for clients"), "{got}");
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("stopped within a minute");
    assert!(status.success(), "{status:?}");
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !report.contains("Bad option") && !report.contains("SIGSEGV"),
        "{report}"
    );
    assert!(
        server
            .lines()
            .iter()
            .all(|l| !l.contains("exited with code")),
        "no worker died: {:?}",
        server.lines()
    );
}
