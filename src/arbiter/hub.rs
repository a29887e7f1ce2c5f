//! The hub's policy ([`crate::bus::hub`]): when to start it (only when the service needs a
//! bus), when to restart it (whenever it dies unasked, with back-off), and when to stop it
//! (after the last worker on shutdown: draining workers may still use the bus). Forking,
//! reaping, the heartbeat check and the stop escalation are the child table's
//! (`children.rs`), the same as for a worker; the hub's scoreboard slot is reserved by the
//! scoreboard itself ([`crate::scoreboard::HUB_SLOT`]).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::children::{Child, ChildKind, ChildState, Exit, KillReason, Spawn, SpawnError};
use super::workers::boot_backoff;
use super::{Arbiter, Phase};
use crate::bus::hub::{self, HubBoot};
use crate::child::ChildBoot;

/// A hub that lived at least this long was healthy: its death restarts the back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// After the stop signal, how long the hub gets before SIGKILL.
pub(super) const HUB_STOP_GRACE: Duration = Duration::from_secs(2);

/// What the arbiter remembers about the hub across its lives. The live hub itself is a row of
/// the child table.
#[derive(Debug, Default)]
pub(super) struct HubPolicy {
    /// Deaths in a row of hubs that did not live [`HEALTHY_AFTER`].
    failures: u32,
    /// No restart before this instant.
    pub retry_at: Option<Instant>,
    /// Whether a hub ever ran: the next one must wait for workers to re-register names.
    pub ever_started: bool,
}

impl HubPolicy {
    /// The policy of an image started by a binary upgrade: the hub (a child handed over with
    /// the others) keeps running; `ever_started` says whether one ever ran.
    pub(super) fn adopted(ever_started: bool) -> HubPolicy {
        HubPolicy {
            ever_started,
            ..HubPolicy::default()
        }
    }
}

impl Arbiter {
    /// The live hub, if any.
    fn hub(&self) -> Option<&Child> {
        self.children.values().find(|c| c.kind == ChildKind::Hub)
    }

    /// Starts the hub when the service needs one and none is running (after the back-off).
    pub(super) fn manage_hub(&mut self) {
        if !super::services::needs_bus(&self.config)
            || matches!(self.phase, Phase::Stopping(_))
            || self.hub().is_some()
        {
            return;
        }
        if self.hub.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.hub.retry_at = None;
        match self.spawn_child(Spawn::Hub) {
            Ok(pid) => tracing::info!("hub {pid} starting"),
            Err(SpawnError::Fork(err)) => {
                tracing::error!(cause = %err, "fork failed for the hub; retrying in 1s");
                self.hub.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
            Err(SpawnError::NoSlot) => {
                tracing::error!("the hub's scoreboard slot is still held; retrying in 1s");
                self.hub.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        self.hub.ever_started = true;
    }

    /// In the forked hub: what it is handed, then its run. Returns its exit code.
    pub(super) fn run_hub(&mut self, child: ChildBoot) -> i32 {
        let restart = self.hub.ever_started;
        // Every worker alive now may hold names, whatever its generation or state (a stopping
        // one still serves its members). Workers forked after this start with none, so the
        // hub does not wait for them. A worker that died but is not reaped yet is listed too:
        // the hub finds it gone by itself.
        let workers = if restart {
            self.pids(|c| matches!(c.kind, ChildKind::Worker { .. }))
                .into_iter()
                .map(|pid| pid as u32)
                .collect()
        } else {
            Vec::new()
        };
        hub::run(
            HubBoot {
                address: self.bus_address.clone(),
                recovery_cap: hub::recovery_cap(self.config.timeout),
                log: self.log,
                restart,
                workers,
            },
            child,
        )
    }

    /// The hub was reaped: restart it with back-off unless we are stopping.
    pub(super) fn on_hub_exit(&mut self, c: &Child, exit: Exit) {
        let pid = c.pid;
        if matches!(self.phase, Phase::Stopping(_)) {
            tracing::info!("hub {pid} exited");
            return;
        }
        if c.started.elapsed() >= HEALTHY_AFTER {
            self.hub.failures = 0;
        }
        self.hub.failures += 1;
        let wait = boot_backoff(self.hub.failures);
        self.hub.retry_at = Some(Instant::now() + wait);
        let how = match (exit, c.state) {
            (Exit::Code(code), _) => format!("exited with code {code}"),
            (
                Exit::Signal(Signal::SIGKILL),
                ChildState::Killed {
                    reason: KillReason::Heartbeat,
                    ..
                },
            ) => "was killed (heartbeat timeout)".to_string(),
            (Exit::Signal(sig), _) => format!("was killed by {sig}"),
        };
        tracing::error!(
            "{pid_name} {how}: restarting in {}ms",
            wait.as_millis(),
            pid_name = c.name()
        );
    }

    /// During a stop, once every worker is gone: stops the hub (QUIT; the child table sends
    /// SIGKILL after [`HUB_STOP_GRACE`]). True when no hub is left.
    pub(super) fn hub_stopped(&mut self) -> bool {
        let Some(pid) = self.hub().map(|c| c.pid) else {
            return true;
        };
        // QUIT, not TERM: the hub ignores a TERM while we are alive, since a service manager
        // that stops the whole group (systemd's default) sends TERM to it too, and the hub
        // must outlive the draining workers (bus/hub/boot.rs).
        self.stop_child(pid, Signal::SIGQUIT);
        false
    }
}
