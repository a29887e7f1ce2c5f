//! USR2: the binary upgrade, with a stable PID and an automatic rollback.
//!
//! The arbiter re-executes itself: `execve` keeps the PID (so systemd, the pid file and every
//! worker's `getppid()` stay right), the parent/child links (workers forked by the old image
//! are reaped by the new one), every descriptor without close-on-exec, and the signal mask
//! (FACTS.md §2.4, "PID-stable upgrade by re-executing the arbiter"). What the new image needs
//! travels in a [`Handover`], in the environment variable [`HANDOVER_ENV`]: the listeners, the
//! scoreboard memfd, the notification pipe, the child table, the generation counters, the pid
//! file, the bus address (the hub keeps running: old and new workers share one room).
//!
//! The steps, and where each failure leads:
//!
//! 1. **Check** (old image, not replacing anything): the binary now at the path the server
//!    was started from runs as a child with the same command line plus `--check-config`, and
//!    must answer the probe ([`HANDOVER_MARKER`]) that says it can read this [`Handover`]. A
//!    binary that cannot run, exits non-zero, refuses the configuration, or cannot take the
//!    handover is never executed; one log line says why. The arbiter keeps serving while the check runs (it is reaped
//!    like any child).
//! 2. **Exec** (old image): handled signals are blocked first (their dispositions reset at
//!    `execve`, and HUP's default kills; a signal sent in the window stays pending for the new
//!    image's handlers), the handed-over descriptors lose close-on-exec, `execve`. A failed
//!    `execve` returns: everything is restored and the old image goes on.
//! 3. **Roll** (new image): it validates the configuration again (a refusal rolls back), adopts
//!    the state, and rolls the workers to a new generation as a HUP does. When the last old
//!    worker is retired the upgrade is complete.
//! 4. **Rollback** (new image): a configuration it refuses, a new bind it cannot make, or new
//!    workers that do not get ready (`--boot-timeout`, or repeated boot failures) re-execute
//!    the old image from a descriptor opened on it at its start (`Exe::image`: it runs even
//!    after a deploy replaced or removed its file), with the same state and the reason. The
//!    old image resumes as before the USR2 and logs the reason in one line.
//!
//! This module owns the handover format and the exec paths; the roll itself is the worker
//! table's (`workers::plan`).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use serde::{Deserialize, Serialize};

use super::Phase;
use super::children::{Before, Child, ChildKind, ChildState, Exit, KillReason};
use crate::net::BindAddr;
use crate::net::listener::{Listener, ListenerKind};

/// The environment variable carrying a [`Handover`] into the next image (hex of its postcard
/// encoding). Read and removed by [`take_handover`] before anything else runs.
pub const HANDOVER_ENV: &str = "OXICORN_UPGRADE";

/// Set for the pre-exec check: a binary that can take over in place answers its
/// `--check-config` with [`HANDOVER_MARKER`] on stderr ([`announce_handover`]).
pub const HANDOVER_PROBE_ENV: &str = "OXICORN_HANDOVER_PROBE";

/// What a binary able to receive this build's [`Handover`] prints on stderr when probed. The
/// format number changes with the handover's layout, so an old image never executes a binary
/// that would misread it, nor one that would not read it at all (a release from before binary
/// upgrades, a wrapper script that exits 0): either would bind the ports anew, fail, and take
/// the server down with it.
pub const HANDOVER_MARKER: &str = "oxicorn handover format 1";

/// For `main`: after a successful `--check-config`, tells a probing arbiter (the environment
/// has [`HANDOVER_PROBE_ENV`]) that this binary can take over from it.
pub fn announce_handover() {
    if std::env::var_os(HANDOVER_PROBE_ENV).is_some() {
        eprintln!("{HANDOVER_MARKER}");
    }
}

