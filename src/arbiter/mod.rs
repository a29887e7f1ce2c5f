//! The arbiter: the master process. It binds the listeners, forks the workers, and then only
//! supervises: it never serves a connection, never runs service code, and never starts a
//! thread or a tokio runtime (fork copies one thread; tokio does not support a runtime in a
//! forked child of a process that used one: tokio-rs/tokio#4301).
//!
//! Its loop is gunicorn's: signals are counted by their handlers and wake a `poll(2)`; each
//! turn then reaps dead children, kills those whose heartbeat is too old, and brings the
//! workers to the target: missing ones started, extra ones retired oldest first, and workers
//! of an old generation or marked for recycling replaced one `--max-surge` at a time.
//!
//! - `mod.rs`: the state ([`Arbiter`], its `Phase`), the loop and its event sources, the
//!   signal handlers, `scale`, the stop.
//! - `children.rs`: the child table (workers and the hub), the one fork path, reap, murder,
//!   escalate.
//! - `workers.rs`: the worker table's decisions as plain functions (`plan`), and worker exits.
//! - `hub.rs`: the hub's policy (start, restart, stop last).
//! - `reload.rs`: HUP, with [`ReloadError`]; completion and rollback.
//! - [`upgrade`]: USR2, the binary upgrade by re-executing this process (stable PID), the
//!   handover and the rollback.
//! - `notify.rs`: systemd's notify protocol.
//! - `services.rs`: what the arbiter reads of the configuration's shape.
//! - [`signals`], [`pidfile`].
//!
//! It must not be imported by `worker`, `service` or `bus`: what children share with it lives
//! in [`crate::child`], [`crate::scoreboard`], [`crate::net`] and [`crate::exit`].

mod children;
mod hub;
mod notify;
pub mod pidfile;
mod reload;
mod services;
pub mod signals;
pub mod upgrade;
mod workers;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use crate::config::{Config, ConfigError, ConfigSource, show_duration};
use crate::exit::HALT_BOOT_FAILURE;
use crate::log::LogHandle;
use crate::net::listener::{self as listeners, ListenError, Listener};
use crate::scoreboard::Scoreboard;
use children::{ChildKind, Children};
use pidfile::{Pidfile, PidfileError};
use reload::Reload;
pub use reload::ReloadError;
use services::{arbiter_title, binds, service_name, serving_lines, set_deferred_accepts};
use signals::Signals;
pub use workers::MAX_BOOT_FAILURES;
use workers::{Boot, PhaseKind};

/// The longest the loop sleeps: heartbeats are checked at least this often, so a wedged worker
/// is killed within `--timeout` plus this.
const TICK: Duration = Duration::from_secs(1);

/// With `--max-requests` or `--max-worker-memory`, the loop looks at the workers' counts and
/// memory at least this often (a few reads of shared memory and `/proc` per worker).
const RECYCLE_TICK: Duration = Duration::from_millis(200);

/// ... and, when a worker's request rate says it reaches its `--max-requests` limit sooner,
/// then, but not more often than this (`workers::recycle_wait`).
const RECYCLE_MIN: Duration = Duration::from_millis(5);

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

/// What the arbiter is doing, beyond keeping its children alive.
#[derive(Debug)]
enum Phase {
    /// Serving; the worker table follows the target.
    Running,
    /// A HUP started a new generation that is not all ready yet.
    Reloading(Reload),
    /// This image was executed by a USR2 and rolls the old image's workers to its own.
    Upgrading(upgrade::Upgrading),
    /// A stop is in progress: no child is started any more.
    Stopping(Stopping),
}

impl Phase {
    fn kind(&self) -> PhaseKind {
        match self {
            Phase::Running => PhaseKind::Running,
            Phase::Reloading(_) | Phase::Upgrading(_) => PhaseKind::Rolling,
            Phase::Stopping(_) => PhaseKind::Stopping,
        }
    }
}

