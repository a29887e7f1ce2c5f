//! The child layer: what every process the arbiter forks (a worker, the bus hub) does first,
//! and the two things it owes the arbiter afterwards (a heartbeat, one "ready" message).
//!
//! The arbiter forks with its handled signals blocked. In the child, before calling [`run`],
//! it gives up what is its own: its signal handlers (`arbiter::signals::Signals::
//! forget_in_child`: otherwise a signal sent to the child is counted, and its pipe byte
//! written, on the arbiter's behalf), the read end of the notification pipe, and the
//! listeners this child must not hold. Then [`run`] does, in this order:
//!
//! 1. the process title (`oxicorn: worker 2 [gen 3]`, see [`crate::proctitle`]);
//! 2. the parent-death signal (SIGTERM), then the orphan check (`getppid()` is still the
//!    arbiter), which closes the race with an arbiter that died before the `prctl`;
//! 3. the child's own current-thread tokio runtime, built here, after the fork (tokio must
//!    never run in the arbiter: tokio-rs/tokio#4301);
//! 4. a panic hook that logs where the operator looks ([`install_panic_hook`]; a panic under
//!    [`catch_reported`] is left to its catcher, which logs it once with what it knows), and
//!    a `catch_unwind` that turns a panic of the child's own code into
//!    [`crate::exit::CHILD_PANIC`];
//! 5. on the runtime: the child's signal set ([`ChildSignals`]), and only then the signal mask
//!    is cleared, so a signal that arrived since the fork is delivered to those handlers;
//! 6. the body (the worker's or the hub's), handed a [`Child`] with which it starts the
//!    heartbeat ([`Child::start_heartbeat`]) and says it is ready ([`Child::ready`]).
//!
//! This module owns nothing of the arbiter's and must not import it (nor `worker`, `bus` or
//! `service`): both kinds of child build on it, so it sits below them.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, PanicHookInfo, UnwindSafe};
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::{Pid, getppid};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::exit::{CHILD_PANIC, SUCCESS};
use crate::scoreboard::{Slot, SlotState};

/// Length of the "ready" message a child writes to the arbiter's notification pipe: below
/// `PIPE_BUF`, so the write is atomic even with every child writing at once.
pub const READY_MESSAGE_LEN: usize = 8;

/// The beat interval is `--timeout` divided by this (then clamped, see [`beat_interval`]).
/// Four beats per timeout: a child whose runtime is busy for up to three quarters of the
/// timeout (a long poll of one task) still beats in time; gunicorn's contract (`timeout / 2`)
/// leaves half that margin.
pub const BEATS_PER_TIMEOUT: u32 = 4;

/// What the arbiter hands every child, built in the child right after the fork.
pub struct ChildBoot {
    /// What the child is, in messages: "worker", "hub".
    pub what: &'static str,
    /// The name the process title starts with ([`crate::proctitle::name`]): `oxicorn`, an
    /// embedding program's name, or `--proc-name`.
    pub name: String,
    /// The process title after the name, such as `worker 2 [gen 3]`: `ps` shows
    /// `oxicorn: worker 2 [gen 3]`.
    pub title: String,
    /// The arbiter; if `getppid()` stops being this, the child is an orphan and stops.
    pub arbiter: Pid,
    /// This child's scoreboard slot, claimed for it by the arbiter before the fork.
    pub slot: &'static Slot,
    /// The number sent in the ready message (1-based worker slot; 0 for the hub).
    pub slot_number: usize,
    /// Write end of the arbiter's notification pipe: written once by [`Child::ready`], then
    /// closed.
    pub ready_tx: OwnedFd,
    /// `--timeout`: the beat interval follows it.
    pub timeout: Option<Duration>,
    /// The exit code when the common start fails (no runtime, no signal handlers).
    pub boot_error: i32,
    /// Who to run as (`--user`, `--group`), switched to first thing.
    pub run_as: Option<crate::config::RunAs>,
}

