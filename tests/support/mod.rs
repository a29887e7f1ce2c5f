//! Test support: the real `oxicorn` binary in its own process group, a temp dir per test, and
//! waits on its log lines with deadlines (never fixed sleeps).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_oxicorn");

/// Generous bound for anything that should take a moment (boot, reap): CI machines are slow.
pub const SOON: Duration = Duration::from_secs(15);

/// Shared between the test and the thread that reads the server's stderr.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    /// Set when stderr reached EOF: every process holding it has exited.
    eof: std::sync::atomic::AtomicBool,
}

/// A running `oxicorn`, killed with its whole process group on drop.
pub struct Oxicorn {
    child: Child,
    /// The arbiter's pid (also its process group).
    pub pid: i32,
    log: Arc<Log>,
    /// A temp dir for this test (socket files, pid files, configs); the server's cwd.
    pub dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

impl Oxicorn {
    /// Starts `oxicorn ARGS` in a fresh temp dir.
    pub fn start(args: &[&str]) -> Oxicorn {
        Self::start_with(tempfile::tempdir().expect("temp dir"), args, &[])
    }

    /// Starts `oxicorn ARGS` in `dir`, with extra environment variables.
    pub fn start_with(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Oxicorn {
        Self::start_program(Path::new(BIN), dir, args, env)
    }

    /// Starts `program ARGS` (a copy of the binary elsewhere, for upgrade tests) in `dir`.
    pub fn start_program(
        program: &Path,
        dir: tempfile::TempDir,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Oxicorn {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("OXICORN_TEST_BOOT_FAILURE")
            .env_remove("OXICORN_TEST_BOOT_HANG")
            // CI runs as root; the tests are about everything but the --user policy
            // (tests/identity.rs tests that).
            .env("OXICORN_ALLOW_ROOT", "true")
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn oxicorn");
        let pid = child.id() as i32;
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("OXICORN_TEST_ECHO_LOG").is_some() {
                    eprintln!("[{pid}] {line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
            sink.eof.store(true, std::sync::atomic::Ordering::SeqCst);
            let _guard = sink.lines.lock().unwrap();
            sink.changed.notify_all();
        });
        Oxicorn {
            child,
            pid,
            log,
            dir,
            exited: None,
        }
    }

    /// A path inside the test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// How many lines have been logged so far: a mark for [`Oxicorn::wait_for_lines_after`].
    pub fn mark(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    /// Waits until `count` lines after `mark` contain `pattern`; returns them.
    ///
    /// # Panics
    /// When `within` passes first, showing the whole log.
    pub fn wait_for_lines_after(
        &self,
        mark: usize,
        pattern: &str,
        count: usize,
        within: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            let found: Vec<String> = lines
                .iter()
                .skip(mark)
                .filter(|l| l.contains(pattern))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out after {within:?} waiting for {count} line(s) with {pattern:?}; log:\n{}",
                    lines.join("\n")
                );
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Waits for the first line containing `pattern` (from the start of the log).
    pub fn wait_for_line(&self, pattern: &str) -> String {
        self.wait_for_lines_after(0, pattern, 1, SOON).remove(0)
    }

    /// Waits for `count` lines containing `pattern` (from the start of the log).
    pub fn wait_for_lines(&self, pattern: &str, count: usize) -> Vec<String> {
        self.wait_for_lines_after(0, pattern, count, SOON)
    }

    /// The addresses in the "listening on" lines, in order.
    pub fn listening(&self, count: usize) -> Vec<String> {
        self.wait_for_lines("listening on ", count)
            .iter()
            .map(|l| l.split("listening on ").nth(1).unwrap().trim().to_string())
            .collect()
    }

    /// The first TCP address the server listens on.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.listening(1)
            .iter()
            .find_map(|a| a.parse().ok())
            .expect("a TCP listener")
    }

    /// Waits for the server to be up: every listener and `workers` booted workers.
    pub fn wait_ready(&self, listeners: usize, workers: usize) -> Vec<String> {
        self.wait_for_lines(" booted", workers);
        self.listening(listeners)
    }

    /// Sends a signal to the arbiter.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig).expect("signal the arbiter");
    }

    /// Waits for the arbiter to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                // Let the reader thread take in the last lines (workers may still hold the
                // pipe open for a moment, so bounded).
                let until = Instant::now() + Duration::from_secs(3);
                let mut lines = self.log.lines.lock().unwrap();
                while !self.log.eof.load(std::sync::atomic::Ordering::SeqCst) {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    lines = self.log.changed.wait_timeout(lines, until - now).unwrap().0;
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The arbiter's live child processes (workers), from /proc.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid)
    }

    /// Waits until the arbiter has exactly `n` live children; returns them.
    pub fn wait_children(&self, n: usize, within: Duration) -> Vec<i32> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.children();
            if c.len() == n {
                return c;
            }
            if Instant::now() >= deadline {
                panic!(
                    "expected {n} workers, have {c:?}; log:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pids of workers announced as booted in the log.
    pub fn booted_pids(&self) -> Vec<i32> {
        self.lines()
            .iter()
            .filter(|l| l.contains(" booted"))
            .filter_map(|l| l.split("worker ").nth(1)?.split(' ').next()?.parse().ok())
            .collect()
    }
}

impl Drop for Oxicorn {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Workers orphaned by a test that killed the arbiter share its group.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }
}

/// (pid, state, ppid) of every process, from /proc/*/stat.
pub fn processes() -> Vec<(i32, char, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may contain spaces: parse after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, state, ppid));
    }
    out
}