/// A stop in progress.
#[derive(Debug)]
struct Stopping {
    /// TERM (drain) rather than INT/QUIT; a fast stop can overtake a graceful one.
    graceful: bool,
    /// The arbiter's exit code once every child is gone.
    code: i32,
}

/// Why TTIN/TTOU (or, later, a control command) did not change the worker count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScaleRefused {
    /// The count would go above [`crate::config::MAX_WORKERS`].
    AtMaximum,
    /// The count would go below one.
    AtMinimum,
    /// The server is stopping.
    Stopping,
}

/// What wakes the loop: the poll set is built from these (a control socket joins later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The signal self-pipe: signals were counted.
    Signals,
    /// The notification pipe: children said ready.
    Notifications,
}

/// The master process's state. Built by [`run`]; lives until the process exits.
pub struct Arbiter {
    /// Called on every HUP for the configuration to reload to (the command line re-read with
    /// its config file, or an embedding program's own).
    source: ConfigSource,
    config: Arc<Config>,
    log: &'static LogHandle,
    /// `None` only in a forked child, which has given the handlers up.
    signals: Option<Signals>,
    /// Read end of the notification pipe (children say "ready" on it). `None` in a child.
    ready_rx: Option<OwnedFd>,
    /// Write end, duplicated into every child.
    ready_tx: OwnedFd,
    ready_buf: Vec<u8>,
    /// What current workers accept on.
    listeners: Vec<Listener>,
    /// Listeners a pending reload dropped: the old workers still accept on them until the new
    /// generation is ready (and a rollback restores them); closed when the reload completes.
    retired: Vec<Listener>,
    scoreboard: &'static Scoreboard,
    /// Every child: workers and the hub.
    children: Children,
    /// How many workers of the current generation to keep.
    target: usize,
    /// The generation new workers are started in; workers of other generations are
    /// replaced. A rollback goes back to the previous one.
    generation: u64,
    /// The highest generation ever started: a new roll takes the next one, so it never shares
    /// a number with a rolled-back generation's workers still draining.
    generations: u64,
    /// Draws each worker's `--max-requests-jitter`.
    jitter: workers::Jitter,
    /// When the next recycle check is due: the first moment a worker is expected to reach its
    /// request limit, at most [`RECYCLE_TICK`] away (`check_recycling` sets it).
    recycle_at: Option<Instant>,
    /// Spawn counter: lower is older (for "oldest first").
    spawned: u64,
    boot: Boot,
    phase: Phase,
    pidfile: Option<Pidfile>,
    /// What is remembered about the bus hub across its lives (`hub.rs`).
    hub: hub::HubPolicy,
    /// Where the hub listens: chosen here, once, and handed to every child (workers never
    /// derive it from `getppid()`, so an exec'd arbiter can keep it).
    bus_address: std::path::PathBuf,
    /// The executable, for USR2; `None` if it could not be opened at start (no upgrade then).
    exe: Option<upgrade::Exe>,
    /// The new binary's `--check-config` run, while a USR2 checks it.
    check: Option<upgrade::Check>,
    /// What systemd was told.
    notify: notify::Notify,
}