/// Switches to `--user` / `--group` for good: supplementary groups first (the user's, as
/// `initgroups(3)`; none but the group for a bare `--group`), then the group, then the user, so
/// that no step runs without the privilege it needs.
///
/// # Errors
/// What the OS said (not started as root, or the ids are refused).
fn drop_privileges(run_as: &crate::config::RunAs) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid, initgroups, setgid, setgroups, setuid};
    let gid = Gid::from_raw(run_as.gid);
    match &run_as.user {
        Some((_, name)) => {
            let name = std::ffi::CString::new(name.as_str()).map_err(|_| nix::Error::EINVAL)?;
            initgroups(&name, gid)?;
        }
        None => setgroups(&[gid])?,
    }
    setgid(gid)?;
    if let Some((uid, _)) = &run_as.user {
        setuid(Uid::from_raw(*uid))?;
    }
    Ok(())
}

/// A started child, handed to its body.
pub struct Child {
    /// The arbiter this child was forked by.
    pub arbiter: Pid,
    /// This child's scoreboard slot.
    pub slot: &'static Slot,
    /// The child's signals, installed before the mask was cleared.
    pub signals: ChildSignals,
    what: &'static str,
    slot_number: usize,
    /// Taken (written, then closed) by [`Child::ready`].
    ready_tx: Option<OwnedFd>,
    beat: Duration,
}

/// Runs a child to completion and returns its exit code. Call it in the child right after the
/// fork (and after giving up the arbiter's handlers and fds); the caller exits with the code
/// and never returns into the arbiter's code.
///
/// An orphan (the arbiter died before this ran) exits [`SUCCESS`] without running `body`; a
/// failed start exits `boot.boot_error`; a panic of the body exits [`CHILD_PANIC`].
pub fn run<F, Fut>(boot: ChildBoot, body: F) -> i32
where
    F: FnOnce(Child) -> Fut,
    Fut: Future<Output = i32>,
{
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start(boot, body)))
        .unwrap_or(CHILD_PANIC)
}

fn start<F, Fut>(boot: ChildBoot, body: F) -> i32
where
    F: FnOnce(Child) -> Fut,
    Fut: Future<Output = i32>,
{
    let ChildBoot {
        what,
        name,
        title,
        arbiter,
        slot,
        slot_number,
        ready_tx,
        timeout,
        boot_error,
        run_as,
    } = boot;
    // Still single-threaded: the runtime is built below.
    crate::proctitle::set(&name, what, &title);
    // Before the parent-death signal: the kernel clears that setting when credentials change.
    if let Some(run_as) = &run_as
        && let Err(err) = drop_privileges(run_as)
    {
        tracing::error!(cause = %err, "{what} cannot switch user");
        return boot_error;
    }
    // If the arbiter dies (even by SIGKILL) the kernel sends us TERM: drain and exit, never
    // linger as an orphan. Then close the race where it died before this call.
    if let Err(err) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        tracing::warn!(cause = %err, "cannot set the parent-death signal");
    }
    if getppid() != arbiter {
        return SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(cause = %err, "{what} cannot build its runtime");
            return boot_error;
        }
    };
    install_panic_hook(what);
    rt.block_on(async move {
        let signals = match ChildSignals::install() {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(cause = %err, "{what} cannot install its signal handlers");
                return boot_error;
            }
        };
        // Signals have been blocked since just after the fork; ours are installed now, so
        // anything that arrived meanwhile is delivered to them.
        unblock_all();
        body(Child {
            arbiter,
            slot,
            signals,
            what,
            slot_number,
            ready_tx: Some(ready_tx),
            beat: beat_interval(timeout),
        })
        .await
    })
}

