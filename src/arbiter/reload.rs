//! HUP: reload the configuration without refusing a connection.
//!
//! Everything that can fail (reading the config, the new pid file, new binds, the new log
//! file) is done before anything running is replaced; a failure is a [`ReloadError`] and
//! changes nothing. Then the workers roll to a new generation, one `--max-surge` at a time
//! (`workers::plan`); the reload completes once the last old worker is retired (dropped
//! listeners closed) or is rolled back if the new workers do not boot (within
//! `--boot-timeout`). The same completion and rollback serve a USR2 upgrade's roll
//! (`upgrade.rs`), which differs only in what a rollback executes.

use std::io;
use std::sync::Arc;

use super::pidfile::{self, Pidfile, PidfileError};
use super::workers::{Boot, RollbackWhy};
use super::{Arbiter, Phase};
use crate::config::{Config, ConfigError};
use crate::net::BindAddr;
use crate::net::listener::{ListenError, Listener};

/// A reload that has started new workers but not yet retired the old ones.
#[derive(Debug)]
pub(super) struct Reload {
    /// The configuration to go back to if the new workers never boot.
    previous: Arc<Config>,
    previous_target: usize,
    previous_generation: u64,
    /// Listeners this reload bound (closed again on rollback).
    added: Vec<BindAddr>,
    /// A HUP that arrived during this reload, to run when it ends.
    pub hup_pending: bool,
}