/// Starts the server and supervises it until it stops; returns the process exit code.
///
/// # Errors
/// An [`ArbiterError`] if anything fails before the first worker is forked (a bind, the pid
/// file). Nothing is left behind: sockets bound so far are closed and their files removed.
pub fn run(
    config: Config,
    source: ConfigSource,
    log: &'static LogHandle,
) -> Result<i32, ArbiterError> {
    raise_nofile_limit();
    if let Some(path) = &config.pidfile {
        pidfile::check(path)?;
    }
    let mut bound: Vec<Listener> = Vec::new();
    for addr in binds(&config) {
        match Listener::bind(addr, config.backlog) {
            Ok(l) => bound.push(l),
            Err(err) => {
                bound.iter().for_each(Listener::remove_socket_file);
                return Err(err.into());
            }
        }
    }
    set_deferred_accepts(&config, &bound);
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
        "{} arbiter {} starting {} with {} worker(s)",
        crate::program::current(),
        std::process::id(),
        service_name(&config),
        config.workers
    );
    for l in &bound {
        tracing::info!("listening on {}", l.local);
    }
    let serving = serving_lines(&config, &bound);
    for line in &serving {
        tracing::info!("{line}");
    }
    // A person at a terminal is told how to stop it, once (as `python3 -m http.server` does).
    if !serving.is_empty() && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        tracing::info!("press Ctrl-C to stop");
    }
    let mut arbiter = Arbiter {
        source,
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
        children: Children::new(),
        generation: 1,
        generations: 1,
        jitter: workers::Jitter::seeded(),
        recycle_at: None,
        spawned: 0,
        boot: Boot::default(),
        phase: Phase::Running,
        pidfile,
        hub: hub::HubPolicy::default(),
        bus_address: crate::bus::hub_address(std::process::id()),
        exe: capture_exe(None),
        check: None,
        notify: notify::Notify::from_env(false),
    };
    arbiter.set_title();
    arbiter.notify_start();
    Ok(arbiter.run_loop())
}

/// The running executable, for USR2 (see [`upgrade`]); a warning and `None` without `/proc`.
fn capture_exe(path: Option<std::path::PathBuf>) -> Option<upgrade::Exe> {
    match upgrade::Exe::capture(path) {
        Ok(exe) => Some(exe),
        Err(err) => {
            tracing::warn!(cause = %err, "cannot open the running executable: USR2 upgrades are off");
            None
        }
    }
}