/// Installs the child's panic hook: every panic is logged as one ERROR line (through
/// `tracing`, where the operator looks, rather than on a bare stderr), with its message and its
/// place in the code, saying that it is not the child's end ("panic in the worker" read as a
/// dead worker). `what` names the child ("worker", "hub").
///
/// A panic raised under [`catch_reported`] is not logged here: its note ([`PanicNote`]) is
/// handed to that catcher, which logs one line with what it knows besides (the app hook: the
/// request line and the peer), so that one panic is not logged twice. A panic anywhere else
/// (a connection task of a line service, the child's own code) is logged here.
///
/// With `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) set, the line carries a `backtrace` field
/// (`std::backtrace::Backtrace::capture`): the default hook's backtrace, which replacing it
/// would otherwise lose.
///
/// Called by [`run`]; public for tests that serve in their own process.
pub fn install_panic_hook(what: &'static str) {
    std::panic::set_hook(Box::new(move |info| {
        let note = Box::new(PanicNote::of(what, info));
        if let Some(note) = hand_to_catcher(note) {
            note.log();
        }
    }));
}

/// What the panic hook noted of one panic: where it was raised, its text, its backtrace.
#[derive(Debug)]
pub struct PanicNote {
    /// The child's kind, for the hook's own line.
    what: &'static str,
    /// Where the panic was raised: `file:line:column`.
    pub location: String,
    /// The panic's text: `None` for a payload that is not a string (`panic_any`).
    pub message: Option<String>,
    /// The backtrace, when `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) asks for one.
    pub backtrace: Option<Backtrace>,
}

impl PanicNote {
    fn of(what: &'static str, info: &PanicHookInfo<'_>) -> PanicNote {
        let location = info.location().map_or_else(
            || "an unknown place".to_string(),
            |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
        );
        let backtrace = Backtrace::capture();
        PanicNote {
            what,
            location,
            message: payload_text(info.payload()).map(str::to_string),
            backtrace: (backtrace.status() == BacktraceStatus::Captured).then_some(backtrace),
        }
    }

    /// The hook's own line: `worker code panicked (…): panicked at FILE:LINE:COL:\nMESSAGE`
    /// (the standard library's words for a panic, its line break escaped by the log).
    fn log(&self) {
        let what = self.what;
        let at = &self.location;
        let message = self
            .message
            .as_deref()
            .map_or(String::new(), |m| format!(":\n{m}"));
        tracing::error!(
            backtrace = self.backtrace.as_ref().map(tracing::field::display),
            "{what} code panicked (in a connection task: that connection only; in an app handler: that request, a 500): panicked at {at}{message}"
        );
    }
}

/// The text a panic was raised with (`panic!("…")` gives a `&str` or a `String`); `None` for
/// any other payload.
pub fn payload_text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// A panic [`catch_reported`] caught ([`CaughtPanic::new`]).
pub struct CaughtPanic {
    /// What the panic was raised with (`resume_unwind` takes it).
    pub payload: Box<dyn Any + Send>,
    /// What the hook noted of it: `None` without the child's hook (a test's process) or for a
    /// payload re-raised by `resume_unwind`, which runs no hook.
    pub note: Option<Box<PanicNote>>,
}

/// [`catch_reported`]'s mark on this thread: outside any; inside one; inside one, and the hook
/// left a note ([`NOTE`]).
const OUTSIDE: u8 = 0;
const INSIDE: u8 = 1;
const NOTED: u8 = 2;

thread_local! {
    /// Whether this thread runs under [`catch_reported`], and whether a note waits.
    static CATCH: Cell<u8> = const { Cell::new(OUTSIDE) };
    /// The note the hook left for the catcher.
    static NOTE: RefCell<Option<Box<PanicNote>>> = const { RefCell::new(None) };
}

