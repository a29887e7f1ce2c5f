//! systemd's `Type=notify` protocol, through the `sd-notify` crate: `READY=1` once the first
//! generation is ready, `RELOADING=1` with `MONOTONIC_USEC` at a HUP and `READY=1` when the
//! reload ends (completed or rolled back), `STOPPING=1`, human-readable `STATUS=` lines
//! (`4 workers, generation 7`), and `MAINPID=` at start (the PID never changes: an upgrade
//! re-executes the same process).
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) nothing is sent. A failed send is logged at debug
//! and otherwise ignored: the server must not stop because its supervisor's socket is gone.

use sd_notify::NotifyState;

use super::Arbiter;
use super::children::{ChildKind, ChildState};

/// What was told to the service manager.
#[derive(Debug, Default)]
pub(super) struct Notify {
    /// Whether `NOTIFY_SOCKET` was set at start.
    enabled: bool,
    /// `READY=1` was sent (by this image or, across an upgrade, by the one before).
    pub ready_sent: bool,
}

impl Notify {
    /// Reads `NOTIFY_SOCKET`; `ready_sent` carries over an upgrade.
    pub(super) fn from_env(ready_sent: bool) -> Notify {
        Notify {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ready_sent,
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(err) = sd_notify::notify(states) {
            tracing::debug!(cause = %err, "cannot notify the service manager");
        }
    }
}

impl Arbiter {
    /// `STATUS=4 workers, generation 7`.
    fn status_line(&self) -> String {
        let ready = self
            .children
            .values()
            .filter(|c| c.state == ChildState::Ready && matches!(c.kind, ChildKind::Worker { .. }))
            .count();
        format!(
            "{ready} worker{} ready, generation {}",
            if ready == 1 { "" } else { "s" },
            self.generation
        )
    }

    /// `MAINPID=` (this process) and a first status, at start.
    pub(super) fn notify_start(&self) {
        let status = format!("starting {} worker(s)", self.target);
        self.notify.send(&[
            NotifyState::MainPid(std::process::id()),
            NotifyState::Status(&status),
        ]);
    }

    /// `READY=1` with the status: the first generation serves, or a reload or an upgrade
    /// ended (completed or rolled back).
    pub(super) fn notify_ready(&mut self) {
        let status = self.status_line();
        self.notify
            .send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.notify.ready_sent = true;
    }

    /// Sends `READY=1` the first time the current generation has `target` ready workers.
    pub(super) fn notify_first_ready(&mut self) {
        if self.notify.ready_sent || !matches!(self.phase, super::Phase::Running) {
            return;
        }
        let ready = self
            .children
            .values()
            .filter(|c| c.state == ChildState::Ready && c.generation() == Some(self.generation))
            .count();
        if ready >= self.target {
            self.notify_ready();
        }
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (systemd ≥ 253 requires it) at a HUP.
    pub(super) fn notify_reloading(&self) {
        let status = format!("reloading: starting generation {}", self.generation);
        let mut states = vec![NotifyState::Reloading, NotifyState::Status(&status)];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.insert(1, now);
        }
        self.notify.send(&states);
    }

    /// `STOPPING=1` when a stop begins.
    pub(super) fn notify_stopping(&self) {
        self.notify
            .send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// A `STATUS=` line alone (an upgrade begins, the worker count changed).
    pub(super) fn notify_status(&self, status: &str) {
        self.notify.send(&[NotifyState::Status(status)]);
    }
}