/// Takes over from the image that executed this one (a USR2 upgrade, or its rollback): adopts
/// its listeners, scoreboard, notification pipe and children, then supervises as [`run`]
/// does. For an upgrade, it rolls the workers to a new generation of its own; if they do not
/// get ready it executes the old image again. For a rollback, it resumes the old generation
/// and logs why the upgrade failed.
///
/// # Errors
/// An [`ArbiterError`] when the handed-over state cannot be used and there is nothing to go
/// back to; during an upgrade such failures roll back instead of returning.
pub fn resume(
    config: Config,
    source: ConfigSource,
    log: &'static LogHandle,
    handover: upgrade::Handover,
) -> Result<i32, ArbiterError> {
    raise_nofile_limit();
    let upgrading = matches!(handover.role, upgrade::Role::Upgrade);
    // During an upgrade every failure below goes back to the old image, which keeps serving.
    let give_up = |handover: &upgrade::Handover, what: &'static str, err: String| {
        if upgrading {
            let err = handover
                .clone()
                .rollback(format!("the new image cannot take over: {what}: {err}"));
            tracing::error!(cause = %err, "cannot go back to the old image");
        }
        ArbiterError::Setup {
            what,
            source: io::Error::other(err),
        }
    };
    if !handover.scoreboard_fits() {
        return Err(give_up(
            &handover,
            "the scoreboard",
            "its layout differs from this build's".into(),
        ));
    }
    let Some((board, ready_rx, ready_tx)) = handover.take_fds() else {
        return Err(give_up(
            &handover,
            "the handed-over descriptors",
            "not open".into(),
        ));
    };
    let scoreboard = Scoreboard::adopt(board)
        .map_err(|e| give_up(&handover, "the scoreboard", e.to_string()))?;
    let signals =
        Signals::install().map_err(|e| give_up(&handover, "signal handlers", e.to_string()))?;
    // Blocked by the previous image across the exec; ours are installed now.
    signals::unblock_handled();

    // The listeners this configuration keeps; new binds are made, dropped ones retired once
    // the roll completes (or at once when resuming after a rollback).
    let mut listeners = handover.take_listeners();
    let mut retired = Vec::new();
    let wanted: Vec<&crate::net::BindAddr> = binds(&config).collect();
    let (keep, dropped): (Vec<Listener>, Vec<Listener>) = listeners
        .drain(..)
        .partition(|l| wanted.iter().any(|a| l.serves(a)));
    listeners = keep;
    let mut added: Vec<Listener> = Vec::new();
    for addr in wanted {
        if listeners.iter().chain(&added).any(|l| l.serves(addr)) {
            continue;
        }
        match Listener::bind(addr, config.backlog) {
            Ok(l) => {
                tracing::info!("listening on {}", l.local);
                added.push(l);
            }
            Err(err) => {
                added.iter().for_each(Listener::remove_socket_file);
                return Err(give_up(&handover, "a new bind", err.to_string()));
            }
        }
    }
    listeners.extend(added);
    // Inherited with the sockets; set again in case this configuration moved a bind.
    set_deferred_accepts(&config, &listeners);
    if upgrading {
        retired = dropped;
    } else {
        for l in dropped {
            tracing::info!("no longer listening on {}", l.local);
            l.remove_socket_file();
        }
    }

    // Same pid: rewriting the file is harmless, and moves it if the path changed.
    let pidfile = match &config.pidfile {
        Some(path) => match Pidfile::write(path) {
            Ok(p) => Some(p),
            Err(err) => {
                tracing::error!("{err}");
                None
            }
        },
        None => None,
    };
    if let Some(old) = &handover.pidfile
        && config.pidfile.as_ref() != Some(old)
    {
        Pidfile::adopt(old).remove();
    }

    let config = Arc::new(config);
    let (spawned, hub_ever_started) = handover.counters();
    let children: Children = handover
        .children()
        .into_iter()
        .map(|c| (c.pid, c))
        .collect();
    let rollback_image = handover.take_rollback_image();
    let mut arbiter = Arbiter {
        source,
        target: if upgrading {
            config.workers
        } else {
            handover.target
        },
        config,
        log,
        signals: Some(signals),
        ready_rx: Some(ready_rx),
        ready_tx,
        ready_buf: Vec::new(),
        listeners,
        retired,
        scoreboard,
        children,
        generation: handover.generation,
        generations: handover.generations,
        jitter: workers::Jitter::seeded(),
        recycle_at: None,
        spawned,
        boot: Boot {
            ever_ready: true,
            ..Boot::default()
        },
        phase: Phase::Running,
        pidfile,
        hub: hub::HubPolicy::adopted(hub_ever_started),
        bus_address: handover.bus_address.clone(),
        exe: capture_exe(Some(handover.exe_path.clone())),
        check: None,
        notify: notify::Notify::from_env(handover.notified_ready),
    };
    match (&handover.role, rollback_image) {
        (upgrade::Role::Upgrade, Some(image)) => {
            arbiter.generations += 1;
            arbiter.generation = arbiter.generations;
            arbiter.boot = Boot::default();
            tracing::info!(
                "upgrade: {} -> {} (pid {} kept); starting generation {} with {} \
                 worker(s)",
                crate::program::handed_over(&handover.version),
                crate::program::current(),
                std::process::id(),
                arbiter.generation,
                arbiter.target
            );
            arbiter.notify_status(&format!(
                "upgrading to {}: starting generation {}",
                crate::program::current(),
                arbiter.generation
            ));
            arbiter.phase = Phase::Upgrading(upgrade::Upgrading {
                rollback_image: image,
                previous_generation: handover.generation,
                previous_target: handover.target,
                from_version: crate::program::handed_over(&handover.version),
                hup_pending: false,
            });
        }
        (upgrade::Role::Upgrade, None) => {
            tracing::error!("the upgrade handed over no old image: no rollback is possible");
            arbiter.generations += 1;
            arbiter.generation = arbiter.generations;
        }
        (upgrade::Role::Rollback { reason }, _) => {
            tracing::error!(
                "upgrade rolled back: {reason}; {} serving again (generation {})",
                crate::program::current(),
                arbiter.generation
            );
            arbiter.notify_ready();
        }
    }
    arbiter.set_title();
    Ok(arbiter.run_loop())
}

