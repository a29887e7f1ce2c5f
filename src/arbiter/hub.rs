//! Supervising the bus hub ([`crate::bus::hub`]): one extra child, forked only when the
//! service needs a bus, restarted with back-off whenever it dies, stopped after the last
//! worker on shutdown, and reaped like any child. Workers reconnect to it by themselves.
//!
//! The hub beats a heartbeat in the scoreboard's last slot (workers never reach it: they use
//! at most twice `MAX_WORKERS` slots), so a hub that is alive but wedged is killed after
//! `--timeout` and restarted, as a worker would be.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid, fork};

use super::Arbiter;
use super::workers::{Exit, boot_backoff, send};
use crate::bus::hub::{self, HubBoot};
use crate::scoreboard::{SLOTS, SlotState};
use crate::worker::WORKER_PANIC;

/// The hub's scoreboard slot: the last one, which the worker table never hands out.
const HUB_SLOT: usize = SLOTS - 1;

/// A hub that lived at least this long was healthy: its death restarts the back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// After the stop signal, how long the hub gets before SIGKILL.
const HUB_STOP_GRACE: Duration = Duration::from_secs(2);

/// The hub as the arbiter tracks it.
#[derive(Debug, Default)]
pub(super) struct HubChild {
    /// The live hub, if any.
    pid: Option<i32>,
    /// When it was forked.
    started: Option<Instant>,
    /// Deaths in a row of hubs that did not live [`HEALTHY_AFTER`].
    failures: u32,
    /// No restart before this instant.
    retry_at: Option<Instant>,
    /// Whether a hub ever ran: the next one must wait for workers to re-register names.
    ever_started: bool,
    /// The stop signal sent during shutdown, and when.
    stop: Option<Instant>,
    /// Set when we sent SIGKILL for a missed heartbeat, so the exit is reported as ours.
    killed: bool,
}

impl Arbiter {
    /// Starts the hub when the service needs one and none is running (after the back-off).
    pub(super) fn manage_hub(&mut self) {
        if !self.config.service.needs_bus() || self.stopping.is_some() || self.hub.pid.is_some() {
            return;
        }
        if self.hub.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.hub.retry_at = None;
        self.spawn_hub();
    }

    /// The live hub, if any (USR1 is forwarded to it too: it logs).
    pub(super) fn hub_pid(&self) -> Option<i32> {
        self.hub.pid
    }

    /// The poll timeout must not sleep past a pending hub restart.
    pub(super) fn hub_retry_at(&self) -> Option<Instant> {
        self.hub.retry_at
    }

