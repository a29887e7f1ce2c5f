//! The arbiter: the master process. It binds the listeners, forks the workers, and then only
//! supervises: it never serves a connection, never runs service code, and never starts a
//! thread or a tokio runtime (fork copies one thread; tokio does not support a runtime in a
//! forked child of a process that used one: tokio-rs/tokio#4301).
//!
//! Its loop is gunicorn's: signals are counted by their handlers and wake a `poll(2)`; each
//! turn then reaps dead children, kills workers whose heartbeat is too old, and brings the
//! worker count back to the target, oldest first when there are too many.

mod hub;
pub mod pidfile;
pub mod signals;
mod workers;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use crate::config::{Cli, Config, show_duration};
use crate::exit::HALT_BOOT_FAILURE;
use crate::log::LogHandle;
use crate::net::BindAddr;
use crate::net::listener::{self as listeners, ListenError, Listener};
use crate::scoreboard::Scoreboard;
use pidfile::{Pidfile, PidfileError};
use signals::Signals;
use workers::Worker;

/// Boot failures in a row, with no worker of the generation ever ready, before giving up.
pub const MAX_BOOT_FAILURES: u32 = 5;

/// The longest the loop sleeps: heartbeats are checked at least this often, so a wedged worker
/// is killed within `--timeout` plus this.
const TICK: Duration = Duration::from_secs(1);

/// After a fast stop (INT/QUIT), how long workers get before SIGKILL.
const FAST_STOP_GRACE: Duration = Duration::from_secs(2);

/// After a graceful-stop deadline, the margin given to a worker to exit by itself (it cuts its
/// own connections at the deadline) before SIGKILL.
const GRACE_MARGIN: Duration = Duration::from_secs(1);