/// Environment variables dropped before an exec: socket activation's (systemd's `LISTEN_PID`
/// names this very process, so the new image would adopt descriptors 3.. again; the
/// listeners travel in the handover instead).
const DROPPED_ENV: [&str; 4] = [HANDOVER_ENV, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// The executable this arbiter runs, captured at its start.
#[derive(Debug)]
pub(super) struct Exe {
    /// The path it was started from: a deploy puts the new binary there, and USR2 runs it.
    pub path: PathBuf,
    /// The command line as given at the start, given again to the new image.
    pub args: Vec<OsString>,
    /// `O_PATH` on the image running now (`/proc/self/exe`), close-on-exec: executes this
    /// code again even after its file was replaced or deleted. Handed to the new image so it
    /// can roll back to it.
    pub image: OwnedFd,
}

impl Exe {
    /// Captures the running executable: `path` if the handover names it (an image started by
    /// an upgrade), else `/proc/self/exe` as read now.
    ///
    /// # Errors
    /// If `/proc/self/exe` cannot be read or opened (no `/proc`).
    pub(super) fn capture(path: Option<PathBuf>) -> io::Result<Exe> {
        let path = match path {
            Some(p) => p,
            None => std::env::current_exe()?,
        };
        let image = rustix::fs::open(
            "/proc/self/exe",
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        Ok(Exe {
            path,
            args: std::env::args_os().collect(),
            image,
        })
    }
}

/// What the next image is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Role {
    /// Take over as the upgraded server: validate, then roll the workers to a new generation.
    Upgrade,
    /// The upgrade failed: resume as the server that was running before it, and say why.
    Rollback {
        /// One line: why the new image gave up.
        reason: String,
    },
}

/// A listener as handed over: its descriptor number and what [`Listener`] knew of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedListener {
    fd: RawFd,
    addr: String,
    bound: String,
    local: String,
    unix: bool,
    created_file: Option<(PathBuf, u64, u64)>,
}

/// A row of the child table as handed over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedChild {
    pid: i32,
    slot: usize,
    /// `(generation, age)` of a worker; `None` for the hub.
    worker: Option<(u64, u64)>,
    /// 0 booting, 1 ready, 2 stopping by TERM, 3 stopping by QUIT, 4 killed.
    state: u8,
    request_limit: Option<u64>,
}

/// Everything an image hands to the next across `execve`. Descriptor numbers refer to
/// descriptors left open (close-on-exec cleared) by the image that wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handover {
    /// What the receiving image is to do.
    pub role: Role,
    /// The program of the image that wrote this, as log lines name it (`myapp 1.2.0`,
    /// [`crate::program::current`]; earlier images wrote oxicorn's bare version, read with
    /// [`crate::program::handed_over`]): the upgrade's log line names both.
    pub version: String,
    /// The path the server was started from (the next USR2 runs what is there then).
    pub exe_path: PathBuf,
    /// The image to roll back to (`O_PATH`): the old one, during an upgrade.
    pub rollback_image: Option<RawFd>,
    listeners: Vec<HandedListener>,
    scoreboard: RawFd,
    ready_rx: RawFd,
    ready_tx: RawFd,
    children: Vec<HandedChild>,
    /// The generation the receiving image runs as current (for an upgrade, the old one: the
    /// new image starts the next).
    pub generation: u64,
    /// The highest generation ever started.
    pub generations: u64,
    spawned: u64,
    /// The worker count in force.
    pub target: usize,
    /// The pid file written by the server, if any.
    pub pidfile: Option<PathBuf>,
    /// Where the hub listens.
    pub bus_address: PathBuf,
    hub_ever_started: bool,
    /// Whether systemd was told READY=1 already.
    pub notified_ready: bool,
}

/// Takes the [`Handover`] out of the environment, if this process was started by an upgrade
/// or its rollback. Call first thing in `main`, while the process has one thread.
///
/// # Errors
/// A message when the variable is there but cannot be decoded (an image of another layout:
/// the caller cannot roll back and must stop).
pub fn take_handover() -> Option<Result<Handover, String>> {
    let text = std::env::var_os(HANDOVER_ENV)?;
    // SAFETY: called at the top of `main`, before any thread exists, so nothing reads the
    // environment concurrently.
    unsafe { std::env::remove_var(HANDOVER_ENV) };
    Some(decode(text.as_bytes()))
}

