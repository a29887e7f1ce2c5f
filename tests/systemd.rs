//! systemd integration (issue 10): the `Type=notify` protocol on a NOTIFY_SOCKET the test
//! binds, and socket activation with LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES set by the test.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use support::*;

/// Reads notification datagrams until one contains `want` (or `within` passes); returns
/// every one read.
fn read_until(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                return got;
            }
        }
    }
    panic!("no {want} within {within:?}; got {got:?}");
}

#[test]
fn notify_socket_gets_mainpid_ready_reloading_ready_upgrade_and_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut s = Oxicorn::start_with(
        dir,
        &["echo", "-w", "2", "-b", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );

    let start = read_until(&sock, "READY=1", SOON);
    let all = start.join("\n");
    assert!(
        start[0].contains(&format!("MAINPID={}", s.pid)),
        "MAINPID first: {start:?}"
    );
    // READY only once both workers are ready: the status sent with it counts them (the log
    // reader may not have the "booted" lines yet when the datagram arrives).
    assert!(
        all.contains("STATUS=2 workers ready, generation 1"),
        "{all}"
    );

    s.signal(Signal::SIGHUP);
    let reload = read_until(&sock, "READY=1", SOON);
    let first = &reload[0];
    assert!(first.lines().any(|l| l == "RELOADING=1"), "{reload:?}");
    assert!(
        first.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reload:?}"
    );
    let last = reload.last().unwrap();
    assert!(
        last.contains("STATUS=2 workers ready, generation 2"),
        "{reload:?}"
    );

    // An upgrade keeps the PID: systemd is told READY=1 again, and no other MAINPID.
    s.signal(Signal::SIGUSR2);
    let upgrade = read_until(&sock, "READY=1", SOON);
    let all = upgrade.join("\n");
    assert!(all.contains("STATUS=upgrading to oxicorn"), "{all}");
    assert!(
        all.contains("STATUS=2 workers ready, generation 3"),
        "{all}"
    );
    assert!(
        all.lines()
            .filter(|l| l.starts_with("MAINPID="))
            .all(|l| l == format!("MAINPID={}", s.pid)),
        "{all}"
    );

    s.signal(Signal::SIGTERM);
    read_until(&sock, "STOPPING=1", SOON);
    assert_eq!(s.wait_exit(SOON).and_then(|st| st.code()), Some(0));
}

/// Starts `oxicorn ARGS` the way systemd does for socket activation: `listener` as fd 3,
/// LISTEN_FDS=1, LISTEN_FDNAMES=`name`, and LISTEN_PID set to the process's own pid (by a
/// shell that `exec`s the binary, so `$$` is that pid).
fn activated(
    listener: &std::net::TcpListener,
    name: &str,
    args: &[&str],
    dir: &std::path::Path,
) -> std::process::Child {
    let raw = listener.as_raw_fd();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        // CI runs as root (main's --user policy refuses root without this; see tests/support).
        .env("OXICORN_ALLOW_ROOT", "true")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", name)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    // SAFETY: dup2 and fcntl are async-signal-safe; they run in the child between fork and
    // exec (as in tests/arbiter.rs `an_inherited_fd_is_served`).
    unsafe {
        cmd.pre_exec(move || {
            let ok = if raw == 3 {
                nix::libc::fcntl(3, nix::libc::F_SETFD, 0) >= 0
            } else {
                nix::libc::dup2(raw, 3) >= 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn socket_activation_serves_the_socket_systemd_passed_by_name() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = activated(
        &listener,
        "web",
        &["echo", "-w", "1", "-b", "systemd:web"],
        dir.path(),
    );
    drop(listener);
    let pid = child.id() as i32;
    let ok = eventually(SOON, || echo_once(&addr, b"activated").is_ok());
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGTERM);
    let _ = child.wait();
    assert!(ok, "no echo on the activated socket");
}

#[test]
fn socket_activation_with_an_unknown_name_says_which_were_passed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let child = activated(
        &listener,
        "web",
        &["echo", "-w", "1", "-b", "systemd:api"],
        dir.path(),
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("systemd:api") && err.contains("systemd passed web"),
        "{err}"
    );
}
