//! The worker table's decisions, as plain functions of the table: how many workers to start,
//! which to stop (oldest first), when a reload has succeeded (every new worker ready: retire
//! the old generation) or must be rolled back (the new one never boots), the boot back-off and
//! the halt. They read no clock and make no syscall, so each is unit-tested below without a
//! fork.
//!
//! The arbiter applies them (`manage_workers`), and reports worker exits and ready messages
//! (`on_worker_exit`, `on_worker_ready`), which update the boot bookkeeping the decisions read.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::children::{Child, ChildKind, ChildState, Children, Exit, KillReason, SpawnError};
use super::{Arbiter, Phase};
use crate::exit::WORKER_BOOT_ERROR;

/// Boot failures in a row, with no worker of the generation ever ready, before giving up.
pub const MAX_BOOT_FAILURES: u32 = 5;

/// Boot-failure bookkeeping for the current generation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Boot {
    /// Workers that died before reporting ready, in a row.
    pub failures: u32,
    /// Whether any worker of this generation has been ready: after that, failures only slow
    /// the respawns down, they never stop the server.
    pub ever_ready: bool,
    /// No spawn before this instant (exponential back-off).
    pub retry_at: Option<Instant>,
}

/// Back-off before the next spawn after `failures` boot failures in a row: 100 ms, doubling,
/// at most 10 s.
pub(super) fn boot_backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(10_000))
}

/// The phase as the decisions see it (the arbiter's [`Phase`] without its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PhaseKind {
    /// Serving, nothing in progress.
    Running,
    /// A reload started a new generation and has not retired the old one yet.
    Reloading,
    /// Stopping: no worker is started or retired any more.
    Stopping,
}

/// What the arbiter should do to the worker table, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Fork this many workers of the current generation.
    Spawn(usize),
    /// Stop this worker gracefully (SIGTERM): an extra one, or one of a retired generation.
    Stop(i32),
    /// SIGKILL this worker.
    Kill(i32, KillReason),
    /// The reload succeeded: close the listeners it dropped, go back to running. `ready` new
    /// workers serve, `retired` old ones were told to stop just before.
    CompleteReload {
        /// Ready workers of the new generation.
        ready: usize,
        /// Old workers told to stop.
        retired: usize,
    },
    /// The reload's workers never booted: go back to the previous configuration.
    Rollback,
    /// No worker ever boots: stop everything and exit [`crate::exit::HALT_BOOT_FAILURE`].
    Halt,
}

/// The worker table's pool: what the decisions compare the table with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pool {
    /// Workers of the current generation to keep.
    pub target: usize,
    /// The current generation.
    pub generation: u64,
}

/// Decides what to do with the workers this turn.
///
/// - Stopping: nothing (the stop itself signals every worker; `overdue` escalates).
/// - More live workers of the current generation than the target: stop the oldest extra ones.
/// - Fewer: if workers kept failing to boot and none of this generation was ever ready, roll
///   the reload back (killing its workers) or, with nothing to go back to, halt; else, once the
///   boot back-off has passed, spawn the missing ones.
/// - Reloading, and as many current workers ready as the target: stop every older worker and
///   complete the reload.
pub(super) fn plan(
    children: &Children,
    pool: Pool,
    phase: PhaseKind,
    boot: &Boot,
    now: Instant,
) -> Vec<Action> {
    if phase == PhaseKind::Stopping {
        return Vec::new();
    }
    let mut actions = Vec::new();
    let mut current: Vec<(u64, i32)> = workers(children)
        .filter(|(c, generation, _)| *generation == pool.generation && c.state.live())
        .map(|(c, _, age)| (age, c.pid))
        .collect();
    current.sort_unstable();
    let mut stopped = Vec::new();
    if current.len() > pool.target {
        let extra = current.len() - pool.target;
        for &(_, pid) in &current[..extra] {
            actions.push(Action::Stop(pid));
            stopped.push(pid);
        }
    } else if current.len() < pool.target {
        if !boot.ever_ready && boot.failures >= MAX_BOOT_FAILURES {
            if phase == PhaseKind::Reloading {
                for (c, generation, _) in workers(children) {
                    if generation == pool.generation && !c.state.asked() {
                        actions.push(Action::Kill(c.pid, KillReason::Rollback));
                    }
                }
                actions.push(Action::Rollback);
            } else {
                actions.push(Action::Halt);
            }
            return actions;
        }
        if boot.retry_at.is_none_or(|at| now >= at) {
            actions.push(Action::Spawn(pool.target - current.len()));
        }
    }
    if phase == PhaseKind::Reloading {
        let ready = workers(children)
            .filter(|(c, generation, _)| {
                *generation == pool.generation
                    && c.state == ChildState::Ready
                    && !stopped.contains(&c.pid)
            })
            .count();
        if ready >= pool.target {
            let old: Vec<i32> = workers(children)
                .filter(|(c, generation, _)| *generation < pool.generation && c.state.live())
                .map(|(c, _, _)| c.pid)
                .collect();
            let retired = old.len();
            actions.extend(old.into_iter().map(Action::Stop));
            actions.push(Action::CompleteReload { ready, retired });
        }
    }
    actions
}