fn decode(hex: &[u8]) -> Result<Handover, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("odd-length handover".into());
    }
    let bytes: Result<Vec<u8>, _> = hex
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or(())
        })
        .collect();
    let bytes = bytes.map_err(|()| "the handover is not hex".to_string())?;
    postcard::from_bytes(&bytes).map_err(|e| format!("cannot decode the handover: {e}"))
}

fn encode(h: &Handover) -> String {
    let bytes = postcard::to_allocvec(h).expect("a handover always serialises");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Handover {
    /// Gives up a new image that cannot run the server (its command line or configuration is
    /// refused) and re-executes the old one with this state and `reason`. Returns only if
    /// there is no old image to go back to or its `execve` failed; the caller must then exit.
    pub fn rollback(mut self, reason: String) -> io::Error {
        let Some(fd) = self.rollback_image else {
            return io::Error::other("no image to roll back to");
        };
        self.role = Role::Rollback { reason };
        self.version = crate::program::current().to_string();
        // The old image resumes its own generation; the roll never started.
        // SAFETY: the old image left this descriptor open for us (the handover says so), and
        // it stays open until the exec below replaces this process or fails.
        let image = unsafe { BorrowedFd::borrow_raw(fd) };
        let args: Vec<OsString> = std::env::args_os().collect();
        exec(Image::Fd(image), &args, &self)
    }

    /// The handed-over listeners, close-on-exec again.
    pub(super) fn take_listeners(&self) -> Vec<Listener> {
        self.listeners
            .iter()
            .filter_map(|l| {
                let fd = adopt_fd(l.fd)?;
                let addr: BindAddr = l.addr.parse().ok()?;
                let bound: BindAddr = l.bound.parse().unwrap_or_else(|_| addr.clone());
                let kind = if l.unix {
                    ListenerKind::Unix
                } else {
                    ListenerKind::Tcp
                };
                Some(Listener::from_parts(
                    addr,
                    bound,
                    l.local.clone(),
                    kind,
                    fd,
                    l.created_file.clone(),
                ))
            })
            .collect()
    }

    /// Whether the handed-over scoreboard has this build's layout (its size), checked before
    /// anything is adopted so a mismatch can still roll back with every descriptor intact.
    pub(super) fn scoreboard_fits(&self) -> bool {
        if self.scoreboard < 0 {
            return false;
        }
        // SAFETY: fstat on a number reads metadata only; an unopened number fails.
        let fd = unsafe { BorrowedFd::borrow_raw(self.scoreboard) };
        rustix::fs::fstat(fd).is_ok_and(|st| st.st_size as u64 == crate::scoreboard::BYTES)
    }

    /// The scoreboard memfd and the notification pipe's ends, close-on-exec again.
    pub(super) fn take_fds(&self) -> Option<(OwnedFd, OwnedFd, OwnedFd)> {
        Some((
            adopt_fd(self.scoreboard)?,
            adopt_fd(self.ready_rx)?,
            adopt_fd(self.ready_tx)?,
        ))
    }

    /// The old image's descriptor (during an upgrade), close-on-exec again.
    pub(super) fn take_rollback_image(&self) -> Option<OwnedFd> {
        self.rollback_image.and_then(adopt_fd)
    }

    /// The child table, as rows (their start time is now: only boot timeouts read it).
    pub(super) fn children(&self) -> Vec<Child> {
        self.children
            .iter()
            .map(|h| {
                let kind = match h.worker {
                    Some((generation, age)) => ChildKind::Worker { generation, age },
                    None => ChildKind::Hub,
                };
                let since = Instant::now();
                let state = match h.state {
                    0 => ChildState::Booting,
                    1 => ChildState::Ready,
                    2 => ChildState::Stopping {
                        signal: nix::sys::signal::Signal::SIGTERM,
                        since,
                    },
                    3 => ChildState::Stopping {
                        signal: nix::sys::signal::Signal::SIGQUIT,
                        since,
                    },
                    _ => ChildState::Killed {
                        reason: KillReason::StopTimeout,
                        before: Before::Stopping(nix::sys::signal::Signal::SIGTERM),
                    },
                };
                let mut c = Child::new(h.pid, h.slot, kind, state);
                c.request_limit = h.request_limit;
                c
            })
            .collect()
    }

    /// The spawn counter and whether a hub ever ran.
    pub(super) fn counters(&self) -> (u64, bool) {
        (self.spawned, self.hub_ever_started)
    }
}

/// Marks an inherited descriptor close-on-exec again and owns it; `None` if it is not open.
fn adopt_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 {
        return None;
    }
    // SAFETY: F_SETFD only changes a flag of the descriptor number; an unopened number fails.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
    // SAFETY: the previous image left this descriptor open for us (that is what the handover
    // says), and nothing else in this process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the arbiter knows, for [`Handover`]. Built by `Arbiter::handover` (mod.rs).
pub(super) struct State<'a> {
    pub role: Role,
    pub exe: &'a Exe,
    pub rollback_image: Option<BorrowedFd<'a>>,
    pub listeners: Vec<&'a Listener>,
    pub scoreboard: BorrowedFd<'a>,
    pub ready_rx: BorrowedFd<'a>,
    pub ready_tx: BorrowedFd<'a>,
    pub children: Vec<&'a Child>,
    pub generation: u64,
    pub generations: u64,
    pub spawned: u64,
    pub target: usize,
    pub pidfile: Option<PathBuf>,
    pub bus_address: PathBuf,
    pub hub_ever_started: bool,
    pub notified_ready: bool,
}