/// Why a reload was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration (file and flags) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new pid file is held by a live server.
    #[error(transparent)]
    Pidfile(#[from] PidfileError),
    /// A new bind failed.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The new error log file cannot be opened.
    #[error("cannot open the new error log file: {0}")]
    ErrorLog(#[source] io::Error),
}

impl Arbiter {
    /// HUP: re-read the configuration; if it is valid, start a new generation of workers and
    /// retire the old one once the new one is ready. An invalid configuration changes nothing.
    pub(super) fn handle_hup(&mut self) {
        match &mut self.phase {
            Phase::Stopping(_) => return,
            Phase::Reloading(reload) => {
                tracing::info!("HUP: a reload is in progress; this one runs when it ends");
                reload.hup_pending = true;
                return;
            }
            Phase::Upgrading(up) => {
                tracing::info!("HUP: an upgrade is in progress; this reload runs when it ends");
                up.hup_pending = true;
                return;
            }
            Phase::Running => {}
        }
        tracing::info!("HUP: reloading the configuration");
        let result = self
            .load_config()
            .map_err(ReloadError::from)
            .and_then(|new| self.apply_reload(new));
        if let Err(err) = result {
            tracing::error!("reload refused: {err}; still running the previous configuration");
        } else {
            self.notify_reloading();
        }
    }

    /// Everything that can fail is done before anything is replaced.
    fn apply_reload(&mut self, new: Config) -> Result<(), ReloadError> {
        let new_pidfile = new.pidfile.clone();
        if new_pidfile != self.config.pidfile
            && let Some(path) = &new_pidfile
        {
            pidfile::check(path)?;
        }
        let binds: Vec<&BindAddr> = super::services::binds(&new).collect();
        // Listeners are matched by the address as configured or as bound, so a config that
        // names the port a `:0` bind got keeps that listener instead of binding it twice.
        let removed: Vec<BindAddr> = self
            .listeners
            .iter()
            .filter(|l| !binds.iter().any(|a| l.serves(a)))
            .map(|l| l.addr.clone())
            .collect();
        let mut added: Vec<Listener> = Vec::new();
        let wanted: Vec<BindAddr> = binds
            .iter()
            .filter(|a| !self.listeners.iter().any(|l| l.serves(a)))
            .map(|a| (*a).clone())
            .collect();
        for addr in &wanted {
            match Listener::bind(addr, new.backlog) {
                Ok(l) => added.push(l),
                Err(err) => {
                    added.iter().for_each(Listener::remove_socket_file);
                    return Err(err.into());
                }
            }
        }
        if new.error_logfile != self.config.error_logfile
            && let Err(err) = self.log.set_path(new.error_logfile.as_deref())
        {
            added.iter().for_each(Listener::remove_socket_file);
            return Err(ReloadError::ErrorLog(err));
        }

        // Committed from here on.
        self.log.set_level(new.log_level.filter());
        if new_pidfile != self.config.pidfile {
            if let Some(old) = self.pidfile.take() {
                old.remove();
            }
            if let Some(path) = &new_pidfile {
                match Pidfile::write(path) {
                    Ok(p) => self.pidfile = Some(p),
                    Err(err) => tracing::error!("{err}"),
                }
            }
        }
        let mut kept = Vec::new();
        for l in std::mem::take(&mut self.listeners) {
            if removed.contains(&l.addr) {
                self.retired.push(l);
            } else {
                kept.push(l);
            }
        }
        for l in &added {
            tracing::info!("listening on {}", l.local);
        }
        let added_addrs = added.iter().map(|l| l.addr.clone()).collect();
        kept.extend(added);
        self.listeners = kept;
        super::services::set_deferred_accepts(&new, &self.listeners);
        self.phase = Phase::Reloading(Reload {
            previous: Arc::clone(&self.config),
            previous_target: self.target,
            previous_generation: self.generation,
            added: added_addrs,
            hup_pending: false,
        });
        self.target = new.workers;
        self.config = Arc::new(new);
        self.generations += 1;
        self.generation = self.generations;
        self.boot = Boot::default();
        tracing::info!(
            "reload: starting generation {} with {} worker(s)",
            self.generation,
            self.target
        );
        Ok(())
    }

    /// Every new worker is ready and the old ones were retired: close the listeners the
    /// reload dropped and go back to running.
    pub(super) fn complete_roll(&mut self, ready: usize) {
        if matches!(self.phase, Phase::Upgrading(_)) {
            return self.complete_upgrade(ready);
        }
        let Phase::Reloading(reload) = std::mem::replace(&mut self.phase, Phase::Running) else {
            return;
        };
        // The old workers close their copies as they stop accepting; with ours gone too, a
        // dropped address refuses connections at once instead of queueing them for nobody.
        for l in self.retired.drain(..) {
            tracing::info!("no longer listening on {}", l.local);
            l.remove_socket_file();
        }
        tracing::info!(
            "reload complete: generation {} serving with {} worker(s)",
            self.generation,
            ready
        );
        self.set_title();
        self.notify_ready();
        if reload.hup_pending {
            self.handle_hup();
        }
    }

    /// The new generation did not boot (its booting workers were just killed): go back to the
    /// previous configuration. Old workers still serving stay; any the roll retired already
    /// are replaced, and new ones that got ready are retired, by the same rolling plan.
    pub(super) fn rollback_roll(&mut self, why: RollbackWhy) {
        if matches!(self.phase, Phase::Upgrading(_)) {
            return self.rollback_upgrade(why.to_string());
        }
        let Phase::Reloading(reload) = std::mem::replace(&mut self.phase, Phase::Running) else {
            return;
        };
        tracing::error!("reload failed: {why}; keeping the previous configuration and workers");
        let (keep, drop_new): (Vec<Listener>, Vec<Listener>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| !reload.added.contains(&l.addr));
        for l in drop_new {
            l.remove_socket_file();
        }
        self.listeners = keep;
        self.listeners.append(&mut self.retired);
        self.log.set_level(reload.previous.log_level.filter());
        if reload.previous.error_logfile != self.config.error_logfile
            && let Err(err) = self.log.set_path(reload.previous.error_logfile.as_deref())
        {
            tracing::error!(cause = %err, "cannot go back to the previous log file");
        }
        self.config = reload.previous;
        super::services::set_deferred_accepts(&self.config, &self.listeners);
        self.target = reload.previous_target;
        self.generation = reload.previous_generation;
        self.boot = Boot {
            ever_ready: true,
            ..Boot::default()
        };
        self.set_title();
        self.notify_ready();
        if reload.hup_pending {
            self.handle_hup();
        }
    }
}
