//! The worker table: spawn, stop, reap, murder (heartbeat timeouts) and manage (restore the
//! count), with gunicorn's names for each.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::{Arbiter, MAX_BOOT_FAILURES};
use crate::child::ChildBoot;
use crate::exit::WORKER_BOOT_ERROR;
use crate::scoreboard::{SLOTS, SlotState};
use crate::worker::{self, WorkerBoot};

/// Why the arbiter sent SIGKILL, so the exit is reported as ours and not as the OOM killer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KillReason {
    /// Missed heartbeat.
    Heartbeat,
    /// Did not stop within its grace period.
    StopTimeout,
    /// A failed reload's worker.
    Rollback,
}

/// One worker as the arbiter tracks it.
#[derive(Debug)]
pub(super) struct Worker {
    pub pid: i32,
    /// 0-based scoreboard index; shown 1-based.
    pub slot: usize,
    /// Spawn order: lower is older.
    pub age: u64,
    pub generation: u64,
    /// Reported ready on the notification pipe.
    pub ready: bool,
    /// The stop signal sent, and when.
    pub stop: Option<(Signal, Instant)>,
    /// Set when we sent SIGKILL ourselves.
    pub killed: Option<KillReason>,
}

impl Worker {
    fn name(&self) -> String {
        format!("worker {} (slot {})", self.pid, self.slot + 1)
    }
}

/// How a child ended.
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

/// Back-off before the next spawn after `failures` boot failures in a row: 100 ms, doubling,
/// at most 10 s.
pub(super) fn boot_backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(10_000))
}