impl Arbiter {
    /// The main loop; reads like gunicorn's `Arbiter.run()`: reap, check heartbeats, bring the
    /// children to what they should be, then sleep until an event or the next deadline.
    fn run_loop(&mut self) -> i32 {
        loop {
            // Signals first, also here: a TERM sent to the whole process group (systemd's
            // default) reaches the workers and us by one kill(2); a worker may exit of its own
            // TERM before our loop got to ours, and reaped first its exit would look
            // unexpected.
            self.handle_signals();
            self.reap_children();
            if let Some(code) = self.stopped() {
                return code;
            }
            self.murder_children();
            self.escalate_stops();
            self.check_overdue();
            self.manage_hub();
            self.manage_workers();
            self.notify_first_ready();
            for event in self.wait() {
                match event {
                    Event::Signals => self.handle_signals(),
                    Event::Notifications => self.read_notifications(),
                }
            }
        }
    }

    /// The loop's event sources, each with the descriptor that wakes it.
    fn sources(&self) -> Vec<(Event, BorrowedFd<'_>)> {
        let mut sources = Vec::new();
        if let Some(signals) = &self.signals {
            sources.push((Event::Signals, signals.as_fd()));
        }
        if let Some(rx) = &self.ready_rx {
            sources.push((Event::Notifications, rx.as_fd()));
        }
        sources
    }

