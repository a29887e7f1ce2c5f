//! The worker table's decisions, as plain functions of the table: how many workers to start
//! and which to retire in a rolling replacement (one `--max-surge` at a time, each old worker
//! retired only once a new one is ready: `plan`), when a roll is complete or must be rolled
//! back (new workers that never boot, or not within `--boot-timeout`), which workers to
//! recycle (`--max-requests`, `--max-worker-memory`: `to_recycle`), the boot back-off and the
//! halt. They read no clock (`now` is passed in) and make no syscall, so each is unit-tested
//! below without a fork.
//!
//! The arbiter applies them (`manage_workers`; every retirement goes through
//! `retire_worker`), and reports worker exits and ready messages (`on_worker_exit`,
//! `on_worker_ready`), which update the boot bookkeeping the decisions read.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::children::{
    Child, ChildKind, ChildState, Children, Exit, KillReason, Replace, SpawnError,
};
use super::{Arbiter, Phase};
use crate::exit::WORKER_BOOT_ERROR;

/// How long a retired worker still draining counts towards `--max-surge`. Idle workers exit
/// within milliseconds, so a roll keeps its surge exactly; a worker holding long-lived
/// connections (chat members, a slow download) may drain for `--graceful-timeout`, and the
/// roll does not wait that long for each step (Kubernetes does not count terminating pods in
/// `maxSurge` at all).
pub const SURGE_DRAIN_WAIT: Duration = Duration::from_secs(2);

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
    /// Serving, nothing in progress (recycling and scaling still roll workers one surge at a
    /// time).
    Running,
    /// A reload or an upgrade started a new generation and the old one is not all retired.
    Rolling,
    /// Stopping: no worker is started or retired any more.
    Stopping,
}

/// Why a roll is given up and the old generation kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RollbackWhy {
    /// New workers died before they were ready, this many times in a row.
    BootFailures(u32),
    /// A new worker did not say ready within `--boot-timeout`.
    BootTimeout(Duration),
}

impl std::fmt::Display for RollbackWhy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RollbackWhy::BootFailures(n) => {
                write!(f, "the new workers did not boot ({n} attempts)")
            }
            RollbackWhy::BootTimeout(t) => write!(
                f,
                "a new worker was not ready within --boot-timeout ({})",
                crate::config::show_duration(Some(*t))
            ),
        }
    }
}

/// Why a worker is retired (told to drain and exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RetireWhy {
    /// Its generation was replaced (reload, upgrade, rollback) and its replacement is ready.
    Replaced,
    /// It was marked for recycling and its replacement is ready.
    Recycled(Replace),
    /// The worker count was lowered (oldest first).
    ScaledDown,
}

/// What the arbiter should do to the worker table, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Fork this many workers of the current generation.
    Spawn(usize),
    /// Retire this worker gracefully (`Arbiter::retire_worker`: SIGTERM, drain).
    Retire(i32, RetireWhy),
    /// SIGKILL this worker.
    Kill(i32, KillReason),
    /// The roll is done: every worker of an older generation was retired and `ready` workers
    /// of the current one serve. Close the listeners it dropped, go back to running.
    CompleteRoll {
        /// Ready workers of the new generation.
        ready: usize,
    },
    /// The roll's workers did not boot: go back to the previous configuration (or image).
    Rollback(RollbackWhy),
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
    /// Extra worker processes allowed above `target` while workers are replaced.
    pub max_surge: usize,
    /// How long a new worker may boot before it is killed and the roll stopped.
    pub boot_timeout: Duration,
}

