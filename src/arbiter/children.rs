//! The child table: every process the arbiter forked (workers and the hub), one fork path
//! (`spawn_child`), one reaper, one heartbeat check (`murder_children`) and one stop escalation
//! over all of them, with gunicorn's verbs. Which children are wedged or overdue is decided by
//! plain functions of the table (`wedged`, `overdue`), unit-tested without a fork.
//!
//! What to do with a child (how many workers, when to restart the hub) is decided elsewhere:
//! `workers.rs` (pure decisions) and `hub.rs` (the hub's policy). This file only forks, signals,
//! reaps and keeps the table true.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::Arbiter;
use crate::child::{ChildBoot, READY_MESSAGE_LEN, ready_pid};
use crate::exit::{HUB_BOOT_ERROR, WORKER_BOOT_ERROR};
use crate::scoreboard::HUB_SLOT;

/// What a child is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildKind {
    /// A worker of a reload generation.
    Worker {
        /// The generation it was started in; older ones are retired by a reload.
        generation: u64,
        /// Spawn order: lower is older ("oldest first").
        age: u64,
    },
    /// The bus hub.
    Hub,
}

/// Why the arbiter sent SIGKILL, so the exit is reported as ours and not as the OOM killer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KillReason {
    /// Missed heartbeat.
    Heartbeat,
    /// Did not stop within its grace period.
    StopTimeout,
    /// A failed reload's worker.
    Rollback,
    /// A new worker that did not say ready within `--boot-timeout`.
    BootTimeout,
}

/// Where a child is in its life, as the arbiter knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildState {
    /// Forked; has not said ready.
    Booting,
    /// Said ready on the notification pipe.
    Ready,
    /// Sent a stop signal (TERM, QUIT) at `since`.
    Stopping {
        /// The signal sent.
        signal: Signal,
        /// When; SIGKILL follows after the signal's grace period.
        since: Instant,
    },
    /// Sent SIGKILL; what it was doing before decides what its exit means.
    Killed {
        /// Why.
        reason: KillReason,
        /// The state it was killed in.
        before: Before,
    },
}

/// A child's state before SIGKILL (a [`ChildState`] without `Killed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Before {
    /// It had not said ready.
    Booting,
    /// It was serving.
    Ready,
    /// It had been sent this stop signal.
    Stopping(Signal),
}

impl ChildState {
    /// Whether its death, unasked, before it ever said ready, counts as a boot failure.
    pub(super) fn boot_failure(self) -> bool {
        matches!(
            self,
            ChildState::Booting
                | ChildState::Killed {
                    reason: KillReason::Heartbeat | KillReason::BootTimeout,
                    before: Before::Booting,
                }
        )
    }

    /// Whether we asked it to go (a stop signal, a kill other than for its heartbeat).
    pub(super) fn asked(self) -> bool {
        match self {
            ChildState::Booting | ChildState::Ready => false,
            ChildState::Stopping { .. } => true,
            ChildState::Killed { reason, before } => {
                !matches!(reason, KillReason::Heartbeat | KillReason::BootTimeout)
                    || matches!(before, Before::Stopping(_))
            }
        }
    }

    /// The stop signal it was sent, if any.
    pub(super) fn stop_signal(self) -> Option<Signal> {
        match self {
            ChildState::Stopping { signal, .. }
            | ChildState::Killed {
                before: Before::Stopping(signal),
                ..
            } => Some(signal),
            _ => None,
        }
    }

    /// Still counted towards its pool: neither stopping nor killed.
    pub(super) fn live(self) -> bool {
        matches!(self, ChildState::Booting | ChildState::Ready)
    }

    fn before(self) -> Before {
        match self {
            ChildState::Booting => Before::Booting,
            ChildState::Ready => Before::Ready,
            ChildState::Stopping { signal, .. } => Before::Stopping(signal),
            ChildState::Killed { before, .. } => before,
        }
    }
}