/// The workers of the table, with their generation and age.
fn workers(children: &Children) -> impl Iterator<Item = (&Child, u64, u64)> {
    children.values().filter_map(|c| match c.kind {
        ChildKind::Worker { generation, age } => Some((c, generation, age)),
        ChildKind::Hub => None,
    })
}

impl Arbiter {
    /// Brings the worker table to the plan: spawns, stops, kills, completes or rolls back a
    /// reload, or halts.
    pub(super) fn manage_workers(&mut self) {
        let pool = Pool {
            target: self.target,
            generation: self.generation,
        };
        let actions = plan(
            &self.children,
            pool,
            self.phase.kind(),
            &self.boot,
            Instant::now(),
        );
        for action in actions {
            match action {
                Action::Spawn(n) => self.spawn_workers(n),
                Action::Stop(pid) => self.stop_child(pid, Signal::SIGTERM),
                Action::Kill(pid, reason) => self.kill_child(pid, reason),
                Action::CompleteReload { ready, retired } => self.complete_reload(ready, retired),
                Action::Rollback => self.rollback_reload(),
                Action::Halt => self.halt_boot_failure(),
            }
        }
    }

    fn spawn_workers(&mut self, n: usize) {
        self.boot.retry_at = None;
        for _ in 0..n {
            match self.spawn_child(super::children::Spawn::Worker) {
                Ok(pid) => tracing::debug!(pid, "spawned worker"),
                Err(SpawnError::NoSlot) => {
                    tracing::error!("no free scoreboard slot: cannot start another worker");
                }
                Err(SpawnError::Fork(err)) => {
                    tracing::error!(cause = %err, "fork failed; retrying in 1s");
                    self.boot.retry_at = Some(Instant::now() + Duration::from_secs(1));
                    break;
                }
            }
        }
        tracing::debug!("{}", self.describe());
    }

    /// A worker said ready: a generation that boots resets its failure count.
    pub(super) fn on_worker_ready(&mut self, c: &Child, generation: u64) {
        if generation == self.generation {
            self.boot.failures = 0;
            self.boot.ever_ready = true;
            self.boot.retry_at = None;
        }
        tracing::info!("{} booted", c.name());
    }