/// Decides what to do with the workers this turn. Every replacement, whatever started it
/// (HUP, USR2, recycling, a rollback), goes the same way: start one, wait until it is ready,
/// then retire one it replaces; at most `max_surge` worker processes above the target exist
/// at any time (draining ones count, an app's database pool living until the process exits,
/// but only for [`SURGE_DRAIN_WAIT`]: a roll does not stall on a worker's long connections).
///
/// - Stopping: nothing (the stop itself signals every worker; `overdue` escalates).
/// - A worker of the current generation booting for longer than `boot_timeout` is killed;
///   during a roll that also rolls it back.
/// - *Keepers* are live workers of the current generation not marked for replacement;
///   *outgoing* ones are live workers of another generation or marked for replacement.
/// - More keepers than the target: retire the oldest extra ones (scaling down).
/// - Outgoing workers that are still booting serve nothing: retired at once. Ready ones are
///   retired, oldest first, only as far as ready keepers make up for them, so the ready
///   count never falls below the target because of a roll.
/// - Fewer keepers than the target: if workers kept failing to boot and none of this
///   generation was ever ready, roll back (during a roll) or halt; else, after the boot
///   back-off, spawn the missing ones within the surge (a pool below its target always may
///   spawn up to the target: a crashed worker is replaced even while others drain).
/// - Rolling, no outgoing worker of an older generation left and the keepers ready: the roll
///   is complete.
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
    let mut late = Vec::new();
    // (age, pid, ready) for each kind of worker, oldest first.
    let mut keep: Vec<(u64, i32, bool)> = Vec::new();
    let mut outgoing: Vec<(u64, i32, bool, Option<Replace>)> = Vec::new();
    let mut draining = 0usize;
    for (c, generation, age) in workers(children) {
        if !c.state.live() {
            // A retired worker holds the surge while it drains, but not forever: one still
            // draining after `SURGE_DRAIN_WAIT` holds long-lived connections (or is wedged),
            // and the roll goes on without waiting for it.
            let holds = match c.state {
                ChildState::Stopping { since, .. } => {
                    now.saturating_duration_since(since) <= SURGE_DRAIN_WAIT
                }
                _ => true,
            };
            draining += usize::from(holds);
            continue;
        }
        let ready = c.state == ChildState::Ready;
        if generation == pool.generation && c.replace.is_none() {
            if !ready && now.saturating_duration_since(c.started) > pool.boot_timeout {
                late.push(c.pid);
                draining += 1;
            } else {
                keep.push((age, c.pid, ready));
            }
        } else {
            outgoing.push((age, c.pid, ready, c.replace));
        }
    }
    keep.sort_unstable();
    outgoing.sort_unstable_by_key(|&(age, pid, ready, _)| (ready, age, pid));
    if !late.is_empty() {
        actions.extend(
            late.iter()
                .map(|&pid| Action::Kill(pid, KillReason::BootTimeout)),
        );
        if phase == PhaseKind::Rolling {
            for &(_, pid, ready) in &keep {
                if !ready {
                    actions.push(Action::Kill(pid, KillReason::Rollback));
                }
            }
            actions.push(Action::Rollback(RollbackWhy::BootTimeout(
                pool.boot_timeout,
            )));
        }
        // Running: its death counts as a boot failure when reaped, which sets the back-off
        // before the next spawn.
        return actions;
    }
    if keep.len() < pool.target && !boot.ever_ready && boot.failures >= MAX_BOOT_FAILURES {
        if phase == PhaseKind::Rolling {
            for &(_, pid, _) in &keep {
                actions.push(Action::Kill(pid, KillReason::Rollback));
            }
            actions.push(Action::Rollback(RollbackWhy::BootFailures(boot.failures)));
        } else {
            actions.push(Action::Halt);
        }
        return actions;
    }

    // Scaling down: the oldest extra keepers go.
    let mut retiring = 0usize;
    if keep.len() > pool.target {
        let extra = keep.len() - pool.target;
        for &(_, pid, _) in &keep[..extra] {
            actions.push(Action::Retire(pid, RetireWhy::ScaledDown));
        }
        keep.drain(..extra);
        retiring += extra;
    }
    // Outgoing workers go as far as ready keepers replace them (booting ones at once).
    let keep_ready = keep.iter().filter(|k| k.2).count();
    let out_ready = outgoing.iter().filter(|o| o.2).count();
    let may_go = (keep_ready + out_ready).saturating_sub(pool.target);
    let mut ready_gone = 0;
    let mut staying = 0usize;
    for &(_, pid, ready, replace) in &outgoing {
        if ready && ready_gone >= may_go {
            staying += 1;
            continue;
        }
        ready_gone += usize::from(ready);
        let why = replace.map_or(RetireWhy::Replaced, RetireWhy::Recycled);
        actions.push(Action::Retire(pid, why));
        retiring += 1;
    }

    if keep.len() < pool.target && boot.retry_at.is_none_or(|at| now >= at) {
        let live = keep.len() + staying;
        let processes = live + retiring + draining;
        let room = pool
            .target
            .saturating_sub(live)
            .max((pool.target + pool.max_surge).saturating_sub(processes));
        let n = (pool.target - keep.len()).min(room);
        if n > 0 {
            actions.push(Action::Spawn(n));
        }
    }
    if phase == PhaseKind::Rolling && staying == 0 && keep_ready >= pool.target {
        actions.push(Action::CompleteRoll { ready: keep_ready });
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

/// The workers to mark for replacement, with why: those that served at least their request
/// limit (`served` reads a slot's count), and those whose resident memory (`rss_mib` reads a
/// pid's, `None` if unknown) passes `max_memory_mib`. Only ready, unmarked workers are
/// considered: one still booting has served nothing, and a marked one is being replaced.
pub(super) fn to_recycle(
    children: &Children,
    max_memory_mib: Option<u64>,
    served: impl Fn(usize) -> u64,
    rss_mib: impl Fn(i32) -> Option<u64>,
) -> Vec<(i32, Replace)> {
    workers(children)
        .map(|(c, _, _)| c)
        .filter(|c| c.state == ChildState::Ready && c.replace.is_none())
        .filter_map(|c| {
            if let Some(limit) = c.request_limit {
                let n = served(c.slot);
                if n >= limit {
                    return Some((c.pid, Replace::Requests(n)));
                }
            }
            let max = max_memory_mib?;
            let rss = rss_mib(c.pid)?;
            (rss > max).then_some((c.pid, Replace::Memory(rss)))
        })
        .collect()
}

/// How long until a worker with `left` requests to go before its limit, serving `per_second`,
/// reaches it: at least [`super::RECYCLE_MIN`], at most [`super::RECYCLE_TICK`] (also for
/// an idle worker).
pub(super) fn recycle_wait(left: u64, per_second: f64) -> Duration {
    if per_second <= 0.0 {
        return super::RECYCLE_TICK;
    }
    Duration::try_from_secs_f64(left as f64 / per_second)
        .unwrap_or(super::RECYCLE_TICK)
        .clamp(super::RECYCLE_MIN, super::RECYCLE_TICK)
}

/// A worker's resident set size in MiB, from `/proc/PID/statm` (its second field, in pages);
/// `None` once the process is gone.
pub(super) fn rss_mib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    let page = rustix::param::page_size() as u64;
    Some(pages * page / (1024 * 1024))
}

