//! The hub: the embedded bus's process. The arbiter forks it (only for services that need a
//! bus) and supervises it like a worker: it is reaped, restarted with back-off when it dies,
//! and stopped after the last worker on shutdown.
//!
//! # Layout
//!
//! - `boot`: the process on the child layer ([`crate::child`]): the listener, the heartbeat,
//!   the ready message, the main loop.
//! - `state`: the state machine (names, values, fan-out, the recovery window). No I/O.
//! - `recovery`: the task that ends the recovery window after a restart (`/proc` checks).
//! - `conn`: the accept loop and the per-worker connection tasks (frames in, batches out).
//!
//! Inside, one task per worker connection reads frames and applies them to the state, the only
//! one, under a mutex held for a few map operations and never across an `.await`. The hub
//! knows no service: keys, topics and values are opaque bytes to it.

mod boot;
mod conn;
mod recovery;
mod state;

use std::path::PathBuf;
use std::time::Duration;

pub use boot::run;
pub use recovery::recovery_cap;

use crate::log::LogHandle;

/// Everything the hub is handed at fork, beside what every child gets
/// ([`crate::child::ChildBoot`]: the arbiter's pid, the scoreboard slot, the ready pipe).
pub struct HubBoot {
    /// Where to listen: the address the arbiter chose and gives every worker too.
    pub address: PathBuf,
    /// How long a restarted hub waits at most for the workers it was told about
    /// ([`recovery_cap`] of the heartbeat timeout).
    pub recovery_cap: Duration,
    /// The logger, to reopen on USR1.
    pub log: &'static LogHandle,
    /// Whether an earlier hub of this arbiter died: then workers have names to re-register.
    pub restart: bool,
    /// On a restart, the workers alive when this hub was forked: the only ones that can hold
    /// names. New reservations wait until each has said hello or is gone, so a newcomer
    /// cannot take the name of a connected member whose worker has not re-registered yet.
    /// Waiting for these pids, not for a count: during a reload more workers than `--workers`
    /// run, and the new generation's (nameless) hellos must not end the wait. Workers forked
    /// after the hub have no names and are not waited for.
    pub workers: Vec<u32>,
}