    /// A worker was reaped: log why it ended, at the level the operator must act on, and
    /// count a boot failure if it died unasked before it was ever ready.
    pub(super) fn on_worker_exit(&mut self, c: &Child, exit: Exit) {
        let name = c.name();
        let stopping = matches!(self.phase, Phase::Stopping(_));
        let asked = c.state.asked() || stopping;
        let killed = match c.state {
            ChildState::Killed { reason, .. } => Some(reason),
            _ => None,
        };
        match (exit, killed) {
            (Exit::Code(0), _) if asked => tracing::info!("{name} exited"),
            (Exit::Code(0), _) => tracing::warn!("{name} exited unexpectedly (code 0)"),
            (Exit::Code(WORKER_BOOT_ERROR), _) => {
                tracing::error!("{name} failed to boot (exit code {WORKER_BOOT_ERROR})")
            }
            (Exit::Code(code), _) => tracing::error!("{name} exited with code {code}"),
            (Exit::Signal(Signal::SIGKILL), Some(KillReason::Heartbeat)) => {
                tracing::warn!("{name} killed (heartbeat timeout)")
            }
            (Exit::Signal(Signal::SIGKILL), Some(KillReason::StopTimeout)) => {
                tracing::warn!("{name} killed (did not stop in time)")
            }
            (Exit::Signal(Signal::SIGKILL), Some(KillReason::Rollback)) => {
                tracing::info!("{name} killed")
            }
            (Exit::Signal(Signal::SIGKILL), None) => {
                tracing::error!("{name} was killed by SIGKILL — out of memory?")
            }
            (Exit::Signal(sig), _) if c.state.stop_signal() == Some(sig) => {
                tracing::info!("{name} stopped by {sig}")
            }
            (Exit::Signal(sig), _) => tracing::error!("{name} was killed by {sig}"),
        }

        if c.state.boot_failure() && !stopping && c.generation() == Some(self.generation) {
            self.boot.failures += 1;
            let wait = boot_backoff(self.boot.failures);
            self.boot.retry_at = Some(Instant::now() + wait);
            if !self.boot.ever_ready && self.boot.failures < MAX_BOOT_FAILURES {
                tracing::warn!(
                    "worker boot failure {} of {MAX_BOOT_FAILURES}: next attempt in {}ms",
                    self.boot.failures,
                    wait.as_millis()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: Pool = Pool {
        target: 2,
        generation: 2,
    };

    fn table(rows: &[(i32, u64, ChildState)]) -> Children {
        rows.iter()
            .map(|&(pid, generation, state)| {
                let c = Child {
                    pid,
                    slot: pid as usize,
                    kind: ChildKind::Worker {
                        generation,
                        age: pid as u64,
                    },
                    state,
                    started: Instant::now(),
                };
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

    use ChildState::{Booting, Ready};

    #[test]
    fn boot_backoff_doubles_and_caps() {
        assert_eq!(boot_backoff(1), Duration::from_millis(100));
        assert_eq!(boot_backoff(2), Duration::from_millis(200));
        assert_eq!(boot_backoff(4), Duration::from_millis(800));
        assert_eq!(boot_backoff(40), Duration::from_secs(10));
    }

    #[test]
    fn missing_workers_are_spawned_after_the_back_off() {
        let now = Instant::now();
        let t = table(&[(10, 2, Ready)]);
        let boot = Boot::default();
        assert_eq!(
            plan(&t, POOL, PhaseKind::Running, &boot, now),
            [Action::Spawn(1)]
        );
        let later = Boot {
            failures: 1,
            retry_at: Some(now + Duration::from_millis(100)),
            ..Boot::default()
        };
        assert_eq!(plan(&t, POOL, PhaseKind::Running, &later, now), []);
        assert_eq!(
            plan(
                &t,
                POOL,
                PhaseKind::Running,
                &later,
                now + Duration::from_millis(100)
            ),
            [Action::Spawn(1)]
        );
    }

    #[test]
    fn stopping_or_killed_workers_do_not_count_towards_the_target() {
        let now = Instant::now();
        let t = table(&[
            (10, 2, Ready),
            (11, 2, stopping(now)),
            (
                12,
                2,
                ChildState::Killed {
                    reason: KillReason::Heartbeat,
                    before: super::super::children::Before::Ready,
                },
            ),
        ]);
        let boot = Boot::default();
        assert_eq!(
            plan(&t, POOL, PhaseKind::Running, &boot, now),
            [Action::Spawn(1)]
        );
    }

    #[test]
    fn extra_workers_are_stopped_oldest_first() {
        let t = table(&[
            (30, 2, Ready),
            (10, 2, Ready),
            (20, 2, Booting),
            (40, 2, Ready),
        ]);
        let boot = Boot::default();
        assert_eq!(
            plan(&t, POOL, PhaseKind::Running, &boot, Instant::now()),
            [Action::Stop(10), Action::Stop(20)]
        );
    }

    #[test]
    fn workers_that_never_boot_halt_the_server() {
        let boot = Boot {
            failures: MAX_BOOT_FAILURES,
            ..Boot::default()
        };
        assert_eq!(
            plan(&table(&[]), POOL, PhaseKind::Running, &boot, Instant::now()),
            [Action::Halt]
        );
        // Once a worker of the generation was ready, failures only slow the respawns.
        let booted_once = Boot {
            ever_ready: true,
            ..boot
        };
        assert_eq!(
            plan(
                &table(&[]),
                POOL,
                PhaseKind::Running,
                &booted_once,
                Instant::now()
            ),
            [Action::Spawn(2)]
        );
    }

    #[test]
    fn a_reload_completes_once_every_new_worker_is_ready() {
        let now = Instant::now();
        let boot = Boot::default();
        let half = table(&[(1, 1, Ready), (2, 1, Ready), (3, 2, Ready), (4, 2, Booting)]);
        assert_eq!(plan(&half, POOL, PhaseKind::Reloading, &boot, now), []);
        let all = table(&[
            (1, 1, Ready),
            (2, 1, Ready),
            (5, 1, stopping(now)),
            (3, 2, Ready),
            (4, 2, Ready),
        ]);
        assert_eq!(
            plan(&all, POOL, PhaseKind::Reloading, &boot, now),
            [
                Action::Stop(1),
                Action::Stop(2),
                Action::CompleteReload {
                    ready: 2,
                    retired: 2
                }
            ]
        );
        // Running: the same table retires nothing (there is no reload to complete).
        assert_eq!(plan(&all, POOL, PhaseKind::Running, &boot, now), []);
    }

    #[test]
    fn a_reload_whose_workers_never_boot_is_rolled_back() {
        let boot = Boot {
            failures: MAX_BOOT_FAILURES,
            ..Boot::default()
        };
        let t = table(&[(1, 1, Ready), (2, 1, Ready), (3, 2, Booting)]);
        assert_eq!(
            plan(&t, POOL, PhaseKind::Reloading, &boot, Instant::now()),
            [Action::Kill(3, KillReason::Rollback), Action::Rollback]
        );
    }

    #[test]
    fn nothing_is_planned_while_stopping() {
        let t = table(&[(1, 2, Ready)]);
        assert_eq!(
            plan(
                &t,
                POOL,
                PhaseKind::Stopping,
                &Boot::default(),
                Instant::now()
            ),
            []
        );
    }
}
