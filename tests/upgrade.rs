//! USR2 binary upgrade (issue 10): the arbiter re-executes the binary now at the path it was
//! started from, keeping its PID, listeners and children; a binary that cannot run, refuses
//! the configuration, or whose workers never get ready is rolled back, with one log line
//! saying why, and the service never stops. Each test copies the test binary to a temp path,
//! starts it from there and replaces the file, as a deploy would.

mod lineclient;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

/// Replaces `path` the way a deploy does: write a new file beside it, rename it over.
fn deploy(path: &Path, contents: &[u8], executable: bool) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A temp dir holding a copy of the binary under test; returns both.
fn copied_binary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("oxicorn");
    deploy(&bin, &std::fs::read(BIN).unwrap(), true);
    (dir, bin)
}

/// A client loop recording every failed echo (refused, reset, wrong answer) until stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Clients {
    fn start(addr: String) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let t = Instant::now();
                while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(60) {
                    match echo_once(&addr, b"upgrade?") {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        };
        let c = Clients { stop, done, thread };
        c.more(10);
        c
    }

    /// Waits until `n` more echoes succeed.
    fn more(&self, n: usize) {
        let before = self.done.load(Ordering::Relaxed);
        assert!(
            eventually(SOON, || self.done.load(Ordering::Relaxed) >= before + n),
            "the service stopped answering"
        );
    }

    fn finish(self) -> Vec<String> {
        self.more(10);
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn pidfile_pid(s: &Oxicorn) -> i32 {
    std::fs::read_to_string(s.path("oxicorn.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn start(dir: tempfile::TempDir, bin: &Path, env: &[(&str, &str)]) -> Oxicorn {
    let s = Oxicorn::start_program(
        bin,
        dir,
        &[
            "echo",
            "-w",
            "2",
            "-b",
            "127.0.0.1:0",
            "--pid",
            "oxicorn.pid",
        ],
        env,
    );
    s.wait_ready(1, 2);
    s
}

#[test]
fn usr2_to_a_new_binary_keeps_the_pid_and_its_workers_serve() {
    let (dir, bin) = copied_binary();
    let s = start(dir, &bin, &[]);
    let old = s.wait_children(2, SOON);
    let clients = Clients::start(s.tcp_addr().to_string());

    // A deploy replaces the file (a new inode), then USR2.
    deploy(&bin, &std::fs::read(BIN).unwrap(), true);
    let mark = s.mark();
    s.signal(Signal::SIGUSR2);
    let line = &s.wait_for_lines_after(mark, "upgrade: oxicorn ", 1, SOON)[0];
    assert!(
        line.contains(" -> oxicorn ") && line.contains("(commit "),
        "{line}"
    );
    s.wait_for_lines_after(mark, "upgrade complete", 1, SOON);
    let new = s.wait_children(2, SOON);
    let failures = clients.finish();

    assert!(
        failures.is_empty(),
        "failed during the upgrade: {failures:?}"
    );
    assert!(alive(s.pid));
    assert_eq!(
        pidfile_pid(&s),
        s.pid,
        "the pid file still names the arbiter"
    );
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} / {new:?}");
    for pid in new {
        assert_eq!(process_title(pid).split(" [").nth(1), Some("gen 2]"));
    }
    // The running image is the deployed file, not the one it replaced.
    let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid)).unwrap();
    assert_eq!(exe, bin, "{}", exe.display());
    // And it still stops cleanly.
    s.signal(Signal::SIGTERM);
    let mut s = s;
    assert_eq!(s.wait_exit(SOON).and_then(|st| st.code()), Some(0));
    assert!(!s.path("oxicorn.pid").exists());
}