/// One child as the arbiter tracks it.
#[derive(Debug, Clone)]
pub(super) struct Child {
    pub pid: i32,
    /// 0-based scoreboard index, claimed before the fork; shown 1-based.
    pub slot: usize,
    pub kind: ChildKind,
    pub state: ChildState,
    /// When it was forked.
    pub started: Instant,
    /// Why this worker is to be replaced (recycling): it serves on until its replacement is
    /// ready, then it is retired. `None` while it is wanted.
    pub replace: Option<Replace>,
    /// Requests after which this worker is replaced (`--max-requests` plus its own jitter,
    /// drawn at spawn); `None` never.
    pub request_limit: Option<u64>,
    /// Its request count at the last recycle check that sampled it, and when: the rate since
    /// tells when it will reach its limit (`workers::recycle_wait`).
    pub served: Option<(u64, Instant)>,
}

/// Why a serving worker is to be replaced by a fresh one (gunicorn's `max_requests`, and a
/// memory ceiling), as found by the arbiter's recycle checks (`workers.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replace {
    /// It served this many requests (connections for non-HTTP services), at or past its limit.
    Requests(u64),
    /// Its resident memory is this many MiB, past `--max-worker-memory`.
    Memory(u64),
}

impl Child {
    /// A fresh row for a process just forked (or adopted after an upgrade).
    pub(super) fn new(pid: i32, slot: usize, kind: ChildKind, state: ChildState) -> Child {
        Child {
            pid,
            slot,
            kind,
            state,
            started: Instant::now(),
            replace: None,
            request_limit: None,
            served: None,
        }
    }
}

impl Child {
    /// `worker 1234 (slot 2)` or `hub 1234`, as the logs (and the tests) name children.
    pub(super) fn name(&self) -> String {
        match self.kind {
            ChildKind::Worker { .. } => format!("worker {} (slot {})", self.pid, self.slot + 1),
            ChildKind::Hub => format!("hub {}", self.pid),
        }
    }

    /// The generation of a worker; `None` for the hub.
    pub(super) fn generation(&self) -> Option<u64> {
        match self.kind {
            ChildKind::Worker { generation, .. } => Some(generation),
            ChildKind::Hub => None,
        }
    }
}

/// Every live child, keyed by pid.
pub(super) type Children = BTreeMap<i32, Child>;

/// How a child ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum Exit {
    Code(i32),
    Signal(Signal),
}

/// Sends `sig`, ignoring a process that is already gone (it will be reaped).
pub(super) fn send(pid: i32, sig: Signal) {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => tracing::error!(cause = %err, "cannot send {sig} to {pid}"),
    }
}

/// What to fork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spawn {
    /// A worker of the current generation.
    Worker,
    /// The bus hub.
    Hub,
}

/// Why a fork did not happen.
#[derive(Debug)]
pub(super) enum SpawnError {
    /// Every slot of that kind is taken.
    NoSlot,
    /// `fork` failed (out of memory, process limit).
    Fork(Errno),
}

/// Children (workers and the hub) whose heartbeat is older than `timeout`, with its age in
/// milliseconds; `beat_age_ms` reads a slot's age. A child already killed is not listed again.
pub(super) fn wedged(
    children: &Children,
    timeout: Duration,
    beat_age_ms: impl Fn(usize) -> u64,
) -> Vec<(i32, u64)> {
    let limit = timeout.as_millis() as u64;
    children
        .values()
        .filter(|c| !matches!(c.state, ChildState::Killed { .. }))
        .filter_map(|c| {
            let age = beat_age_ms(c.slot);
            (age > limit).then_some((c.pid, age))
        })
        .collect()
}

/// Children that outlived their stop signal's grace period (`grace` gives it for a kind and a
/// signal), with the signal.
pub(super) fn overdue(
    children: &Children,
    now: Instant,
    grace: impl Fn(ChildKind, Signal) -> Duration,
) -> Vec<(i32, Signal)> {
    children
        .values()
        .filter_map(|c| match c.state {
            ChildState::Stopping { signal, since }
                if now.duration_since(since) > grace(c.kind, signal) =>
            {
                Some((c.pid, signal))
            }
            _ => None,
        })
        .collect()
}