/// Why the arbiter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The pid file forbids the start, or cannot be written.
    #[error(transparent)]
    Pidfile(#[from] PidfileError),
    /// A resource of the arbiter's own (self-pipe, scoreboard) could not be set up.
    #[error("cannot set up {what}: {source}")]
    Setup {
        /// Which resource.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> ArbiterError {
    move |source| ArbiterError::Setup { what, source }
}

/// A reload that has started new workers but not yet retired the old ones.
struct Reload {
    /// The configuration to go back to if the new workers never boot.
    previous: Arc<Config>,
    previous_target: usize,
    previous_generation: u64,
    /// Listeners this reload bound (closed again on rollback).
    added: Vec<BindAddr>,
}

/// A stop in progress.
struct Stopping {
    graceful: bool,
    /// The arbiter's exit code once every worker is gone.
    code: i32,
}

/// Boot-failure bookkeeping for the current generation.
#[derive(Default)]
struct Boot {
    /// Workers that died before reporting ready, in a row.
    failures: u32,
    /// Whether any worker of this generation has been ready: after that, failures only slow
    /// the respawns down, they never stop the server.
    ever_ready: bool,
    /// No spawn before this instant (exponential back-off).
    retry_at: Option<Instant>,
}

/// The master process's state. Built by [`run`]; lives until the process exits.
pub struct Arbiter {
    /// The flags we started with, re-merged with the config file on every HUP.
    cli: Cli,
    config: Arc<Config>,
    log: &'static LogHandle,
    /// `None` only in a forked child, which has given the handlers up.
    signals: Option<Signals>,
    /// Read end of the notification pipe (workers say "ready" on it). `None` in a child.
    ready_rx: Option<OwnedFd>,
    /// Write end, duplicated into every worker.
    ready_tx: OwnedFd,
    ready_buf: Vec<u8>,
    /// What current workers accept on.
    listeners: Vec<Listener>,
    /// Listeners a pending reload dropped: the old workers still accept on them until the new
    /// generation is ready (and a rollback restores them); closed when the reload completes.
    retired: Vec<Listener>,
    scoreboard: &'static Scoreboard,
    workers: BTreeMap<i32, Worker>,
    /// How many workers of the current generation to keep.
    target: usize,
    /// Bumped by every reload; workers of older generations are retired.
    generation: u64,
    /// Spawn counter: lower is older (for "oldest first").
    spawned: u64,
    boot: Boot,
    reload: Option<Reload>,
    /// A HUP that arrived during a reload, to run when that one ends.
    hup_pending: bool,
    stopping: Option<Stopping>,
    pidfile: Option<Pidfile>,
    /// The bus hub, for services that need one (`hub.rs`).
    hub: hub::HubChild,
}

/// Starts the server and supervises it until it stops; returns the process exit code.
///
/// # Errors
/// An [`ArbiterError`] if anything fails before the first worker is forked (a bind, the pid
/// file). Nothing is left behind: sockets bound so far are closed and their files removed.
pub fn run(cli: Cli, config: Config, log: &'static LogHandle) -> Result<i32, ArbiterError> {
    raise_nofile_limit();
    if let Some(path) = &config.pidfile {
        pidfile::check(path)?;
    }
    let mut bound: Vec<Listener> = Vec::new();
    for addr in &config.binds {
        match Listener::bind(addr, config.backlog) {
            Ok(l) => bound.push(l),
            Err(err) => {
                bound.iter().for_each(Listener::remove_socket_file);
                return Err(err.into());
            }
        }
    }
    let cleanup = |bound: &[Listener]| bound.iter().for_each(Listener::remove_socket_file);
    let built = (|| {
        let signals = Signals::install().map_err(setup("signal handlers"))?;
        let scoreboard = Scoreboard::create().map_err(setup("the scoreboard"))?;
        let (ready_rx, ready_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| setup("the notification pipe")(e.into()))?;
        nix::fcntl::fcntl(&ready_rx, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| setup("the notification pipe")(e.into()))?;
        let pidfile = config.pidfile.as_deref().map(Pidfile::write).transpose()?;
        Ok::<_, ArbiterError>((signals, scoreboard, ready_rx, ready_tx, pidfile))
    })();
    let (signals, scoreboard, ready_rx, ready_tx, pidfile) = match built {
        Ok(parts) => parts,
        Err(err) => {
            cleanup(&bound);
            return Err(err);
        }
    };

    let config = Arc::new(config);
    tracing::info!(
        "oxicorn {} arbiter {} starting {} with {} worker(s)",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        config.service.name(),
        config.workers
    );
    for l in &bound {
        tracing::info!("listening on {}", l.local);
    }
    if let crate::config::ServiceConfig::Static(s) = &config.service {
        for l in &bound {
            tracing::info!("{}", serving_line(s, l, config.workers));
        }
    }
    let mut arbiter = Arbiter {
        cli,
        target: config.workers,
        config,
        log,
        signals: Some(signals),
        ready_rx: Some(ready_rx),
        ready_tx,
        ready_buf: Vec::new(),
        listeners: bound,
        retired: Vec::new(),
        scoreboard,
        workers: BTreeMap::new(),
        generation: 1,
        spawned: 0,
        boot: Boot::default(),
        reload: None,
        hup_pending: false,
        stopping: None,
        pidfile,
        hub: hub::HubChild::default(),
    };
    Ok(arbiter.run_loop())
}

/// `serving /abs/path on http://127.0.0.1:8000 (4 workers)`: where to point a browser, as
/// `python3 -m http.server` prints it.
fn serving_line(s: &crate::config::StaticConfig, l: &Listener, workers: usize) -> String {
    let url = match l.kind {
        listeners::ListenerKind::Tcp => format!("http://{}", l.local),
        listeners::ListenerKind::Unix => format!("{} (HTTP over a Unix socket)", l.local),
    };
    let plural = if workers == 1 { "" } else { "s" };
    format!(
        "serving {} on {url} ({workers} worker{plural})",
        s.root.display()
    )
}

impl Arbiter {
    /// The main loop; reads like a table of contents.
    fn run_loop(&mut self) -> i32 {
        loop {
            self.handle_signals();
            self.read_notifications();
            self.reap_workers();
            if let Some(code) = self.stopped() {
                return code;
            }
            self.murder_workers();
            self.murder_hub();
            self.escalate_stops();
            self.manage_hub();
            self.manage_workers();
            self.advance_reload();
            self.sleep();
        }
    }

    /// Waits for a signal, a worker notification, or the next deadline (at most [`TICK`]).
    fn sleep(&mut self) {
        let mut timeout = TICK;
        for at in [self.boot.retry_at, self.hub_retry_at()]
            .into_iter()
            .flatten()
        {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        let (Some(signals), Some(ready_rx)) = (&self.signals, &self.ready_rx) else {
            return;
        };
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(ready_rx.as_fd(), PollFlags::POLLIN),
        ];
        let ms = PollTimeout::try_from(timeout.as_millis() as u64).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::error!(cause = %err, "poll failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Drains the self-pipe first, then acts on every signal counted since the last turn.
    fn handle_signals(&mut self) {
        let Some(signals) = &self.signals else { return };
        signals.drain();
        for sig in signals.take() {
            match sig {
                Signal::SIGTERM => self.handle_term(),
                Signal::SIGINT | Signal::SIGQUIT => self.handle_quit(sig),
                Signal::SIGHUP => self.handle_hup(),
                Signal::SIGTTIN => self.handle_ttin(),
                Signal::SIGTTOU => self.handle_ttou(),
                Signal::SIGUSR1 => self.handle_usr1(),
                Signal::SIGCHLD => {} // reaping runs every turn
                other => tracing::info!("{other} is not supported yet: ignored"),
            }
        }
    }

    /// TERM: graceful stop.
    fn handle_term(&mut self) {
        self.begin_stop(true, 0);
    }

    /// INT, QUIT: fast stop.
    fn handle_quit(&mut self, sig: Signal) {
        tracing::info!("{sig}: fast stop");
        self.begin_stop(false, 0);
    }

    /// TTIN: one worker more.
    fn handle_ttin(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.target >= crate::config::MAX_WORKERS {
            tracing::warn!("TTIN: already at the maximum of {} workers", self.target);
            return;
        }
        self.target += 1;
        tracing::info!("TTIN: raising the worker count to {}", self.target);
    }

    /// TTOU: one worker fewer, never below one.
    fn handle_ttou(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.target <= 1 {
            tracing::info!("TTOU: already at one worker");
            return;
        }
        self.target -= 1;
        tracing::info!("TTOU: lowering the worker count to {}", self.target);
    }

    /// USR1: reopen our log file, and have every worker reopen its own.
    fn handle_usr1(&mut self) {
        tracing::info!("USR1: reopening log files");
        if let Err(err) = self.log.reopen() {
            tracing::error!(cause = %err, "cannot reopen the log file");
        }
        let pids: Vec<i32> = self.workers.keys().copied().collect();
        for pid in pids.into_iter().chain(self.hub_pid()) {
            workers::send(pid, Signal::SIGUSR1);
        }
    }

    /// HUP: re-read the configuration; if it is valid, start a new generation of workers and
    /// retire the old one once the new one is ready. An invalid configuration changes nothing.
    fn handle_hup(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if self.reload.is_some() {
            tracing::info!("HUP: a reload is in progress; this one runs when it ends");
            self.hup_pending = true;
            return;
        }
        tracing::info!("HUP: reloading the configuration");
        let new = match Config::load(&self.cli) {
            Ok(c) => c,
            Err(err) => {
                tracing::error!("reload refused: {err}; still running the previous configuration");
                return;
            }
        };
        if let Err(err) = self.apply_reload(new) {
            tracing::error!("reload refused: {err}; still running the previous configuration");
        }
    }

    /// Everything that can fail is done before anything is replaced.
    fn apply_reload(&mut self, new: Config) -> Result<(), String> {
        let new_pidfile = new.pidfile.clone();
        if new_pidfile != self.config.pidfile
            && let Some(path) = &new_pidfile
        {
            pidfile::check(path).map_err(|e| e.to_string())?;
        }
        // Listeners are matched by the address as configured or as bound, so a config that
        // names the port a `:0` bind got keeps that listener instead of binding it twice.
        let removed: Vec<BindAddr> = self
            .listeners
            .iter()
            .filter(|l| !new.binds.iter().any(|a| l.serves(a)))
            .map(|l| l.addr.clone())
            .collect();
        let mut added: Vec<Listener> = Vec::new();
        let wanted: Vec<BindAddr> = new
            .binds
            .iter()
            .filter(|a| !self.listeners.iter().any(|l| l.serves(a)))
            .cloned()
            .collect();
        for addr in &wanted {
            match Listener::bind(addr, new.backlog) {
                Ok(l) => added.push(l),
                Err(err) => {
                    added.iter().for_each(Listener::remove_socket_file);
                    return Err(err.to_string());
                }
            }
        }
        if new.error_logfile != self.config.error_logfile
            && let Err(err) = self.log.set_path(new.error_logfile.as_deref())
        {
            added.iter().for_each(Listener::remove_socket_file);
            return Err(err.to_string());
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
        let old_generation = self.generation;
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
        self.reload = Some(Reload {
            previous: Arc::clone(&self.config),
            previous_target: self.target,
            previous_generation: old_generation,
            added: added_addrs,
        });
        self.target = new.workers;
        self.config = Arc::new(new);
        self.generation += 1;
        self.boot = Boot::default();
        tracing::info!(
            "reload: starting generation {} with {} worker(s)",
            self.generation,
            self.target
        );
        Ok(())
    }

    /// Once the new generation is all ready, retires the old one.
    fn advance_reload(&mut self) {
        if self.reload.is_none() || self.stopping.is_some() {
            return;
        }
        let ready = self
            .workers
            .values()
            .filter(|w| w.generation == self.generation && w.ready && w.stop.is_none())
            .count();
        if ready < self.target {
            return;
        }
        let old: Vec<i32> = self
            .workers
            .values()
            .filter(|w| w.generation < self.generation && w.stop.is_none())
            .map(|w| w.pid)
            .collect();
        for pid in &old {
            self.stop_worker(*pid, Signal::SIGTERM);
        }
        // The old workers close their copies as they stop accepting; with ours gone too, a
        // dropped address refuses connections at once instead of queueing them for nobody.
        for l in self.retired.drain(..) {
            tracing::info!("no longer listening on {}", l.local);
            l.remove_socket_file();
        }
        self.reload = None;
        tracing::info!(
            "reload complete: generation {} serving with {} worker(s); {} old worker(s) draining",
            self.generation,
            ready,
            old.len()
        );
        self.run_pending_hup();
    }

    /// The new generation never booted: keep the old one, as if the HUP had not happened.
    fn rollback_reload(&mut self) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        tracing::error!(
            "reload failed: the new workers did not boot ({} attempts); keeping the previous \
             configuration and workers",
            self.boot.failures
        );
        let failed: Vec<i32> = self
            .workers
            .values()
            .filter(|w| w.generation == self.generation && w.stop.is_none())
            .map(|w| w.pid)
            .collect();
        for pid in failed {
            self.stop_worker(pid, Signal::SIGKILL);
        }
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
        self.target = reload.previous_target;
        self.generation = reload.previous_generation;
        self.boot = Boot {
            ever_ready: true,
            ..Boot::default()
        };
        self.run_pending_hup();
    }

    fn run_pending_hup(&mut self) {
        if std::mem::take(&mut self.hup_pending) {
            self.handle_hup();
        }
    }

    /// Begins a stop: closes the listeners at once (new clients are refused), then asks every
    /// worker to stop: TERM (drain within `--graceful-timeout`) or QUIT (now).
    fn begin_stop(&mut self, graceful: bool, code: i32) {
        match &mut self.stopping {
            Some(s) if s.graceful && !graceful => s.graceful = false,
            Some(_) => return,
            None => {
                tracing::info!(
                    "shutting down ({})",
                    if graceful { "graceful" } else { "fast" }
                );
                self.stopping = Some(Stopping { graceful, code });
                for l in self.listeners.drain(..).chain(self.retired.drain(..)) {
                    l.remove_socket_file();
                }
            }
        }
        let sig = if graceful {
            Signal::SIGTERM
        } else {
            Signal::SIGQUIT
        };
        let pids: Vec<i32> = self.workers.keys().copied().collect();
        for pid in pids {
            self.stop_worker(pid, sig);
        }
    }

    /// When stopping and every worker is gone: clean up and return the exit code.
    fn stopped(&mut self) -> Option<i32> {
        let code = self.stopping.as_ref()?.code;
        if !self.workers.is_empty() {
            return None;
        }
        // The hub goes last: draining workers may still use the bus.
        if !self.hub_stopped() {
            return None;
        }
        if let Some(p) = self.pidfile.take() {
            p.remove();
        }
        tracing::info!("shutdown complete");
        Some(code)
    }

    /// Stops every worker and exits with [`HALT_BOOT_FAILURE`]: nothing would ever serve.
    fn halt_boot_failure(&mut self) {
        tracing::error!(
            "no worker could boot ({} attempts in a row): giving up; see the errors above",
            self.boot.failures
        );
        self.begin_stop(false, HALT_BOOT_FAILURE);
    }

    /// Grace period of a stop signal, after which SIGKILL follows.
    fn stop_grace(&self, sig: Signal) -> Duration {
        if sig == Signal::SIGTERM {
            self.config.graceful_timeout + GRACE_MARGIN
        } else {
            FAST_STOP_GRACE
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} worker(s), timeout {}",
            self.target,
            show_duration(self.config.timeout)
        )
    }
}

/// Raises the soft open-files limit to the hard one: each connection is a descriptor, and
/// systemd's default soft limit (1024) is below a realistic `--worker-connections`.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
