//! oxicorn as a person at a terminal meets it (issue 11, "The CLI's first five minutes"): the
//! static job shows each request, says how to stop, lists the machine's addresses when bound
//! to all interfaces, colours its levels only for a terminal, and Ctrl-C stops chat without
//! any warning. A real terminal: tmux (installed by `.ci/run`; the tests skip, saying so,
//! where it is missing).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// A tmux server of our own (its own socket), killed on drop with the oxicorn it ran.
struct Terminal {
    socket: String,
    arbiter: Option<i32>,
}

impl Terminal {
    /// Runs `command` in a fresh 200x50 terminal, or `None` when tmux is missing.
    fn run(name: &str, command: &str) -> Option<Terminal> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("skipped: tmux is not installed");
            return None;
        }
        let socket = format!("oxicorn-test-{name}-{}", std::process::id());
        let ok = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-x", "200", "-y", "50"])
            // CI runs as root; the --user policy has its own tests (tests/identity.rs).
            .arg(format!(
                "export OXICORN_ALLOW_ROOT=true; {command}; echo EXIT=$?; sleep 30"
            ))
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux did not start");
        Some(Terminal {
            socket,
            arbiter: None,
        })
    }

    /// The screen, with colour escapes when `escapes`.
    fn screen(&self, escapes: bool) -> String {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "capture-pane", "-p", "-J"]);
        if escapes {
            cmd.arg("-e");
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
    }

    /// Waits until the screen shows `text`; returns the screen.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + SOON;
        loop {
            let screen = self.screen(false);
            if self.arbiter.is_none()
                && let Some(pid) = screen
                    .split(" arbiter ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|p| p.parse().ok())
            {
                self.arbiter = Some(pid);
            }
            if screen.contains(text) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {text:?} on:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn keys(&self, keys: &str) {
        Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", keys])
            .status()
            .unwrap();
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        // tmux would send HUP (a reload, to oxicorn): kill the arbiter ourselves; its
        // children follow it (parent-death signal).
        if let Some(pid) = self.arbiter {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn the_static_job_at_a_terminal_shows_requests_the_url_and_how_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi\n").unwrap();
    let Some(mut t) = Terminal::run(
        "static",
        &format!("cd {} && {BIN} -b 0.0.0.0:0 -w 1", dir.path().display()),
    ) else {
        return;
    };
    let screen = t.wait_for("booted");
    assert!(screen.contains("press Ctrl-C to stop"), "{screen}");
    let port: u16 = screen
        .split("listening on 0.0.0.0:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("a port");
    assert!(
        screen.contains(&format!("reachable at http://127.0.0.1:{port}")),
        "{screen}"
    );
    // Levels are coloured for a terminal.
    assert!(t.screen(true).contains("\x1b["), "no colour");
    // Each request is shown, as python3 -m http.server does.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write;
    c.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n").unwrap();
    t.wait_for("\"GET /hello.txt HTTP/1.0\" 200");
    t.keys("C-c");
    let screen = t.wait_for("EXIT=0");
    assert!(screen.contains("shutdown complete"), "{screen}");
}

#[test]
fn no_color_turns_the_colour_off() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut t) = Terminal::run(
        "nocolor",
        &format!(
            "cd {} && NO_COLOR=1 {BIN} -b 127.0.0.1:0 -w 1",
            dir.path().display()
        ),
    ) else {
        return;
    };
    t.wait_for("booted");
    assert!(!t.screen(true).contains("\x1b[3"), "colour with NO_COLOR");
    t.keys("C-c");
    t.wait_for("EXIT=0");
}

#[test]
fn ctrl_c_stops_chat_in_order_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut t) = Terminal::run(
        "chat",
        &format!(
            "cd {} && {BIN} chat -b 127.0.0.1:0 -w 2",
            dir.path().display()
        ),
    ) else {
        return;
    };
    t.wait_for("hub");
    t.wait_for("(slot 2) booted");
    t.keys("C-c");
    let screen = t.wait_for("EXIT=0");
    assert!(screen.contains("shutdown complete"), "{screen}");
    assert!(
        !screen.contains("WARN") && !screen.contains("ERROR"),
        "{screen}"
    );
}