/// Runs a USR2 against a deployed `script` that must be refused; returns the refusal line.
fn refused_upgrade(script: &str) -> String {
    let (dir, bin) = copied_binary();
    let real = dir.path().join("oxicorn.real");
    std::fs::copy(&bin, &real).unwrap();
    let s = start(dir, &bin, &[]);
    let before = s.wait_children(2, SOON);
    let clients = Clients::start(s.tcp_addr().to_string());
    deploy(
        &bin,
        script.replace("REAL", real.to_str().unwrap()).as_bytes(),
        true,
    );
    let mark = s.mark();
    s.signal(Signal::SIGUSR2);
    let line = s.wait_for_lines_after(mark, "upgrade refused", 1, SOON)[0].clone();
    assert!(line.contains("still running oxicorn"), "{line}");
    let failures = clients.finish();
    assert!(
        failures.is_empty(),
        "failed during the upgrade: {failures:?}"
    );
    assert_eq!(
        s.wait_children(2, SOON),
        before,
        "the workers were not touched"
    );
    assert_eq!(pidfile_pid(&s), s.pid);
    assert!(
        !s.lines()[mark..]
            .iter()
            .any(|l| l.contains("upgrade: executing")),
        "a refused binary is never executed in place"
    );
    line
}

#[test]
fn usr2_to_a_binary_that_exits_at_once_is_refused_and_serving_goes_on() {
    let line = refused_upgrade("#!/bin/sh\nexit 1\n");
    assert!(line.contains("exit code 1"), "{line}");
}

#[test]
fn usr2_to_a_binary_that_refuses_the_config_is_refused_and_serving_goes_on() {
    let line = refused_upgrade("#!/bin/sh\nexec REAL --no-such-flag \"$@\"\n");
    assert!(line.contains("exit code 2"), "{line}");
    assert!(line.contains("--no-such-flag"), "the log says why: {line}");
}

/// A program that exits 0 on anything (or an oxicorn from before binary upgrades) passes a
/// bare `--check-config`, but executed in place it would not take the handover and the server
/// would be gone: it must not answer the handover probe, and is refused.
#[test]
fn usr2_to_a_binary_that_cannot_take_over_in_place_is_refused() {
    let line = refused_upgrade("#!/bin/sh\nexit 0\n");
    assert!(line.contains("cannot take over in place"), "{line}");
}

#[test]
fn usr2_whose_new_workers_never_get_ready_rolls_back_to_the_old_image() {
    let (dir, bin) = copied_binary();
    let trigger = dir.path().join("fail-boot");
    let s = start(
        dir,
        &bin,
        &[("OXICORN_TEST_BOOT_FAILURE", trigger.to_str().unwrap())],
    );
    let before = s.wait_children(2, SOON);
    let clients = Clients::start(s.tcp_addr().to_string());
    deploy(&bin, &std::fs::read(BIN).unwrap(), true);
    // The new image starts, but none of its workers can boot.
    std::fs::write(&trigger, "").unwrap();
    usr2_rolls_back(&s, "did not boot", &trigger, clients, &before);
    // The old code runs again, from the file the deploy replaced.
    let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid)).unwrap();
    assert!(exe.to_string_lossy().ends_with("(deleted)"), "{exe:?}");
    // And a later upgrade, to a binary that boots, goes through.
    let mark = s.mark();
    s.signal(Signal::SIGUSR2);
    s.wait_for_lines_after(mark, "upgrade complete", 1, SOON);
    echo_once(&s.tcp_addr().to_string(), b"upgraded").unwrap();
}

#[test]
fn usr2_whose_new_worker_hangs_at_boot_rolls_back_after_the_boot_timeout() {
    let (dir, bin) = copied_binary();
    let hang = dir.path().join("hang-boot");
    let s = Oxicorn::start_program(
        &bin,
        dir,
        &[
            "echo",
            "-w",
            "2",
            "--boot-timeout",
            "1",
            "-b",
            "127.0.0.1:0",
            "--pid",
            "oxicorn.pid",
        ],
        &[("OXICORN_TEST_BOOT_HANG", hang.to_str().unwrap())],
    );
    s.wait_ready(1, 2);
    let before = s.wait_children(2, SOON);
    let clients = Clients::start(s.tcp_addr().to_string());
    std::fs::write(&hang, "").unwrap();
    usr2_rolls_back(&s, "--boot-timeout (1s)", &hang, clients, &before);
}

