//! The arbiter's signals: the handler counts the signal and wakes the loop, nothing else.
//!
//! A handler may only do async-signal-safe work: here an atomic increment and a one-byte write
//! to a self-pipe (gunicorn logged from its SIGCHLD handler and deadlocked: benoitc/gunicorn
//! #3198). The loop polls the pipe's read end, drains it, then acts on the counts.
//!
//! Counts, not flags: two TTINs sent a moment apart are two more workers.
//!
//! Nothing is blocked in the arbiter around a fork, because the kernel keeps at most one
//! pending instance of a standard signal (signal(7)): a TTIN that arrived while the first
//! TTIN's fork had them blocked stayed pending, and a third merged into it. Instead the handler
//! knows whose it is: run in a child that has not yet blocked its signals (the moment between
//! `fork` and [`after_fork_in_child`]), it records the signal for the child, which raises it
//! again once it has blocked them, so the child's own handlers receive it.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask, raise};
use signal_hook::SigId;

/// The signals the arbiter handles, in the order `take` reports them: stops first, so a TERM
/// that arrives with a HUP is not delayed by the reload.
pub const HANDLED: [Signal; 10] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCHLD,
];

/// How many times each signal arrived since the loop last looked, indexed by signal number.
static PENDING: [AtomicUsize; 65] = [const { AtomicUsize::new(0) }; 65];

/// Signals the handler ran for in a freshly forked child, before the child blocked them; see
/// [`after_fork_in_child`]. Always zero in the arbiter.
static CHILD_PENDING: [AtomicUsize; 65] = [const { AtomicUsize::new(0) }; 65];

/// The arbiter's pid, set by [`Signals::install`]; the handler compares `getpid()` with it.
static ARBITER_PID: AtomicI32 = AtomicI32::new(0);

/// The write end of the self-pipe (non-blocking), or -1 before [`Signals::install`].
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// The action run for every handled signal. Async-signal-safe: `getpid`, atomics and one
/// non-blocking `write` (a full pipe already holds a wake-up, so a failed write loses nothing).
fn on_signal(n: usize) {
    if nix::unistd::getpid().as_raw() != ARBITER_PID.load(Ordering::Relaxed) {
        CHILD_PENDING[n].fetch_add(1, Ordering::SeqCst);
        return;
    }
    PENDING[n].fetch_add(1, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: the descriptor is the self-pipe's write end, open for as long as the
        // handlers are registered (`Signals` owns it; `forget_in_child` unregisters first).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = nix::unistd::write(fd, &[0u8]);
    }
}

/// The installed handlers and the read end of the self-pipe.
pub struct Signals {
    /// Read end of the self-pipe, polled by the loop. The write ends are owned by the handlers
    /// (one clone per signal) and closed when they are unregistered.
    wake: UnixStream,
    /// The self-pipe's write end, written by [`on_signal`] through [`WAKE_FD`].
    wake_tx: UnixStream,
    /// Every registration, so a forked worker can remove them all.
    ids: Vec<SigId>,
}

impl Signals {
    /// Installs the handlers. Call once, in the arbiter, before the first fork.
    ///
    /// # Errors
    /// If the self-pipe cannot be created or a handler cannot be installed.
    pub fn install() -> io::Result<Signals> {
        let (wake, wake_tx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        ARBITER_PID.store(nix::unistd::getpid().as_raw(), Ordering::Relaxed);
        WAKE_FD.store(wake_tx.as_raw_fd(), Ordering::Relaxed);
        let mut ids = Vec::new();
        for sig in HANDLED {
            let n = sig as usize;
            // SAFETY: `on_signal` is async-signal-safe (see there): it allocates nothing and
            // takes no lock.
            ids.push(unsafe { signal_hook::low_level::register(n as i32, move || on_signal(n)) }?);
        }
        Ok(Signals { wake, wake_tx, ids })
    }

    /// Empties the self-pipe. Call before [`Signals::take`], so a signal arriving in between
    /// leaves a byte that wakes the next poll.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.wake).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// The signals received since the last call, each as many times as it arrived.
    pub fn take(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        for sig in HANDLED {
            let n = PENDING[sig as usize].swap(0, Ordering::SeqCst);
            out.extend(std::iter::repeat_n(sig, n));
        }
        out
    }

    /// In a freshly forked worker: removes the arbiter's handlers, so a signal sent to the
    /// worker is not counted (and its pipe byte not written) on the arbiter's behalf. The
    /// worker installs its own handlers afterwards; see `worker::signals`.
    pub fn forget_in_child(self) {
        for id in self.ids {
            signal_hook::low_level::unregister(id);
        }
        WAKE_FD.store(-1, Ordering::Relaxed);
        drop(self.wake);
        drop(self.wake_tx);
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// The first thing a freshly forked child does: blocks [`HANDLED`] until its own handlers are
/// in place (`child::unblock_all` clears the mask), and raises again every signal the
/// arbiter's handler recorded for it before the block (see the module header), so it stays
/// pending and reaches those handlers.
pub fn after_fork_in_child() {
    // Never restored: `child::unblock_all` clears the mask once the child's handlers are in.
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None);
    for sig in HANDLED {
        if CHILD_PENDING[sig as usize].swap(0, Ordering::SeqCst) > 0 {
            // Blocked, so it stays pending on this thread until the mask is cleared.
            let _ = raise(sig);
        }
    }
}

/// Blocks the handled signals across an `execve` (a binary upgrade), so none kills the process
/// with its default action before the new image has installed its handlers.
pub struct Blocked {
    old: SigSet,
}

impl Blocked {
    /// Blocks [`HANDLED`].
    pub fn all() -> Blocked {
        let mut old = SigSet::empty();
        // pthread_sigmask only fails for an invalid `how`; ours is constant.
        let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), Some(&mut old));
        Blocked { old }
    }

    /// Restores the mask from before [`Blocked::all`].
    pub fn restore(self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Unblocks [`HANDLED`]: an image started by a binary upgrade inherits them blocked (they were
/// blocked across the `execve` so none would kill the process with its default action); once
/// its handlers are installed, anything pending is delivered to them.
pub fn unblock_handled() {
    // pthread_sigmask only fails for an invalid `how`; ours is constant.
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handled_set()), None);
}

/// [`HANDLED`] as a signal set, for the masks above.
fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for sig in HANDLED {
        set.add(sig);
    }
    set
}