    /// Waits for an event source to be readable, or the next deadline (at most [`TICK`]);
    /// returns the readable ones.
    fn wait(&mut self) -> Vec<Event> {
        let mut timeout =
            if self.config.max_requests.is_some() || self.config.max_worker_memory.is_some() {
                RECYCLE_TICK
            } else {
                TICK
            };
        for at in [self.boot.retry_at, self.hub.retry_at, self.recycle_at]
            .into_iter()
            .flatten()
        {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        let sources = self.sources();
        let mut fds: Vec<PollFd<'_>> = sources
            .iter()
            .map(|(_, fd)| PollFd::new(*fd, PollFlags::POLLIN))
            .collect();
        // Rounded up: a deadline less than a millisecond away must not become a zero timeout,
        // which would spin until it passes.
        let ms = PollTimeout::try_from(timeout.as_micros().div_ceil(1000) as u64)
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => {
                tracing::error!(cause = %err, "poll failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        sources
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|((event, _), _)| *event)
            .collect()
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
                Signal::SIGUSR2 => self.handle_usr2(),
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

    /// TTIN: one worker more. Every TTIN the kernel delivers counts (`signals.rs`).
    fn handle_ttin(&mut self) {
        match self.scale(self.target + 1) {
            Ok(n) => tracing::info!("TTIN: raising the worker count to {n}"),
            Err(ScaleRefused::AtMaximum) => {
                tracing::warn!("TTIN: already at the maximum of {} workers", self.target)
            }
            Err(_) => {}
        }
    }

    /// TTOU: one worker fewer (the oldest is stopped), never below one.
    fn handle_ttou(&mut self) {
        match self.scale(self.target.saturating_sub(1)) {
            Ok(n) => tracing::info!("TTOU: lowering the worker count to {n}"),
            Err(ScaleRefused::AtMinimum) => tracing::info!("TTOU: already at one worker"),
            Err(_) => {}
        }
    }

    /// Sets the number of workers of the current generation to keep; the worker table's plan
    /// then spawns the missing ones or stops the oldest extra ones. Returns the new count.
    ///
    /// # Errors
    /// [`ScaleRefused`] when `to` is outside `1..=MAX_WORKERS` or the server is stopping; the
    /// count is then unchanged.
    fn scale(&mut self, to: usize) -> Result<usize, ScaleRefused> {
        self.target = scaled(to, &self.phase)?;
        Ok(self.target)
    }

    /// USR1: reopen our log file, and have every child reopen its own.
    fn handle_usr1(&mut self) {
        tracing::info!("USR1: reopening log files");
        if let Err(err) = self.log.reopen() {
            tracing::error!(cause = %err, "cannot reopen the log file");
        }
        for pid in self.pids(|_| true) {
            children::send(pid, Signal::SIGUSR1);
        }
    }

    /// The configuration as it is now, for a HUP.
    fn load_config(&mut self) -> Result<Config, ConfigError> {
        (self.source)()
    }

    /// Begins a stop: closes the listeners at once (new clients are refused), then asks every
    /// worker to stop: TERM (drain within `--graceful-timeout`) or QUIT (now). The hub is
    /// stopped after the last worker (`stopped`).
    fn begin_stop(&mut self, graceful: bool, code: i32) {
        match &mut self.phase {
            Phase::Stopping(s) if s.graceful && !graceful => s.graceful = false,
            Phase::Stopping(_) => return,
            _ => {
                tracing::info!(
                    "shutting down ({})",
                    if graceful { "graceful" } else { "fast" }
                );
                self.notify_stopping();
                // A reload in progress is abandoned with the rest.
                self.phase = Phase::Stopping(Stopping { graceful, code });
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
        for pid in self.pids(|c| matches!(c.kind, ChildKind::Worker { .. })) {
            // A worker that never said ready has no connection to drain: QUIT, and SIGKILL
            // after the fast grace if its boot hangs, rather than a full graceful timeout.
            let booting = self
                .children
                .get(&pid)
                .is_some_and(|c| c.state == children::ChildState::Booting);
            self.stop_child(pid, if booting { Signal::SIGQUIT } else { sig });
        }
    }

    /// When stopping and every child is gone: clean up and return the exit code.
    fn stopped(&mut self) -> Option<i32> {
        let Phase::Stopping(Stopping { code, .. }) = self.phase else {
            return None;
        };
        if self
            .children
            .values()
            .any(|c| matches!(c.kind, ChildKind::Worker { .. }))
        {
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

    /// Shows the service and the listeners in `ps` (at start, and when a reload changed them),
    /// after the program's name or `--proc-name` (a reload may change it too).
    fn set_title(&self) {
        crate::proctitle::set(
            crate::proctitle::name(self.config.proc_name.as_deref()),
            "arbiter",
            &arbiter_title(&self.config, &self.listeners),
        );
    }

    fn describe(&self) -> String {
        format!(
            "{} worker(s), timeout {}",
            self.target,
            show_duration(self.config.timeout)
        )
    }
}

/// The worker count `to` is allowed to be set to in `phase`: `1..=MAX_WORKERS`, not while
/// stopping.
fn scaled(to: usize, phase: &Phase) -> Result<usize, ScaleRefused> {
    if matches!(phase, Phase::Stopping(_)) {
        return Err(ScaleRefused::Stopping);
    }
    if to > crate::config::MAX_WORKERS {
        return Err(ScaleRefused::AtMaximum);
    }
    if to < 1 {
        return Err(ScaleRefused::AtMinimum);
    }
    Ok(to)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_stays_within_one_and_the_maximum_and_not_while_stopping() {
        let running = Phase::Running;
        assert_eq!(scaled(3, &running), Ok(3));
        assert_eq!(scaled(0, &running), Err(ScaleRefused::AtMinimum));
        let max = crate::config::MAX_WORKERS;
        assert_eq!(scaled(max, &running), Ok(max));
        assert_eq!(scaled(max + 1, &running), Err(ScaleRefused::AtMaximum));
        let stopping = Phase::Stopping(Stopping {
            graceful: true,
            code: 0,
        });
        assert_eq!(scaled(3, &stopping), Err(ScaleRefused::Stopping));
    }
}