impl State<'_> {
    fn handover(&self) -> Handover {
        Handover {
            role: self.role.clone(),
            version: crate::program::current().to_string(),
            exe_path: self.exe.path.clone(),
            rollback_image: self.rollback_image.map(|fd| fd.as_raw_fd()),
            listeners: self
                .listeners
                .iter()
                .map(|l| HandedListener {
                    fd: l.fd.as_raw_fd(),
                    addr: l.addr.to_string(),
                    bound: l.bound.to_string(),
                    local: l.local.clone(),
                    unix: l.kind == ListenerKind::Unix,
                    created_file: l.created_file().cloned(),
                })
                .collect(),
            scoreboard: self.scoreboard.as_raw_fd(),
            ready_rx: self.ready_rx.as_raw_fd(),
            ready_tx: self.ready_tx.as_raw_fd(),
            children: self
                .children
                .iter()
                .map(|c| HandedChild {
                    pid: c.pid,
                    slot: c.slot,
                    worker: match c.kind {
                        ChildKind::Worker { generation, age } => Some((generation, age)),
                        ChildKind::Hub => None,
                    },
                    state: match c.state {
                        ChildState::Booting => 0,
                        ChildState::Ready => 1,
                        ChildState::Stopping {
                            signal: nix::sys::signal::Signal::SIGTERM,
                            ..
                        } => 2,
                        ChildState::Stopping { .. } => 3,
                        ChildState::Killed { .. } => 4,
                    },
                    request_limit: c.request_limit,
                })
                .collect(),
            generation: self.generation,
            generations: self.generations,
            spawned: self.spawned,
            target: self.target,
            pidfile: self.pidfile.clone(),
            bus_address: self.bus_address.clone(),
            hub_ever_started: self.hub_ever_started,
            notified_ready: self.notified_ready,
        }
    }

    /// Executes `image` with this state handed over. Returns only on failure, with every
    /// descriptor close-on-exec again and the signal mask restored: the caller goes on.
    pub(super) fn exec(&self, image: Image<'_>) -> io::Error {
        exec(image, &self.exe.args, &self.handover())
    }
}