/// As `std::panic::catch_unwind`, with the child's panic hook told that the caller reports a
/// panic of `f`: the hook leaves its note (place, text, backtrace) for [`CaughtPanic::new`],
/// to be logged once by the caller with what it knows of the work that panicked, and does not
/// log it itself. Costs a thread-local store and a swap when nothing panics (about six
/// instructions, callgrind: the app hook calls it three or four times per request); the
/// result is `catch_unwind`'s own, not rebuilt (moving a response costs more than that).
///
/// Not nested: the mark is set and cleared, not saved and restored (that cost as much
/// again), so a `catch_reported` inside another's `f` ends the outer one's mark early, and a
/// later panic of the outer `f` is logged by the hook as well as by its catcher. The app hook
/// never nests them (a handler's future and a response body are polled by hyper, one at a
/// time).
///
/// Call [`CaughtPanic::new`] with the payload of an `Err` right away: a note left waiting is
/// logged (as the hook logs) at the next panic.
///
/// A panic that `f`'s own code catches (a `catch_unwind` inside the app, tower-http's
/// `CatchPanic`) never reaches the caller: its note is logged as the hook logs it, when `f`
/// returns. Only this thread's panics are handed over: one on another thread (a blocking
/// pool's) is the hook's.
///
/// # Errors
/// The payload of the panic `f` raised.
#[inline]
pub fn catch_reported<R>(f: impl FnOnce() -> R + UnwindSafe) -> std::thread::Result<R> {
    CATCH.set(INSIDE);
    // The mark is cleared inside the catch on the way out of `f`, so that its value goes
    // straight to the caller (held across the clearing, it was copied: callgrind).
    let result = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let value = f();
        if CATCH.replace(OUTSIDE) == NOTED {
            log_waiting_note();
        }
        value
    }));
    if result.is_err() {
        CATCH.set(OUTSIDE);
    }
    result
}

impl CaughtPanic {
    /// A panic [`catch_reported`] caught, its payload with the note the hook left for it.
    pub fn new(payload: Box<dyn Any + Send>) -> CaughtPanic {
        let note = NOTE
            .try_with(|n| n.try_borrow_mut().ok().and_then(|mut n| n.take()))
            .ok()
            .flatten();
        CaughtPanic { payload, note }
    }
}

/// Logs a note no catcher took (a panic `f`'s own code caught), as the hook would have.
#[cold]
fn log_waiting_note() {
    if let Some(note) = NOTE.with(|n| n.borrow_mut().take()) {
        note.log();
    }
}

/// The hook's side: under [`catch_reported`], keeps `note` for the catcher (`None` back);
/// else gives it back to be logged. A note still waiting (a panic the catcher's work caught
/// itself, then a second one within the same call) is logged first.
fn hand_to_catcher(note: Box<PanicNote>) -> Option<Box<PanicNote>> {
    // `try_with`: a panic while the thread's locals are torn down is the hook's to log.
    let inside = CATCH.try_with(|c| c.get() != OUTSIDE).unwrap_or(false);
    if !inside {
        return Some(note);
    }
    let mut note = Some(note);
    let earlier = NOTE.try_with(|slot| {
        let mut slot = slot.try_borrow_mut().ok()?;
        Some(std::mem::replace(&mut *slot, note.take()))
    });
    match (earlier, note) {
        (Ok(Some(earlier)), None) => {
            let _ = CATCH.try_with(|c| c.set(NOTED));
            if let Some(earlier) = earlier {
                earlier.log();
            }
            None
        }
        // The note could not be kept: the hook logs it.
        (_, note) => note,
    }
}

impl Child {
    /// Starts the heartbeat task (see [`heartbeat`]) and returns the token it cancels once the
    /// arbiter is gone. Call it once the child's own boot can no longer hang: before this,
    /// the slot's beat is the one the arbiter wrote at fork, so a boot that hangs longer than
    /// `--timeout` is killed.
    pub fn start_heartbeat(&self) -> CancellationToken {
        let orphaned = CancellationToken::new();
        tokio::spawn(heartbeat(
            self.slot,
            self.beat,
            self.arbiter,
            orphaned.clone(),
        ));
        orphaned
    }

    /// Marks the slot ready and tells the arbiter (one [`ready_message`] on the notification
    /// pipe, which is then closed). Call it once, when the child serves.
    ///
    /// # Errors
    /// If the pipe write fails (the arbiter is gone, or it was already called).
    pub fn ready(&mut self) -> io::Result<()> {
        let tx = self
            .ready_tx
            .take()
            .ok_or_else(|| io::Error::other(format!("the {} said ready twice", self.what)))?;
        self.slot.set_state(SlotState::Ready);
        let msg = ready_message(std::process::id(), self.slot_number);
        nix::unistd::write(&tx, &msg)?;
        Ok(())
    }