    fn spawn_hub(&mut self) {
        debug_assert_eq!(
            std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count()),
            1,
            "the arbiter must not have threads when it forks"
        );
        self.scoreboard.slot(HUB_SLOT).reset(self.generation);
        let blocked = super::signals::Blocked::all();
        // SAFETY: as in `spawn_worker`: the arbiter is single-threaded, so no lock is held
        // across the fork, and the child never returns into the arbiter's code.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                blocked.restore();
                self.hub.pid = Some(child.as_raw());
                self.hub.started = Some(Instant::now());
                self.hub.killed = false;
                self.scoreboard
                    .slot(HUB_SLOT)
                    .pid
                    .store(child.as_raw() as u32, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("hub {child} starting");
            }
            Ok(ForkResult::Child) => {
                let boot = self.become_hub();
                let code =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hub::run(boot)))
                        .unwrap_or(WORKER_PANIC);
                std::process::exit(code);
            }
            Err(err) => {
                blocked.restore();
                self.scoreboard.slot(HUB_SLOT).set_state(SlotState::Free);
                tracing::error!(cause = %err, "fork failed for the hub; retrying in 1s");
                self.hub.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        self.hub.ever_started = true;
    }

    /// In the child, right after fork: give up everything that is the arbiter's. Unlike a
    /// worker, the hub keeps no listener: it must not hold client sockets open.
    fn become_hub(&mut self) -> HubBoot {
        if let Some(signals) = self.signals.take() {
            signals.forget_in_child();
        }
        drop(self.ready_rx.take());
        drop(std::mem::take(&mut self.listeners));
        drop(std::mem::take(&mut self.retired));
        let ready_tx = self
            .ready_tx
            .try_clone()
            .unwrap_or_else(|_| std::process::exit(hub::HUB_BOOT_ERROR));
        let restart = self.hub.ever_started;
        // Every worker alive now may hold names, whatever its generation or state (a stopping
        // one still serves its members). Workers forked after this start with none, so the
        // hub does not wait for them. A worker that died but is not reaped yet is listed too:
        // the hub finds it gone by itself.
        let workers = if restart {
            self.workers.keys().map(|&pid| pid as u32).collect()
        } else {
            Vec::new()
        };
        HubBoot {
            arbiter: Pid::parent(),
            recovery_cap: hub::recovery_cap(self.config.timeout),
            beat_interval: crate::worker::beat_interval(&self.config),
            ready_tx,
            log: self.log,
            restart,
            workers,
            slot: self.scoreboard.slot(HUB_SLOT),
        }
    }

    /// Kills a hub whose heartbeat is older than `--timeout` (alive but not serving); it is
    /// then reaped and restarted like any dead hub.
    pub(super) fn murder_hub(&mut self) {
        let (Some(pid), Some(timeout)) = (self.hub.pid, self.config.timeout) else {
            return;
        };
        if self.hub.killed {
            return;
        }
        let age = self.scoreboard.slot(HUB_SLOT).beat_age_ms();
        if age > timeout.as_millis() as u64 {
            tracing::error!(
                "hub {pid} missed its heartbeat for {}s: killing",
                (age as f64 / 1000.0).round()
            );
            self.hub.killed = true;
            send(pid, Signal::SIGKILL);
        }
    }

    /// A "ready" notification from `pid`: true if it is the hub's.
    pub(super) fn hub_ready(&mut self, pid: i32) -> bool {
        if self.hub.pid != Some(pid) {
            return false;
        }
        tracing::info!("hub {pid} ready");
        true
    }

    /// A reaped child: true if it was the hub (then handled here).
    pub(super) fn on_hub_exit(&mut self, pid: i32, exit: &Exit) -> bool {
        if self.hub.pid != Some(pid) {
            return false;
        }
        self.hub.pid = None;
        let slot = self.scoreboard.slot(HUB_SLOT);
        slot.pid.store(0, std::sync::atomic::Ordering::Relaxed);
        slot.set_state(SlotState::Free);
        if self.stopping.is_some() {
            tracing::info!("hub {pid} exited");
            return true;
        }
        let lived = self.hub.started.map_or(Duration::ZERO, |t| t.elapsed());
        if lived >= HEALTHY_AFTER {
            self.hub.failures = 0;
        }
        self.hub.failures += 1;
        let wait = boot_backoff(self.hub.failures);
        self.hub.retry_at = Some(Instant::now() + wait);
        let how = match exit {
            Exit::Code(code) => format!("exited with code {code}"),
            Exit::Signal(Signal::SIGKILL) if self.hub.killed => {
                "was killed (heartbeat timeout)".to_string()
            }
            Exit::Signal(sig) => format!("was killed by {sig}"),
        };
        tracing::error!("hub {pid} {how}: restarting in {}ms", wait.as_millis());
        true
    }

    /// During a stop, once every worker is gone: stops the hub (TERM, then KILL after a
    /// grace period). True when no hub is left.
    pub(super) fn hub_stopped(&mut self) -> bool {
        let Some(pid) = self.hub.pid else {
            return true;
        };
        match self.hub.stop {
            None => {
                self.hub.stop = Some(Instant::now());
                send(pid, Signal::SIGTERM);
            }
            Some(at) if at.elapsed() > HUB_STOP_GRACE => {
                tracing::warn!("hub {pid} did not exit after SIGTERM: killing");
                send(pid, Signal::SIGKILL);
                self.hub.stop = Some(Instant::now());
            }
            Some(_) => {}
        }
        false
    }
}