/// The image to execute.
#[derive(Clone, Copy)]
pub(super) enum Image<'a> {
    /// The file at this path (an upgrade: whatever the deploy put there).
    Path(&'a std::path::Path),
    /// An open image (a rollback: the old code, whatever happened to its file).
    Fd(BorrowedFd<'a>),
}

fn exec(image: Image<'_>, args: &[OsString], handover: &Handover) -> io::Error {
    let mut fds: Vec<RawFd> = handover.listeners.iter().map(|l| l.fd).collect();
    fds.extend([handover.scoreboard, handover.ready_rx, handover.ready_tx]);
    fds.extend(handover.rollback_image);
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL in an argument"));
    let argv: Result<Vec<CString>, io::Error> = args.iter().map(|a| cstr(a.as_bytes())).collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !DROPPED_ENV.iter().any(|d| k == d))
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let argv = match argv {
        Ok(a) => a,
        Err(e) => return e,
    };
    env.push(CString::new(format!("{HANDOVER_ENV}={}", encode(handover))).expect("hex has no NUL"));
    for &fd in &fds {
        set_cloexec(fd, false);
    }
    // Blocked across the exec: the new image installs its handlers, then unblocks them, so a
    // signal sent in between is delivered to those handlers instead of killing the process.
    let blocked = super::signals::Blocked::all();
    let err = match image {
        Image::Path(path) => match cstr(path.as_os_str().as_bytes()) {
            Ok(p) => nix::unistd::execve(&p, &argv, &env).unwrap_err(),
            Err(e) => {
                blocked.restore();
                return e;
            }
        },
        Image::Fd(fd) => {
            nix::unistd::execveat(fd, c"", &argv, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH)
                .unwrap_err()
        }
    };
    blocked.restore();
    for &fd in &fds {
        set_cloexec(fd, true);
    }
    err.into()
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: the descriptors are the arbiter's own and open; F_SETFD changes one flag.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flag = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    let _ = fcntl(borrowed, FcntlArg::F_SETFD(flag));
}

/// The pre-exec check in progress: the new binary running `--check-config`.
#[derive(Debug)]
pub(super) struct Check {
    /// The checking process (reaped by the arbiter's reaper, which hands its status here).
    pub pid: i32,
    /// When it started; it is killed after `--boot-timeout`.
    pub started: Instant,
    /// Its stderr (non-blocking), read for the reason once it exits.
    stderr: std::process::ChildStderr,
}

impl Check {
    /// Starts `exe.path` with the server's command line plus `--check-config`.
    ///
    /// # Errors
    /// If the file cannot be executed at all (missing, not executable, a bad interpreter).
    pub(super) fn start(exe: &Exe) -> io::Result<Check> {
        let mut cmd = std::process::Command::new(&exe.path);
        cmd.args(exe.args.iter().skip(1))
            .arg("--check-config")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for var in DROPPED_ENV.iter().chain(&["NOTIFY_SOCKET"]) {
            cmd.env_remove(var);
        }
        cmd.env(HANDOVER_PROBE_ENV, "1");
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().expect("piped");
        rustix::io::ioctl_fionbio(&stderr, true)?;
        Ok(Check {
            pid: child.id() as i32,
            started: Instant::now(),
            stderr,
        })
    }