impl Arbiter {
    /// Forks one worker of the current generation.
    pub(super) fn spawn_worker(&mut self) {
        let Some(slot) = self.free_slot() else {
            tracing::error!("no free scoreboard slot: cannot start another worker");
            return;
        };
        self.scoreboard.slot(slot).reset(self.generation);
        // The arbiter must be single-threaded here: fork copies only this thread, and a lock
        // held by any other would stay locked forever in the child.
        debug_assert_eq!(
            std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count()),
            1,
            "the arbiter must not have threads when it forks"
        );
        let blocked = super::signals::Blocked::all();
        // SAFETY: the arbiter has no other threads (asserted above in debug builds; it never
        // starts any), so no lock is held across the fork. The child never returns into the
        // arbiter's code: it runs the worker and exits.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                blocked.restore();
                let pid = child.as_raw();
                self.scoreboard
                    .slot(slot)
                    .pid
                    .store(pid as u32, Ordering::Relaxed);
                self.spawned += 1;
                self.workers.insert(
                    pid,
                    Worker {
                        pid,
                        slot,
                        age: self.spawned,
                        generation: self.generation,
                        ready: false,
                        stop: None,
                        killed: None,
                    },
                );
                tracing::debug!(pid, slot = slot + 1, "spawned worker");
            }
            Ok(ForkResult::Child) => {
                // Signals stay blocked until the worker has its own handlers.
                let boot = self.become_worker(slot);
                std::process::exit(worker::run(boot));
            }
            Err(err) => {
                blocked.restore();
                self.scoreboard.slot(slot).set_state(SlotState::Free);
                tracing::error!(cause = %err, "fork failed; retrying in 1s");
                self.boot.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// In the child, right after fork: give up everything that is the arbiter's, keep what the
    /// worker needs.
    fn become_worker(&mut self, slot: usize) -> WorkerBoot {
        if let Some(signals) = self.signals.take() {
            signals.forget_in_child();
        }
        drop(self.ready_rx.take());
        // Listeners only old generations use must close here, or this worker would keep them
        // open (and queueing connections nobody accepts) after the old workers are gone.
        drop(std::mem::take(&mut self.retired));
        let ready_tx = self
            .ready_tx
            .try_clone()
            .unwrap_or_else(|_| std::process::exit(WORKER_BOOT_ERROR));
        WorkerBoot {
            child: ChildBoot {
                what: "worker",
                arbiter: Pid::parent(),
                slot: self.scoreboard.slot(slot),
                slot_number: slot + 1,
                ready_tx,
                timeout: self.config.timeout,
                boot_error: WORKER_BOOT_ERROR,
            },
            listeners: std::mem::take(&mut self.listeners),
            config: Arc::clone(&self.config),
            log: self.log,
        }
    }

    fn free_slot(&self) -> Option<usize> {
        (0..SLOTS).find(|i| !self.workers.values().any(|w| w.slot == *i))
    }

    /// Sends a stop signal (TERM, QUIT or KILL) to a worker and remembers it.
    pub(super) fn stop_worker(&mut self, pid: i32, sig: Signal) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if sig == Signal::SIGKILL {
            w.killed.get_or_insert(KillReason::Rollback);
        } else {
            // A fast stop overrides a graceful one; never the other way round.
            if matches!(w.stop, Some((s, _)) if s != Signal::SIGTERM || sig == Signal::SIGTERM) {
                return;
            }
            w.stop = Some((sig, Instant::now()));
        }
        send(pid, sig);
    }

    /// Reads "ready" messages from workers.
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
        let mut msgs = buf.chunks_exact(8);
        for msg in &mut msgs {
            let pid = u32::from_le_bytes(msg[..4].try_into().expect("4 bytes")) as i32;
            let generation = self.generation;
            let Some(w) = self.workers.get_mut(&pid) else {
                self.hub_ready(pid);
                continue;
            };
            w.ready = true;
            let name = w.name();
            if w.generation == generation {
                self.boot.failures = 0;
                self.boot.ever_ready = true;
                self.boot.retry_at = None;
            }
            tracing::info!("{name} booted");
        }
        self.ready_buf = msgs.remainder().to_vec();
    }

    /// Collects every child that has exited (SIGCHLD coalesces, so loop until none is left).
    pub(super) fn reap_workers(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_exit(pid.as_raw(), Exit::Signal(sig))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::error!(cause = %err, "waitpid failed");
                    return;
                }
            }
        }
    }

    fn on_exit(&mut self, pid: i32, exit: Exit) {
        let Some(w) = self.workers.remove(&pid) else {
            if !self.on_hub_exit(pid, &exit) {
                tracing::debug!(pid, "reaped a child that is not a worker");
            }
            return;
        };
        let slot = self.scoreboard.slot(w.slot);
        slot.pid.store(0, Ordering::Relaxed);
        slot.set_state(SlotState::Free);

        let name = w.name();
        let asked = w.stop.is_some() || self.stopping.is_some();
        match (exit, w.killed) {
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
            (Exit::Signal(sig), _) if w.stop.is_some_and(|(s, _)| s == sig) => {
                tracing::info!("{name} stopped by {sig}")
            }
            (Exit::Signal(sig), _) => tracing::error!("{name} was killed by {sig}"),
        }

        if !w.ready && !asked && w.generation == self.generation {
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

    /// Kills workers whose heartbeat is older than `--timeout`: alive, but not serving.
    /// SIGKILL at once: a wedged worker will not run a graceful path, and a stopped one
    /// (SIGSTOP) cannot act on anything else.
    pub(super) fn murder_workers(&mut self) {
        let Some(timeout) = self.config.timeout else {
            return;
        };
        let limit = timeout.as_millis() as u64;
        let mut wedged = Vec::new();
        for w in self.workers.values() {
            if w.killed.is_some() {
                continue;
            }
            let age = self.scoreboard.slot(w.slot).beat_age_ms();
            if age > limit {
                wedged.push((w.pid, w.name(), age));
            }
        }
        for (pid, name, age) in wedged {
            tracing::error!(
                "{name} missed its heartbeat for {}s: killing",
                (age as f64 / 1000.0).round()
            );
            if let Some(w) = self.workers.get_mut(&pid) {
                w.killed = Some(KillReason::Heartbeat);
            }
            send(pid, Signal::SIGKILL);
        }
    }

    /// SIGKILL for workers that outlived their stop signal's grace period.
    pub(super) fn escalate_stops(&mut self) {
        let now = Instant::now();
        let mut late = Vec::new();
        for w in self.workers.values() {
            if let (Some((sig, at)), None) = (w.stop, w.killed)
                && now.duration_since(at) > self.stop_grace(sig)
            {
                late.push((w.pid, w.name(), sig));
            }
        }
        for (pid, name, sig) in late {
            tracing::warn!("{name} did not exit after {sig}: killing");
            if let Some(w) = self.workers.get_mut(&pid) {
                w.killed = Some(KillReason::StopTimeout);
            }
            send(pid, Signal::SIGKILL);
        }
    }

    /// Brings the current generation to the target count: spawns the missing workers (after
    /// the boot back-off), or gracefully stops the oldest extra ones.
    pub(super) fn manage_workers(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let mut current: Vec<(u64, i32)> = self
            .workers
            .values()
            .filter(|w| w.generation == self.generation && w.stop.is_none() && w.killed.is_none())
            .map(|w| (w.age, w.pid))
            .collect();
        if current.len() > self.target {
            current.sort_unstable();
            let extra = current.len() - self.target;
            for (_, pid) in current.into_iter().take(extra) {
                self.stop_worker(pid, Signal::SIGTERM);
            }
            return;
        }
        if current.len() == self.target {
            return;
        }
        if !self.boot.ever_ready && self.boot.failures >= MAX_BOOT_FAILURES {
            if self.reload.is_some() {
                self.rollback_reload();
            } else {
                self.halt_boot_failure();
            }
            return;
        }
        if self.boot.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.boot.retry_at = None;
        for _ in current.len()..self.target {
            self.spawn_worker();
            if self.boot.retry_at.is_some() {
                break; // fork failed; try again later
            }
        }
        tracing::debug!("{}", self.describe());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_backoff_doubles_and_caps() {
        assert_eq!(boot_backoff(1), Duration::from_millis(100));
        assert_eq!(boot_backoff(2), Duration::from_millis(200));
        assert_eq!(boot_backoff(4), Duration::from_millis(800));
        assert_eq!(boot_backoff(40), Duration::from_secs(10));
    }
}
