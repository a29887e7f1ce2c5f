//! The arbiter's signals: the handler counts the signal and wakes the loop, nothing else.
//!
//! A handler may only do async-signal-safe work: here an atomic increment and a one-byte write
//! to a self-pipe (gunicorn logged from its SIGCHLD handler and deadlocked: benoitc/gunicorn
//! #3198). The loop polls the pipe's read end, drains it, then acts on the counts.
//!
//! Counts, not flags: two TTINs sent a moment apart are two more workers.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
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

/// The installed handlers and the read end of the self-pipe.
pub struct Signals {
    /// Read end of the self-pipe, polled by the loop. The write ends are owned by the handlers
    /// (one clone per signal) and closed when they are unregistered.
    wake: UnixStream,
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
        let mut ids = Vec::new();
        for sig in HANDLED {
            let n = sig as i32;
            // SAFETY: the action only increments an atomic in a static array, which is
            // async-signal-safe; it allocates nothing and takes no lock.
            let id = unsafe {
                signal_hook::low_level::register(n, move || {
                    PENDING[n as usize].fetch_add(1, Ordering::SeqCst);
                })
            }?;
            ids.push(id);
            // Registered second, so it runs after the count: the loop never wakes to a zero.
            ids.push(signal_hook::low_level::pipe::register(
                n,
                wake_tx.try_clone()?,
            )?);
        }
        Ok(Signals { wake, ids })
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
        drop(self.wake);
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// Blocks the handled signals for the duration of a fork, so none is delivered to the child
/// before it has replaced the arbiter's handlers with its own. The child unblocks them once
/// its own handlers are in place (`child::unblock_all`); pending signals are then delivered
/// to those.
pub struct Blocked {
    old: SigSet,
}

impl Blocked {
    /// Blocks [`HANDLED`].
    pub fn all() -> Blocked {
        let mut set = SigSet::empty();
        for sig in HANDLED {
            set.add(sig);
        }
        let mut old = SigSet::empty();
        // pthread_sigmask only fails for an invalid `how`; ours is constant.
        let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old));
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
    let mut set = SigSet::empty();
    for sig in HANDLED {
        set.add(sig);
    }
    // pthread_sigmask only fails for an invalid `how`; ours is constant.
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
}