    /// What the check wrote on stderr (at most 64 KiB; read once it has exited).
    pub(super) fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.stderr.read(&mut buf) {
            if n == 0 || out.len() > 1 << 16 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// The line of a check's stderr that says what failed: the first one naming an error (clap's
/// `error: unexpected argument ...`, oxicorn's `oxicorn: invalid ...`), else the last
/// non-empty one; without the `oxicorn: ` prefix.
fn reason_line(text: &str) -> String {
    {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let error = lines
            .clone()
            .find(|l| l.to_ascii_lowercase().contains("error") || l.starts_with("oxicorn: "));
        error
            .or_else(|| lines.next_back())
            .map(|l| l.strip_prefix("oxicorn: ").unwrap_or(l).to_string())
            .unwrap_or_default()
    }
}

impl Check {
    /// Whether it has run longer than `limit`.
    pub(super) fn overdue(&self, limit: Duration) -> bool {
        self.started.elapsed() > limit
    }
}

/// An upgrade whose new image is rolling the workers.
#[derive(Debug)]
pub(super) struct Upgrading {
    /// The old image, to roll back to.
    pub rollback_image: OwnedFd,
    /// The generation the old image ran (it resumes it on rollback).
    pub previous_generation: u64,
    /// The worker count the old image ran.
    pub previous_target: usize,
    /// The old image's program, as log lines name it.
    pub from_version: String,
    /// A HUP that arrived during the upgrade, to run when it ends.
    pub hup_pending: bool,
}

impl Upgrading {
    /// The old image's descriptor.
    pub(super) fn image(&self) -> BorrowedFd<'_> {
        self.rollback_image.as_fd()
    }
}

impl super::Arbiter {
    /// USR2: check the binary at the start path, then execute it (see the module header).
    pub(super) fn handle_usr2(&mut self) {
        match self.phase {
            Phase::Running => {}
            Phase::Stopping(_) => return,
            _ => {
                tracing::warn!("USR2: a reload or an upgrade is in progress; ignored");
                return;
            }
        }
        if self.check.is_some() {
            tracing::warn!("USR2: the new binary is being checked already; ignored");
            return;
        }
        let Some(exe) = &self.exe else {
            tracing::error!(
                "upgrade refused: the running executable could not be opened at start, so \
                 there would be no way back; still running {}",
                crate::program::current()
            );
            return;
        };
        tracing::info!(
            "USR2: checking the new binary {} with --check-config",
            exe.path.display()
        );
        match Check::start(exe) {
            Ok(check) => self.check = Some(check),
            Err(err) => tracing::error!(
                "upgrade refused: cannot run {}: {err}; still running {}",
                exe.path.display(),
                crate::program::current()
            ),
        }
    }

    /// The reaper found `pid`, which is not in the child table: if it is the upgrade check,
    /// act on its result and return true.
    pub(super) fn on_check_exit(&mut self, pid: i32, exit: Exit) -> bool {
        if self.check.as_ref().is_none_or(|c| c.pid != pid) {
            return false;
        }
        let mut check = self.check.take().expect("checked above");
        let stderr = check.stderr();
        let said = reason_line(&stderr);
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        };
        let path = self
            .exe
            .as_ref()
            .map_or_else(String::new, |e| e.path.display().to_string());
        match exit {
            Exit::Code(0) if stderr.lines().any(|l| l.trim() == HANDOVER_MARKER) => {
                self.exec_upgrade()
            }
            Exit::Code(0) => tracing::error!(
                "upgrade refused: the new binary {path} passed its configuration check but \
                 cannot take over in place (it did not answer \"{HANDOVER_MARKER}\": an \
                 oxicorn without binary upgrades, another handover format, or not oxicorn); \
                 restart the service to switch; still running {}",
                crate::program::current()
            ),
            Exit::Code(code) => tracing::error!(
                "upgrade refused: the new binary {path} failed its configuration check (exit \
                 code {code}){said}; still running {}",
                crate::program::current()
            ),
            Exit::Signal(sig) => tracing::error!(
                "upgrade refused: the new binary {path} was killed by {sig} during its \
                 configuration check{said}; still running {}",
                crate::program::current()
            ),
        }
        true
    }