/// A small pseudo-random number generator for the request-limit jitter (splitmix64): the
/// jitter only has to differ between workers, not resist prediction, so no dependency.
#[derive(Debug, Clone, Copy)]
pub(super) struct Jitter(u64);

impl Jitter {
    /// Seeded from the pid and the clock, so two servers started together differ.
    pub(super) fn seeded() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(t ^ (u64::from(std::process::id()) << 32))
    }

    /// A number in `0..=max`.
    pub(super) fn up_to(&mut self, max: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        if max == u64::MAX { z } else { z % (max + 1) }
    }
}

impl Arbiter {
    /// Brings the worker table to the plan: marks workers for recycling, then spawns,
    /// retires, kills, completes or rolls back a roll, or halts.
    pub(super) fn manage_workers(&mut self) {
        self.check_recycling();
        let pool = Pool {
            target: self.target,
            generation: self.generation,
            max_surge: self.config.max_surge,
            boot_timeout: self.config.boot_timeout,
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
                Action::Retire(pid, why) => self.retire_worker(pid, why),
                Action::Kill(pid, reason) => {
                    if reason == KillReason::BootTimeout
                        && let Some(c) = self.children.get(&pid)
                    {
                        tracing::error!(
                            "{} was not ready within --boot-timeout ({}): killing",
                            c.name(),
                            crate::config::show_duration(Some(self.config.boot_timeout))
                        );
                    }
                    self.kill_child(pid, reason)
                }
                Action::CompleteRoll { ready } => self.complete_roll(ready),
                Action::Rollback(why) => self.rollback_roll(why),
                Action::Halt => self.halt_boot_failure(),
            }
        }
    }

    /// The one way a worker leaves the pool while the server runs (a roll, recycling, scaling
    /// down): it is told to drain (SIGTERM: it stops accepting, finishes its connections within
    /// `--graceful-timeout`, exits). A stop of the whole server does not come here.
    ///
    /// SIGUSR2 goes first: it tells the worker this is a retirement, not a stop, so a worker
    /// that can hand its long-lived connections to a ready one (the connection handoff, issue
    /// 10) does so before it drains; a worker that cannot ignores USR2 (`ChildSignals`). The
    /// plan only retires a worker once a replacement is ready (or, scaling down, while others
    /// serve), so there is always someone to hand over to.
    pub(super) fn retire_worker(&mut self, pid: i32, why: RetireWhy) {
        if let Some(c) = self.children.get(&pid) {
            let name = c.name();
            match why {
                RetireWhy::Replaced => tracing::info!("retiring {name}: its replacement is ready"),
                RetireWhy::Recycled(_) => {
                    tracing::info!("retiring {name}: recycled, its replacement is ready")
                }
                RetireWhy::ScaledDown => tracing::info!("retiring {name}: scaling down"),
            }
            if c.state == ChildState::Booting {
                // Nothing to drain or hand over yet (an outgoing worker that never got ready).
                self.stop_child(pid, Signal::SIGQUIT);
                return;
            }
            if c.state.live() {
                super::children::send(pid, Signal::SIGUSR2);
            }
        }
        self.stop_child(pid, Signal::SIGTERM);
    }

    /// Marks workers past `--max-requests` (plus their jitter) or `--max-worker-memory` for
    /// replacement; the plan starts their replacements and retires them once those are ready.
    fn check_recycling(&mut self) {
        if matches!(self.phase, Phase::Stopping(_))
            || (self.config.max_requests.is_none() && self.config.max_worker_memory.is_none())
        {
            self.recycle_at = None;
            return;
        }
        let scoreboard = self.scoreboard;
        let marked = to_recycle(
            &self.children,
            self.config.max_worker_memory,
            |slot| {
                let s = scoreboard.slot(slot);
                // Requests for HTTP services, connections for the others (which count none).
                s.requests
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .max(s.accepted.load(std::sync::atomic::Ordering::Relaxed))
            },
            rss_mib,
        );
        // A check already planned still stands: this turn may have come too soon after it was
        // planned to sample the worker it was planned for.
        let now = Instant::now();
        let planned = self.recycle_at.filter(|&at| at > now);
        self.recycle_at = match (self.next_recycle_check(now), planned) {
            (Some(next), Some(planned)) => Some(next.min(planned)),
            (next, _) => next,
        };
        for (pid, why) in marked {
            let Some(c) = self.children.get_mut(&pid) else {
                continue;
            };
            c.replace = Some(why);
            match why {
                Replace::Requests(n) => tracing::info!(
                    "{} served {n} requests (limit {}): replacing it",
                    c.name(),
                    c.request_limit.unwrap_or(0)
                ),
                Replace::Memory(mib) => tracing::info!(
                    "{} uses {mib} MiB (limit {} MiB): replacing it",
                    c.name(),
                    self.config.max_worker_memory.unwrap_or(0)
                ),
            }
        }
    }

    /// Samples each serving worker's request count and returns when the next recycle check is
    /// due: when the first of them is expected to reach its limit at its current rate
    /// ([`recycle_wait`]). Looking only every [`super::RECYCLE_TICK`] let a worker serving
    /// 25,000 requests a second overshoot `--max-requests 5000` by half (a median of ~7,400
    /// served when marked, in `benches/churn.sh`), and let several workers cross their limits
    /// between two looks and be replaced at once.
    fn next_recycle_check(&mut self, now: Instant) -> Option<Instant> {
        self.config.max_requests?;
        let scoreboard = self.scoreboard;
        let mut wait = super::RECYCLE_TICK;
        for c in self.children.values_mut() {
            if !matches!(c.kind, ChildKind::Worker { .. })
                || c.state != ChildState::Ready
                || c.replace.is_some()
            {
                continue;
            }
            let Some(limit) = c.request_limit else {
                continue;
            };
            let s = scoreboard.slot(c.slot);
            let n = s
                .requests
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(s.accepted.load(std::sync::atomic::Ordering::Relaxed));
            match c.served {
                Some((before, at)) => {
                    let elapsed = now.saturating_duration_since(at);
                    // Too short a span gives a rate of noise; keep the older sample.
                    if elapsed < super::RECYCLE_MIN {
                        continue;
                    }
                    let per_second = n.saturating_sub(before) as f64 / elapsed.as_secs_f64();
                    wait = wait.min(recycle_wait(limit.saturating_sub(n), per_second));
                    c.served = Some((n, now));
                }
                None => c.served = Some((n, now)),
            }
        }
        Some(now + wait)
    }

    /// The request limit for a worker about to be forked: `--max-requests` plus a random
    /// `0..=--max-requests-jitter`.
    pub(super) fn request_limit(&mut self) -> Option<u64> {
        let n = self.config.max_requests?;
        Some(n.saturating_add(self.jitter.up_to(self.config.max_requests_jitter)))
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
        max_surge: 1,
        boot_timeout: Duration::from_secs(30),
    };

    fn table(rows: &[(i32, u64, ChildState)]) -> Children {
        rows.iter()
            .map(|&(pid, generation, state)| {
                let kind = ChildKind::Worker {
                    generation,
                    age: pid as u64,
                };
                (pid, Child::new(pid, pid as usize, kind, state))
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
    use PhaseKind::{Rolling, Running};

    /// Applies a plan to a table as the arbiter would, with every spawned worker booting and
    /// retired ones draining; returns the new table.
    fn apply(t: &mut Children, actions: &[Action], generation: u64, next_pid: &mut i32) {
        let now = Instant::now();
        for a in actions {
            match *a {
                Action::Spawn(n) => {
                    for _ in 0..n {
                        *next_pid += 1;
                        t.extend(table(&[(*next_pid, generation, Booting)]));
                    }
                }
                Action::Retire(pid, _) => t.get_mut(&pid).unwrap().state = stopping(now),
                Action::Kill(pid, _) => {
                    t.remove(&pid);
                }
                _ => {}
            }
        }
    }

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
        assert_eq!(plan(&t, POOL, Running, &boot, now), [Action::Spawn(1)]);
        let later = Boot {
            failures: 1,
            retry_at: Some(now + Duration::from_millis(100)),
            ..Boot::default()
        };
        assert_eq!(plan(&t, POOL, Running, &later, now), []);
        assert_eq!(
            plan(&t, POOL, Running, &later, now + Duration::from_millis(100)),
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
        // Below the target, a crashed worker is replaced even though others still drain.
        assert_eq!(
            plan(&t, POOL, Running, &Boot::default(), now),
            [Action::Spawn(1)]
        );
    }

    #[test]
    fn extra_workers_are_retired_oldest_first() {
        let t = table(&[
            (30, 2, Ready),
            (10, 2, Ready),
            (20, 2, Booting),
            (40, 2, Ready),
        ]);
        assert_eq!(
            plan(&t, POOL, Running, &Boot::default(), Instant::now()),
            [
                Action::Retire(10, RetireWhy::ScaledDown),
                Action::Retire(20, RetireWhy::ScaledDown)
            ]
        );
    }

    #[test]
    fn workers_that_never_boot_halt_the_server() {
        let boot = Boot {
            failures: MAX_BOOT_FAILURES,
            ..Boot::default()
        };
        assert_eq!(
            plan(&table(&[]), POOL, Running, &boot, Instant::now()),
            [Action::Halt]
        );
        // Once a worker of the generation was ready, failures only slow the respawns.
        let booted_once = Boot {
            ever_ready: true,
            ..boot
        };
        assert_eq!(
            plan(&table(&[]), POOL, Running, &booted_once, Instant::now()),
            [Action::Spawn(2)]
        );
    }

    #[test]
    fn a_roll_starts_one_surge_and_retires_an_old_worker_per_ready_new_one() {
        let now = Instant::now();
        let boot = Boot::default();
        let old = table(&[(1, 1, Ready), (2, 1, Ready)]);
        assert_eq!(plan(&old, POOL, Rolling, &boot, now), [Action::Spawn(1)]);
        // The new one boots: nothing more (the surge is used).
        let booting = table(&[(1, 1, Ready), (2, 1, Ready), (3, 2, Booting)]);
        assert_eq!(plan(&booting, POOL, Rolling, &boot, now), []);
        // Ready: the oldest old one is retired; the next new one waits for it to exit.
        let one = table(&[(1, 1, Ready), (2, 1, Ready), (3, 2, Ready)]);
        assert_eq!(
            plan(&one, POOL, Rolling, &boot, now),
            [Action::Retire(1, RetireWhy::Replaced)]
        );
        let draining = table(&[(1, 1, stopping(now)), (2, 1, Ready), (3, 2, Ready)]);
        assert_eq!(plan(&draining, POOL, Rolling, &boot, now), []);
        // Still draining after SURGE_DRAIN_WAIT (long connections, or wedged): the roll goes
        // on without it.
        let long = table(&[
            (
                1,
                1,
                stopping(now - SURGE_DRAIN_WAIT - Duration::from_millis(1)),
            ),
            (2, 1, Ready),
            (3, 2, Ready),
        ]);
        assert_eq!(plan(&long, POOL, Rolling, &boot, now), [Action::Spawn(1)]);
        let gone = table(&[(2, 1, Ready), (3, 2, Ready)]);
        assert_eq!(plan(&gone, POOL, Rolling, &boot, now), [Action::Spawn(1)]);
        let last = table(&[(2, 1, Ready), (3, 2, Ready), (4, 2, Ready)]);
        assert_eq!(
            plan(&last, POOL, Rolling, &boot, now),
            [
                Action::Retire(2, RetireWhy::Replaced),
                Action::CompleteRoll { ready: 2 }
            ]
        );
        // Running: an old generation left over (after a rollback) is replaced the same way.
        assert_eq!(
            plan(&last, POOL, Running, &boot, now),
            [Action::Retire(2, RetireWhy::Replaced)]
        );
    }

    #[test]
    fn a_whole_roll_never_exceeds_the_target_plus_the_surge() {
        for (target, surge) in [(4, 1), (4, 2), (8, 2), (1, 1), (3, 5)] {
            let pool = Pool {
                target,
                generation: 2,
                max_surge: surge,
                boot_timeout: Duration::from_secs(30),
            };
            let rows: Vec<_> = (1..=target as i32).map(|p| (p, 1, Ready)).collect();
            let mut t = table(&rows);
            let mut next = 100;
            let mut completed = false;
            for turn in 0..200 {
                let actions = plan(&t, pool, Rolling, &Boot::default(), Instant::now());
                apply(&mut t, &actions, 2, &mut next);
                assert!(
                    t.len() <= target + surge,
                    "{target}+{surge}, turn {turn}: {} processes",
                    t.len()
                );
                let ready: usize = t.values().filter(|c| c.state == Ready).count();
                assert!(
                    ready >= target,
                    "{target}+{surge}, turn {turn}: {ready} ready"
                );
                if actions.contains(&Action::CompleteRoll { ready: target }) {
                    completed = true;
                    break;
                }
                // Between turns: booting workers get ready, draining ones exit.
                t.retain(|_, c| c.state.live());
                for c in t.values_mut() {
                    c.state = Ready;
                }
            }
            assert!(completed, "{target}+{surge} never completed");
            assert!(
                t.values()
                    .filter(|c| c.state.live())
                    .all(|c| c.generation() == Some(2))
            );
        }
    }

    #[test]
    fn a_new_worker_not_ready_within_the_boot_timeout_stops_the_roll() {
        let now = Instant::now();
        let mut t = table(&[(1, 1, Ready), (2, 1, Ready), (3, 2, Booting)]);
        t.get_mut(&3).unwrap().started = now - Duration::from_secs(31);
        assert_eq!(
            plan(&t, POOL, Rolling, &Boot::default(), now),
            [
                Action::Kill(3, KillReason::BootTimeout),
                Action::Rollback(RollbackWhy::BootTimeout(POOL.boot_timeout))
            ]
        );
        // Running (a crashed worker's replacement): killed, counted as a boot failure, and
        // replaced after the back-off.
        let mut t = table(&[(1, 2, Ready), (3, 2, Booting)]);
        t.get_mut(&3).unwrap().started = now - Duration::from_secs(31);
        assert_eq!(
            plan(&t, POOL, Running, &Boot::default(), now),
            [Action::Kill(3, KillReason::BootTimeout)]
        );
    }

    #[test]
    fn a_roll_whose_workers_never_boot_is_rolled_back() {
        let boot = Boot {
            failures: MAX_BOOT_FAILURES,
            ..Boot::default()
        };
        let t = table(&[(1, 1, Ready), (2, 1, Ready), (3, 2, Booting)]);
        assert_eq!(
            plan(&t, POOL, Rolling, &boot, Instant::now()),
            [
                Action::Kill(3, KillReason::Rollback),
                Action::Rollback(RollbackWhy::BootFailures(MAX_BOOT_FAILURES))
            ]
        );
    }

    #[test]
    fn a_recycled_worker_serves_until_its_replacement_is_ready() {
        let now = Instant::now();
        let boot = Boot::default();
        let why = Replace::Requests(1000);
        let mut t = table(&[(1, 2, Ready), (2, 2, Ready)]);
        t.get_mut(&1).unwrap().replace = Some(why);
        assert_eq!(plan(&t, POOL, Running, &boot, now), [Action::Spawn(1)]);
        t.extend(table(&[(3, 2, Booting)]));
        assert_eq!(plan(&t, POOL, Running, &boot, now), []);
        t.get_mut(&3).unwrap().state = Ready;
        assert_eq!(
            plan(&t, POOL, Running, &boot, now),
            [Action::Retire(1, RetireWhy::Recycled(why))]
        );
        // Two marked at once with a surge of one: one replacement at a time.
        let mut t = table(&[(1, 2, Ready), (2, 2, Ready)]);
        for c in t.values_mut() {
            c.replace = Some(why);
        }
        assert_eq!(plan(&t, POOL, Running, &boot, now), [Action::Spawn(1)]);
    }

    #[test]
    fn workers_past_their_request_limit_or_memory_are_marked() {
        let mut t = table(&[(1, 2, Ready), (2, 2, Ready), (3, 2, Booting), (4, 2, Ready)]);
        for c in t.values_mut() {
            c.request_limit = Some(100);
        }
        t.get_mut(&4).unwrap().replace = Some(Replace::Requests(500));
        let served = |slot: usize| if slot == 1 { 100 } else { 50 };
        let rss = |pid: i32| Some(if pid == 2 { 300 } else { 10 });
        assert_eq!(
            to_recycle(&t, Some(256), served, rss),
            [(1, Replace::Requests(100)), (2, Replace::Memory(300))]
        );
        for c in t.values_mut() {
            c.request_limit = None;
        }
        assert_eq!(
            to_recycle(&t, Some(256), served, rss),
            [(2, Replace::Memory(300))]
        );
        assert_eq!(to_recycle(&t, None, served, rss), []);
    }

    /// The recycle check comes when the first worker should reach its limit: 25,000 requests
    /// a second with 500 to go is 20 ms; never sooner than RECYCLE_MIN nor later than
    /// RECYCLE_TICK (an idle worker, or one far from its limit).
    #[test]
    fn the_recycle_check_comes_when_a_worker_should_reach_its_limit() {
        use super::super::{RECYCLE_MIN, RECYCLE_TICK};
        assert_eq!(recycle_wait(500, 25_000.0), Duration::from_millis(20));
        assert_eq!(recycle_wait(0, 25_000.0), RECYCLE_MIN);
        assert_eq!(recycle_wait(5_000, 25_000.0), RECYCLE_TICK);
        assert_eq!(recycle_wait(5_000, 0.0), RECYCLE_TICK);
        assert_eq!(recycle_wait(1, 1e-300), RECYCLE_TICK);
    }

    #[test]
    fn jitter_stays_within_its_bound_and_varies() {
        let mut j = Jitter(42);
        let draws: Vec<u64> = (0..100).map(|_| j.up_to(10)).collect();
        assert!(draws.iter().all(|&d| d <= 10));
        assert!(draws.iter().any(|&d| d != draws[0]));
        assert_eq!(j.up_to(0), 0);
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