/// The arbiter stays responsive during an upgrade: TERM while the new image's worker hangs
/// at boot stops everything cleanly (old workers, the hung one), exit 0, pid file removed.
#[test]
fn term_in_the_middle_of_an_upgrade_stops_cleanly() {
    let (dir, bin) = copied_binary();
    let hang = dir.path().join("hang-boot");
    let mut s = Oxicorn::start_program(
        &bin,
        dir,
        &[
            "echo",
            "-w",
            "2",
            "-b",
            "127.0.0.1:0",
            "--pid",
            "oxicorn.pid",
        ],
        &[("OXICORN_TEST_BOOT_HANG", hang.to_str().unwrap())],
    );
    s.wait_ready(1, 2);
    std::fs::write(&hang, "").unwrap();
    let mark = s.mark();
    s.signal(Signal::SIGUSR2);
    s.wait_for_lines_after(mark, "upgrade: oxicorn ", 1, SOON);
    s.wait_children(3, SOON);
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(SOON).expect("stops");
    assert_eq!(status.code(), Some(0), "{}", s.lines().join("\n"));
    assert!(s.lines().iter().any(|l| l.contains("shutdown complete")));
    assert!(!s.path("oxicorn.pid").exists());
}

/// Issue 10: "State that must survive: ... the bus (old and new workers reach the same hub, or
/// the hub is handed over)". The hub is a child like the workers: the new image adopts it, and
/// its workers join the same room.
#[test]
fn the_chat_hub_is_kept_across_an_upgrade() {
    let (s, addr) = lineclient::start_line_service("chat", 2, &[]);
    let hub = lineclient::hub_pid(&s);
    let mark = s.mark();
    s.signal(Signal::SIGUSR2);
    s.wait_for_lines_after(mark, "upgrade complete", 1, SOON);
    s.wait_children(3, SOON); // two new workers and the same hub
    assert!(alive(hub));
    assert!(
        !s.lines()[mark..]
            .iter()
            .any(|l| l.contains("INFO hub ") && l.contains(" starting")),
        "no new hub"
    );
    // Two members on the new image's two workers share the room through the kept hub.
    let mut alice = lineclient::LineClient::connect(addr);
    alice.expect("* welcome to oxicorn chat; what is your name?");
    alice.send(b"alice\r\n");
    alice.expect_prefix("* you joined as alice");
    let mut bob = lineclient::LineClient::connect(addr);
    bob.expect("* welcome to oxicorn chat; what is your name?");
    bob.send(b"bob\r\n");
    bob.expect_prefix("* you joined as bob");
    assert_ne!(
        lineclient::worker_of(&s, &alice),
        lineclient::worker_of(&s, &bob)
    );
    alice.expect("* bob joined");
    alice.send(b"hello across the upgrade\r\n");
    bob.expect("<alice> hello across the upgrade");
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("oxicorn {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

/// Sends USR2 to a server whose new workers cannot boot while `trigger` exists, and checks the
/// rollback: its log line gives `why`, no client of `clients` failed, the old generation of two
/// workers (`before`) stayed, and the pid file still names the arbiter. Removes `trigger`.
fn usr2_rolls_back(
    s: &Oxicorn,
    why: &str,
    trigger: &std::path::Path,
    clients: Clients,
    before: &[i32],
) {
    let mark = s.mark();
    s.signal(Signal::SIGUSR2);
    let line = &s.wait_for_lines_after(mark, "upgrade rolled back", 1, SOON)[0];
    assert!(line.contains(why), "{line}");
    std::fs::remove_file(trigger).unwrap();
    let failures = clients.finish();
    assert!(
        failures.is_empty(),
        "failed during the rollback: {failures:?}"
    );
    assert_eq!(
        s.wait_children(2, SOON),
        before,
        "the old generation stayed"
    );
    assert_eq!(pidfile_pid(s), s.pid);
}