/// Live (not zombie) children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = processes()
        .into_iter()
        .filter(|&(_, state, ppid)| ppid == pid && state != 'Z')
        .map(|(p, _, _)| p)
        .collect();
    v.sort_unstable();
    v
}

/// Zombie children of `pid`.
pub fn zombies_of(pid: i32) -> Vec<i32> {
    processes()
        .into_iter()
        .filter(|&(_, state, ppid)| ppid == pid && state == 'Z')
        .map(|(p, _, _)| p)
        .collect()
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `cond` until it holds or `within` passes.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connected client with read/write timeouts, over TCP or a Unix socket.
pub enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Client {
    /// Connects to an address as printed by "listening on" (`127.0.0.1:1`, `[::1]:1`,
    /// `unix:/path`).
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let c = if let Some(path) = addr.strip_prefix("unix:") {
            Client::Unix(UnixStream::connect(path)?)
        } else {
            let sa: SocketAddr = addr.parse().expect("socket address");
            Client::Tcp(TcpStream::connect_timeout(&sa, Duration::from_secs(5))?)
        };
        c.set_timeout(Some(Duration::from_secs(5)));
        Ok(c)
    }

    pub fn set_timeout(&self, t: Option<Duration>) {
        match self {
            Client::Tcp(s) => {
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
            }
            Client::Unix(s) => {
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
            }
        }
    }

    /// Sends `data` and reads back exactly as many bytes.
    pub fn echo(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        self.write_all(data)?;
        let mut back = vec![0u8; data.len()];
        self.read_exact(&mut back)?;
        Ok(back)
    }

    pub fn shutdown_write(&self) {
        let _ = match self {
            Client::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Client::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Client::Tcp(s) => s.read(buf),
            Client::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Client::Tcp(s) => s.write(buf),
            Client::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One full echo exchange on a new connection: connect, send, read back, half-close, EOF.
pub fn echo_once(addr: &str, payload: &[u8]) -> std::io::Result<()> {
    let mut c = Client::connect(addr)?;
    let back = c.echo(payload)?;
    if back != payload {
        return Err(std::io::Error::other("echo mismatch"));
    }
    c.shutdown_write();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(std::io::Error::other("bytes after the echo"));
    }
    Ok(())
}

/// Whether `tool` runs (`tool --version`): tests that need an outside program (curl,
/// valgrind) are skipped where it is not installed.
pub fn installed(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
}

/// Writes a config file into `dir`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Whether `sig` is pending (sent, not yet delivered) for `pid`, from the `SigPnd` (thread)
/// and `ShdPnd` (process) masks of /proc/PID/status.
pub fn signal_pending(pid: i32, sig: Signal) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let bit = 1u64 << (sig as i32 - 1);
    status
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .any(|mask| mask & bit != 0)
}

/// Sends `sig` to `pid` and returns once the kernel has delivered it (it is no longer
/// pending), without waiting for the process to act on it. Standard signals do not queue: one
/// sent while the same signal is still pending is merged into it (signal(7)), so this is as
/// fast as distinct signals can be sent.
pub fn send_delivered(pid: i32, sig: Signal) {
    kill(Pid::from_raw(pid), sig).expect("send the signal");
    let deadline = Instant::now() + Duration::from_secs(5);
    while signal_pending(pid, sig) {
        assert!(Instant::now() < deadline, "{sig} stayed pending for {pid}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The process title `ps` shows for `pid`: its command line up to the first NUL.
pub fn process_title(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let first = raw.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(first).into_owned()
}

/// Sockets process `pid` holds open (its `/proc/PID/fd` entries that are sockets); 0 when the
/// process is gone.
pub fn sockets_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// What `top` shows for `pid` (`/proc/PID/comm`).
pub fn process_comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}