    /// Whether the arbiter is gone (our parent is someone else now).
    pub fn orphaned(&self) -> bool {
        getppid() != self.arbiter
    }
}

/// The signals every child handles: TERM (graceful stop), QUIT (fast stop), USR1 (reopen
/// logs), plus the arbiter's other signals registered only so they are ignored (TTIN and TTOU
/// would otherwise stop the process by their default action; HUP would kill it).
///
/// INT is ignored too: it comes from a terminal's Ctrl-C, which the kernel sends to the whole
/// foreground process group. The arbiter gets it as well and stops its children in order
/// (workers with QUIT, then the hub, which draining workers may still use); a child that
/// quit on its own INT would race that order (the hub first, and the workers warn that the
/// bus is gone).
pub struct ChildSignals {
    /// SIGTERM: graceful stop (also the parent-death signal).
    pub term: tokio::signal::unix::Signal,
    /// SIGQUIT: fast stop.
    pub quit: tokio::signal::unix::Signal,
    /// SIGUSR1: reopen log files.
    pub usr1: tokio::signal::unix::Signal,
    /// INT, HUP, TTIN, TTOU, USR2, WINCH: kept registered so they stay ignored.
    _ignored: Vec<tokio::signal::unix::Signal>,
}

impl ChildSignals {
    /// Installs the handlers on the current runtime.
    ///
    /// # Errors
    /// If tokio cannot register a signal (its self-pipe cannot be created).
    pub fn install() -> io::Result<ChildSignals> {
        let mut ignored = Vec::new();
        for sig in [
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
            Signal::SIGUSR2,
            Signal::SIGWINCH,
        ] {
            ignored.push(signal(SignalKind::from_raw(sig as i32))?);
        }
        Ok(ChildSignals {
            term: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
            _ignored: ignored,
        })
    }
}

/// Clears the signal mask the child set right after the fork (the arbiter's
/// `signals::after_fork_in_child`). Clearing all of it rather than the arbiter's list keeps
/// this layer free of the arbiter: the arbiter's own mask is empty, so the child ends with the
/// mask it would have had anyway.
pub fn unblock_all() {
    // pthread_sigmask only fails for an invalid `how`; ours is constant.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// The message a child writes to the notification pipe once it serves: its pid and slot
/// number, little-endian `u32`s, [`READY_MESSAGE_LEN`] bytes.
pub fn ready_message(pid: u32, slot_number: usize) -> [u8; READY_MESSAGE_LEN] {
    let mut msg = [0u8; READY_MESSAGE_LEN];
    msg[..4].copy_from_slice(&pid.to_le_bytes());
    msg[4..].copy_from_slice(&(slot_number as u32).to_le_bytes());
    msg
}

/// The pid in a [`ready_message`].
pub fn ready_pid(msg: &[u8; READY_MESSAGE_LEN]) -> i32 {
    u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]) as i32
}

/// How often a child beats: `timeout / BEATS_PER_TIMEOUT`, at least every 50 ms apart and at
/// least once a second (so the orphan check in [`heartbeat`] stays prompt; also the interval
/// with the timeout off).
pub fn beat_interval(timeout: Option<Duration>) -> Duration {
    let cap = Duration::from_secs(1);
    timeout.map_or(cap, |t| {
        (t / BEATS_PER_TIMEOUT).clamp(Duration::from_millis(50), cap)
    })
}

/// Marks the slot alive every `every`, and cancels `orphaned` once the arbiter is gone. It
/// runs on the child's only thread, so a task that blocks the runtime stops the beat too, and
/// the arbiter kills the wedged child (gunicorn's contract on `Worker.notify`: "If you fail in
/// accomplishing this task, the master process will murder your workers").
pub async fn heartbeat(
    slot: &'static Slot,
    every: Duration,
    arbiter: Pid,
    orphaned: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        slot.notify();
        if getppid() != arbiter {
            orphaned.cancel();
        }
    }
}