impl Arbiter {
    /// The one fork path: claims a scoreboard slot, forks with the handled signals blocked,
    /// and records the child; the child runs its body and exits, never returning here.
    pub(super) fn spawn_child(&mut self, what: Spawn) -> Result<i32, SpawnError> {
        let slot = match what {
            Spawn::Worker => self.scoreboard.claim_worker(self.generation),
            Spawn::Hub => self
                .scoreboard
                .claim_hub(self.generation)
                .then_some(HUB_SLOT),
        }
        .ok_or(SpawnError::NoSlot)?;
        let kind = match what {
            Spawn::Worker => {
                self.spawned += 1;
                ChildKind::Worker {
                    generation: self.generation,
                    age: self.spawned,
                }
            }
            Spawn::Hub => ChildKind::Hub,
        };
        // The arbiter must be single-threaded here: fork copies only this thread, and a lock
        // held by any other would stay locked forever in the child.
        debug_assert_eq!(
            std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count()),
            1,
            "the arbiter must not have threads when it forks"
        );
        // Signals stay unblocked here: a TTIN sent during the fork must not merge with the
        // next one (see `signals.rs`).
        // SAFETY: the arbiter has no other threads (asserted above in debug builds; it never
        // starts any), so no lock is held across the fork. The child never returns into the
        // arbiter's code: it runs its body and exits.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                let pid = child.as_raw();
                self.scoreboard
                    .slot(slot)
                    .pid
                    .store(pid as u32, Ordering::Relaxed);
                let mut row = Child::new(pid, slot, kind, ChildState::Booting);
                if matches!(kind, ChildKind::Worker { .. }) {
                    row.request_limit = self.request_limit();
                }
                self.children.insert(pid, row);
                Ok(pid)
            }
            Ok(ForkResult::Child) => {
                // Blocked until the child has its own handlers; any that came first are kept.
                super::signals::after_fork_in_child();
                let code = self.become_child(kind, slot);
                std::process::exit(code);
            }
            Err(err) => {
                self.scoreboard.release(slot);
                Err(SpawnError::Fork(err))
            }
        }
    }

    /// In the child, right after fork: give up everything that is the arbiter's, then run the
    /// child's body. Returns its exit code.
    fn become_child(&mut self, kind: ChildKind, slot: usize) -> i32 {
        if let Some(signals) = self.signals.take() {
            signals.forget_in_child();
        }
        drop(self.ready_rx.take());
        // Listeners only old generations use must close here, or this child would keep them
        // open (and queueing connections nobody accepts) after the old workers are gone.
        drop(std::mem::take(&mut self.retired));
        let boot_error = match kind {
            ChildKind::Worker { .. } => WORKER_BOOT_ERROR,
            ChildKind::Hub => HUB_BOOT_ERROR,
        };
        let Ok(ready_tx) = self.ready_tx.try_clone() else {
            return boot_error;
        };
        let child = ChildBoot {
            what: match kind {
                ChildKind::Worker { .. } => "worker",
                ChildKind::Hub => "hub",
            },
            name: crate::proctitle::name(self.config.proc_name.as_deref()).to_string(),
            title: match kind {
                ChildKind::Worker { generation, .. } => {
                    format!("worker {} [gen {generation}]", slot + 1)
                }
                ChildKind::Hub => "hub".to_string(),
            },
            arbiter: Pid::parent(),
            run_as: self.config.run_as.clone(),
            slot: self.scoreboard.slot(slot),
            slot_number: match kind {
                ChildKind::Worker { .. } => slot + 1,
                ChildKind::Hub => 0,
            },
            ready_tx,
            timeout: self.config.timeout,
            boot_error,
        };
        match kind {
            ChildKind::Worker { .. } => crate::worker::run(crate::worker::WorkerBoot {
                child,
                listeners: std::mem::take(&mut self.listeners),
                config: Arc::clone(&self.config),
                log: self.log,
                bus_address: super::services::needs_bus(&self.config)
                    .then(|| self.bus_address.clone()),
            }),
            ChildKind::Hub => {
                // Unlike a worker, the hub keeps no listener: it must not hold client sockets.
                drop(std::mem::take(&mut self.listeners));
                self.run_hub(child)
            }
        }
    }

    /// Sends a stop signal (TERM or QUIT) to a child and remembers it. A fast stop overrides
    /// a graceful one, never the other way round; a killed child is left alone.
    pub(super) fn stop_child(&mut self, pid: i32, sig: Signal) {
        let Some(c) = self.children.get_mut(&pid) else {
            return;
        };
        match c.state {
            ChildState::Killed { .. } => return,
            ChildState::Stopping { signal, .. }
                if signal != Signal::SIGTERM || sig == Signal::SIGTERM =>
            {
                return;
            }
            _ => {}
        }
        c.state = ChildState::Stopping {
            signal: sig,
            since: Instant::now(),
        };
        send(pid, sig);
    }

    /// Sends SIGKILL to a child and remembers why (once: the first reason is the one logged).
    pub(super) fn kill_child(&mut self, pid: i32, reason: KillReason) {
        let Some(c) = self.children.get_mut(&pid) else {
            return;
        };
        if matches!(c.state, ChildState::Killed { .. }) {
            return;
        }
        c.state = ChildState::Killed {
            reason,
            before: c.state.before(),
        };
        send(pid, Signal::SIGKILL);
    }

    /// Reads "ready" messages from children.
    pub(super) fn read_notifications(&mut self) {
        let Some(rx) = &self.ready_rx else { return };
        let mut chunk = [0u8; 512];
        loop {
            match nix::unistd::read(rx, &mut chunk) {
                Ok(0) => break,
                Ok(n) => self.ready_buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: drained
            }
        }
        let buf = std::mem::take(&mut self.ready_buf);
        let mut msgs = buf.chunks_exact(READY_MESSAGE_LEN);
        for msg in &mut msgs {
            let pid = ready_pid(msg.try_into().expect("chunks_exact"));
            let Some(c) = self.children.get_mut(&pid) else {
                continue; // reaped already
            };
            if c.state == ChildState::Booting {
                c.state = ChildState::Ready;
            }
            let c = c.clone();
            match c.kind {
                ChildKind::Worker { generation, .. } => self.on_worker_ready(&c, generation),
                ChildKind::Hub => tracing::info!("{} ready", c.name()),
            }
        }
        self.ready_buf = msgs.remainder().to_vec();
    }

    /// Collects every child that has exited (SIGCHLD coalesces, so loop until none is left),
    /// gives its slot back and hands it to its kind's policy.
    pub(super) fn reap_children(&mut self) {
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::error!(cause = %err, "waitpid failed");
                    return;
                }
            };
            let Some(c) = self.children.remove(&pid) else {
                if !self.on_check_exit(pid, exit) {
                    tracing::debug!(pid, "reaped a child that is not ours");
                }
                continue;
            };
            self.scoreboard.release(c.slot);
            match c.kind {
                ChildKind::Worker { .. } => self.on_worker_exit(&c, exit),
                ChildKind::Hub => self.on_hub_exit(&c, exit),
            }
        }
    }

    /// Kills children whose heartbeat is older than `--timeout`: alive, but not serving.
    /// SIGKILL at once: a wedged child will not run a graceful path, and a stopped one
    /// (SIGSTOP) cannot act on anything else.
    pub(super) fn murder_children(&mut self) {
        let Some(timeout) = self.config.timeout else {
            return;
        };
        let wedged = wedged(&self.children, timeout, |slot| {
            self.scoreboard.slot(slot).beat_age_ms()
        });
        for (pid, age) in wedged {
            if let Some(c) = self.children.get(&pid) {
                tracing::error!(
                    "{} missed its heartbeat for {}s: killing",
                    c.name(),
                    (age as f64 / 1000.0).round()
                );
            }
            self.kill_child(pid, KillReason::Heartbeat);
        }
    }

    /// SIGKILL for children that outlived their stop signal's grace period.
    pub(super) fn escalate_stops(&mut self) {
        let late = overdue(&self.children, Instant::now(), |kind, sig| {
            self.stop_grace(kind, sig)
        });
        for (pid, sig) in late {
            if let Some(c) = self.children.get(&pid) {
                tracing::warn!("{} did not exit after {sig}: killing", c.name());
            }
            self.kill_child(pid, KillReason::StopTimeout);
        }
    }

    /// The pids of the children `keep` selects.
    pub(super) fn pids(&self, mut keep: impl FnMut(&Child) -> bool) -> Vec<i32> {
        self.children
            .values()
            .filter(|c| keep(c))
            .map(|c| c.pid)
            .collect()
    }

    /// How long a child gets after `sig` before SIGKILL.
    fn stop_grace(&self, kind: ChildKind, sig: Signal) -> Duration {
        match kind {
            ChildKind::Hub => super::hub::HUB_STOP_GRACE,
            ChildKind::Worker { .. } if sig == Signal::SIGTERM => {
                self.config.graceful_timeout + super::GRACE_MARGIN
            }
            ChildKind::Worker { .. } => super::FAST_STOP_GRACE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ChildState::Ready;

    fn table(rows: &[(i32, ChildState)]) -> Children {
        rows.iter()
            .map(|&(pid, state)| {
                let kind = if pid == 0 {
                    ChildKind::Hub
                } else {
                    ChildKind::Worker {
                        generation: 1,
                        age: pid as u64,
                    }
                };
                let c = Child::new(pid, pid as usize, kind, state);
                (pid, c)
            })
            .collect()
    }

    fn stopping(since: Instant) -> ChildState {
        ChildState::Stopping {
            signal: Signal::SIGTERM,
            since,
        }
    }

    #[test]
    fn a_child_whose_beat_is_older_than_the_timeout_is_wedged_once() {
        let t = table(&[
            (0, Ready),
            (1, Ready),
            (2, Ready),
            (
                3,
                ChildState::Killed {
                    reason: KillReason::Heartbeat,
                    before: Before::Ready,
                },
            ),
        ]);
        let ages = |slot: usize| if slot == 1 { 100 } else { 5_000 };
        assert_eq!(
            wedged(&t, Duration::from_secs(2), ages),
            [(0, 5_000), (2, 5_000)],
            "the hub (pid 0 here) is checked like a worker"
        );
    }

    #[test]
    fn a_stop_is_escalated_after_its_kind_s_grace_period() {
        let now = Instant::now();
        let t = table(&[
            (0, stopping(now - Duration::from_secs(3))),
            (1, stopping(now - Duration::from_secs(5))),
            (2, stopping(now - Duration::from_secs(3))),
            (3, Ready),
        ]);
        let grace = |kind: ChildKind, _: Signal| match kind {
            ChildKind::Hub => Duration::from_secs(2),
            ChildKind::Worker { .. } => Duration::from_secs(4),
        };
        assert_eq!(
            overdue(&t, now, grace),
            [(0, Signal::SIGTERM), (1, Signal::SIGTERM)]
        );
    }

    #[test]
    fn what_an_exit_means_depends_on_the_state_it_was_in() {
        assert!(ChildState::Booting.boot_failure());
        assert!(!ChildState::Booting.asked());
        let stopped_booting = ChildState::Stopping {
            signal: Signal::SIGTERM,
            since: Instant::now(),
        };
        assert!(stopped_booting.asked() && !stopped_booting.boot_failure());
        let wedged_booting = ChildState::Killed {
            reason: KillReason::Heartbeat,
            before: Before::Booting,
        };
        assert!(wedged_booting.boot_failure() && !wedged_booting.asked());
        let wedged_stopping = ChildState::Killed {
            reason: KillReason::Heartbeat,
            before: Before::Stopping(Signal::SIGQUIT),
        };
        assert!(wedged_stopping.asked());
        assert_eq!(wedged_stopping.stop_signal(), Some(Signal::SIGQUIT));
        let rolled_back = ChildState::Killed {
            reason: KillReason::Rollback,
            before: Before::Booting,
        };
        assert!(rolled_back.asked() && !rolled_back.boot_failure());
    }
}