    /// Kills a check that runs longer than `--boot-timeout` (the reaper then reports it).
    pub(super) fn check_overdue(&mut self) {
        if let Some(check) = &self.check
            && check.overdue(self.config.boot_timeout)
        {
            tracing::warn!("the new binary's configuration check is taking too long: killing it");
            super::children::send(check.pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// The check passed: execute the new binary with the state handed over. Returns only if
    /// `execve` failed; the old image then goes on as if nothing happened.
    fn exec_upgrade(&mut self) {
        if !matches!(self.phase, Phase::Running) {
            tracing::error!(
                "upgrade abandoned: a reload or a stop began during the check; send USR2 again"
            );
            return;
        }
        let Some(exe) = &self.exe else { return };
        tracing::info!(
            "upgrade: executing {} (pid {} stays; running {})",
            exe.path.display(),
            std::process::id(),
            crate::program::current()
        );
        let state = self.state(
            Role::Upgrade,
            Some(exe.image.as_fd()),
            self.generation,
            self.target,
        );
        let err = state.exec(Image::Path(&exe.path));
        tracing::error!(
            "upgrade failed: cannot execute {}: {err}; still running {}",
            exe.path.display(),
            crate::program::current()
        );
    }

    /// The arbiter's state for the next image.
    fn state<'a>(
        &'a self,
        role: Role,
        rollback_image: Option<BorrowedFd<'a>>,
        generation: u64,
        target: usize,
    ) -> State<'a> {
        State {
            role,
            exe: self.exe.as_ref().expect("an upgrade needs the executable"),
            rollback_image,
            listeners: self.listeners.iter().chain(&self.retired).collect(),
            scoreboard: self.scoreboard.fd(),
            ready_rx: self
                .ready_rx
                .as_ref()
                .expect("the arbiter holds the notification pipe")
                .as_fd(),
            ready_tx: self.ready_tx.as_fd(),
            children: self.children.values().collect(),
            generation,
            generations: self.generations,
            spawned: self.spawned,
            target,
            pidfile: self.pidfile.as_ref().map(|p| p.path().to_path_buf()),
            bus_address: self.bus_address.clone(),
            hub_ever_started: self.hub.ever_started,
            notified_ready: self.notify.ready_sent,
        }
    }

    /// Every old worker was retired and the new image's are ready: the upgrade is done.
    pub(super) fn complete_upgrade(&mut self, ready: usize) {
        let Phase::Upgrading(up) = std::mem::replace(&mut self.phase, Phase::Running) else {
            return;
        };
        for l in self.retired.drain(..) {
            tracing::info!("no longer listening on {}", l.local);
            l.remove_socket_file();
        }
        tracing::info!(
            "upgrade complete: {} serving with {ready} worker(s), generation {} (was \
             {})",
            crate::program::current(),
            self.generation,
            up.from_version
        );
        self.set_title();
        self.notify_ready();
        if up.hup_pending {
            self.handle_hup();
        }
    }

    /// The new image's workers did not get ready: execute the old image again with the state
    /// and the reason. Returns only if that `execve` failed; this image then keeps serving.
    pub(super) fn rollback_upgrade(&mut self, why: String) {
        let Phase::Upgrading(up) = std::mem::replace(&mut self.phase, Phase::Running) else {
            return;
        };
        tracing::warn!("upgrade failed: {why}; going back to {}", up.from_version);
        let state = self.state(
            Role::Rollback {
                reason: why.clone(),
            },
            None,
            up.previous_generation,
            up.previous_target,
        );
        let err = state.exec(Image::Fd(up.image()));
        tracing::error!(
            "rollback failed: cannot execute the old image: {err}; {} stays",
            crate::program::current()
        );
        self.boot = super::workers::Boot::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handover_survives_its_encoding() {
        let h = Handover {
            role: Role::Rollback {
                reason: "no".into(),
            },
            version: "0.1.0 (commit x)".into(),
            exe_path: "/usr/bin/oxicorn".into(),
            rollback_image: Some(9),
            listeners: vec![HandedListener {
                fd: 3,
                addr: "127.0.0.1:0".into(),
                bound: "127.0.0.1:4000".into(),
                local: "127.0.0.1:4000".into(),
                unix: false,
                created_file: None,
            }],
            scoreboard: 4,
            ready_rx: 5,
            ready_tx: 6,
            children: vec![HandedChild {
                pid: 77,
                slot: 0,
                worker: Some((3, 12)),
                state: 1,
                request_limit: Some(1000),
            }],
            generation: 3,
            generations: 4,
            spawned: 12,
            target: 2,
            pidfile: None,
            bus_address: "\0oxicorn-1-hub".into(),
            hub_ever_started: true,
            notified_ready: true,
        };
        let back = decode(encode(&h).as_bytes()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{h:?}"));
        assert!(decode(b"zz").is_err());
        assert!(decode(b"abc").is_err());
    }
}