/// Fault injection for the arbiter's own tests, compiled into debug builds only (what `cargo
/// test` runs), so a release binary has no environment variable that makes it fail.
///
/// While the file named by `OXICORN_TEST_BOOT_FAILURE` exists, workers die before they are
/// ready, as one that cannot open its resources would. While the file named by
/// `OXICORN_TEST_BOOT_HANG` exists, workers hang before they are ready (their only thread
/// blocked, as a boot stuck on a lock or a slow dependency; at most a minute), which
/// `--boot-timeout` must catch. Files rather than flags, so a test can break only the
/// generation a reload or an upgrade starts. Called from one place: the worker's boot.
pub fn test_boot_failure_injected() -> bool {
    #[cfg(debug_assertions)]
    {
        if let Some(path) = std::env::var_os("OXICORN_TEST_BOOT_HANG") {
            let path = std::path::Path::new(&path);
            let since = std::time::Instant::now();
            while path.exists() && since.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(path) = std::env::var_os("OXICORN_TEST_BOOT_FAILURE")
            && std::path::Path::new(&path).exists()
        {
            tracing::error!(
                "worker failing at boot: {} exists",
                std::path::Path::new(&path).display()
            );
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the copy of the test binary that runs [`forked_child`], so the fork happens in a
    /// process running that one test: libtest's main thread waits on a channel, and no other
    /// test thread can hold the allocator's lock across the fork.
    const ALONE: &str = "OXICORN_CHILD_TEST_ALONE";

    #[test]
    fn a_child_says_ready_and_its_panic_exits_child_panic() {
        if std::env::var_os(ALONE).is_some() {
            forked_child();
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child::tests::a_child_says_ready_and_its_panic_exits_child_panic",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // "1 passed": the copy found this test (a renamed test would otherwise run nothing).
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn forked_child() {
        use nix::sys::wait::{WaitStatus, waitpid};
        use nix::unistd::{ForkResult, fork};

        let board = crate::scoreboard::Scoreboard::create().unwrap();
        let index = board.claim_worker(1).unwrap();
        let (rx, tx) = nix::unistd::pipe().unwrap();
        // SAFETY: this process runs one test on one thread (see ALONE); the child builds its
        // own runtime and ends with _exit, never returning into the harness.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let code = run(
                    ChildBoot {
                        what: "worker",
                        name: "oxicorn".into(),
                        title: "test child".into(),
                        run_as: None,
                        arbiter: Pid::parent(),
                        slot: board.slot(index),
                        slot_number: index + 1,
                        ready_tx: tx,
                        timeout: None,
                        boot_error: crate::exit::WORKER_BOOT_ERROR,
                    },
                    |mut child| async move {
                        child.ready().unwrap();
                        panic!("a bug in the child's own code");
                    },
                );
                // SAFETY: ends the forked child without running the harness's exit path.
                unsafe { nix::libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(tx);
                let status = waitpid(child, None).unwrap();
                assert_eq!(status, WaitStatus::Exited(child, CHILD_PANIC));
                let mut msg = [0u8; READY_MESSAGE_LEN];
                nix::unistd::read(&rx, &mut msg).unwrap();
                assert_eq!(ready_pid(&msg), child.as_raw());
                assert_eq!(board.slot(index).state(), SlotState::Ready);
            }
        }
    }

    #[test]
    fn the_ready_message_carries_the_pid() {
        let msg = ready_message(4_000_123, 7);
        assert_eq!(ready_pid(&msg), 4_000_123);
        assert_eq!(u32::from_le_bytes(msg[4..].try_into().unwrap()), 7);
    }

    #[test]
    fn a_child_beats_four_times_per_timeout_within_bounds() {
        assert_eq!(
            beat_interval(Some(Duration::from_secs(2))),
            Duration::from_millis(500)
        );
        assert_eq!(
            beat_interval(Some(Duration::from_secs(30))),
            Duration::from_secs(1)
        );
        assert_eq!(
            beat_interval(Some(Duration::from_millis(100))),
            Duration::from_millis(50)
        );
        assert_eq!(beat_interval(None), Duration::from_secs(1));
    }
}
