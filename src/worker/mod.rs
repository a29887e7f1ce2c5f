//! A worker: what runs in each forked child.
//!
//! It owns its runtime (built here, after the fork: tokio must never run in the arbiter), its
//! accept loop, the connection cap, its heartbeat and its drain. It never forks, never reaps,
//! never writes another worker's slot, and reports failure through its exit code.

pub mod accept;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::arbiter::listeners::Listener;
use crate::config::Config;
use crate::exit::WORKER_BOOT_ERROR;
use crate::log::LogHandle;
use crate::scoreboard::{Slot, SlotState};
use crate::service::Service;
use accept::{AcceptSocket, Acceptor};

/// The longest an orphaned worker (its arbiter died) drains: nobody supervises it any more and
/// the operator expects it gone within seconds, not after a full `--graceful-timeout`.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Everything a worker is handed at fork. Built by the arbiter in the child, so nothing here is
/// shared with the parent except what the kernel shares (sockets, the scoreboard pages).
pub struct WorkerBoot {
    /// 1-based slot number, for logs.
    pub slot_number: usize,
    /// This worker's scoreboard slot.
    pub slot: &'static Slot,
    /// The arbiter; if `getppid()` stops being this, the worker is an orphan and stops.
    pub arbiter: Pid,
    /// The listeners to accept on, owned by this process now.
    pub listeners: Vec<Listener>,
    /// The configuration of this worker's generation.
    pub config: Arc<Config>,
    /// Write end of the arbiter's notification pipe: one 8-byte message says "ready".
    pub ready_tx: OwnedFd,
    /// The logger, to reopen on USR1.
    pub log: &'static LogHandle,
}

/// The message a worker writes to the notification pipe once it accepts connections: its pid
/// and slot number, 8 bytes, below `PIPE_BUF` so the write is atomic.
pub fn ready_message(pid: u32, slot_number: usize) -> [u8; 8] {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&pid.to_le_bytes());
    msg[4..].copy_from_slice(&(slot_number as u32).to_le_bytes());
    msg
}

/// How the start common to every child the arbiter forks (workers, the hub) went.
pub enum ChildStart {
    /// The arbiter died before the child got going: exit 0, serve nothing.
    Orphaned,
    /// The runtime could not be built (logged): a boot error.
    Failed,
    /// Ready to run on this runtime.
    Ready(tokio::runtime::Runtime),
}

/// The start every forked child of the arbiter shares: the parent-death signal, the check
/// that the arbiter is still there, its own runtime (built here, after the fork), and a panic
/// hook that logs. `what` names the child in messages ("worker", "hub").
pub fn start_child(arbiter: Pid, what: &'static str) -> ChildStart {
    // If the arbiter dies (even by SIGKILL) the kernel sends us TERM: drain and exit, never
    // linger as an orphan. Then close the race where it died before this call.
    if let Err(err) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        tracing::warn!(cause = %err, "cannot set the parent-death signal");
    }
    if getppid() != arbiter {
        return ChildStart::Orphaned;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(cause = %err, "{what} cannot build its runtime");
            return ChildStart::Failed;
        }
    };
    // A panic in a connection task is caught by tokio and ends that connection only; log it
    // where the operator looks rather than on a bare stderr.
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic in the {what}: {info}");
    }));
    ChildStart::Ready(rt)
}

/// Runs a worker to completion and returns its exit code. Never returns into the arbiter's
/// code: the caller exits with the code.
pub fn run(boot: WorkerBoot) -> i32 {
    match start_child(boot.arbiter, "worker") {
        ChildStart::Orphaned => 0,
        ChildStart::Failed => WORKER_BOOT_ERROR,
        ChildStart::Ready(rt) => rt.block_on(serve(boot)),
    }
}

/// The worker's signals, installed before the arbiter's mask is lifted so nothing is lost.
struct WorkerSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    // Registered only so they are ignored: they are the arbiter's signals, and TTIN/TTOU
    // would otherwise stop the process by their default action.
    _ignored: Vec<tokio::signal::unix::Signal>,
}

impl WorkerSignals {
    fn install() -> std::io::Result<WorkerSignals> {
        let mut ignored = Vec::new();
        for sig in [
            Signal::SIGHUP,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
            Signal::SIGUSR2,
            Signal::SIGWINCH,
        ] {
            ignored.push(signal(SignalKind::from_raw(sig as i32))?);
        }
        Ok(WorkerSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            usr1: signal(SignalKind::user_defined1())?,
            _ignored: ignored,
        })
    }
}

async fn serve(boot: WorkerBoot) -> i32 {
    let WorkerBoot {
        slot_number,
        slot,
        arbiter,
        listeners,
        config,
        ready_tx,
        log,
    } = boot;

    let mut signals = match WorkerSignals::install() {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(cause = %err, "worker cannot install its signal handlers");
            return WORKER_BOOT_ERROR;
        }
    };
    // The arbiter blocked its signals across the fork; ours are installed now, so anything
    // that arrived meanwhile is delivered to them.
    crate::arbiter::signals::unblock();

    // Fault injection for the arbiter's tests: while the file named by this variable exists,
    // workers die before they are ready, as one that cannot open its resources would. A file
    // rather than a flag, so a test can break only the generation started by a reload.
    if let Some(path) = std::env::var_os("OXICORN_TEST_BOOT_FAILURE")
        && std::path::Path::new(&path).exists()
    {
        tracing::error!(
            "worker failing at boot: {} exists",
            std::path::Path::new(&path).display()
        );
        return WORKER_BOOT_ERROR;
    }

    let mut sockets = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let local = listener.local.clone();
        match AcceptSocket::from_listener(listener) {
            Ok(s) => sockets.push(s),
            Err(err) => {
                tracing::error!(cause = %err, "worker cannot listen on {local}");
                return WORKER_BOOT_ERROR;
            }
        }
    }

    let service = match Service::for_worker(&config) {
        Ok(s) => Arc::new(s),
        Err(err) => {
            tracing::error!(cause = %err, "worker cannot start the {} service", config.service.name());
            return WORKER_BOOT_ERROR;
        }
    };

    let stop = CancellationToken::new();
    let conns = TaskTracker::new();
    // Cancelled by the heartbeat task when the arbiter is gone.
    let orphaned = CancellationToken::new();
    tokio::spawn(heartbeat(
        slot,
        beat_interval(&config),
        arbiter,
        orphaned.clone(),
    ));

    let acceptor = Acceptor {
        listeners: sockets,
        limit: Arc::new(Semaphore::new(config.worker_connections)),
        conns: conns.clone(),
        stop: stop.clone(),
        service: Arc::clone(&service),
        slot,
        idle_timeout: config.idle_timeout,
    };
    let accept_loop = tokio::spawn(acceptor.run());

    slot.set_state(SlotState::Ready);
    let pid = std::process::id();
    if let Err(err) = nix::unistd::write(&ready_tx, &ready_message(pid, slot_number)) {
        tracing::error!(cause = %err, "worker cannot tell the arbiter it is ready");
        return WORKER_BOOT_ERROR;
    }
    drop(ready_tx);

    // Serve until told to stop.
    let reason = loop {
        tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = orphaned.cancelled() => break "the arbiter is gone",
            _ = signals.int.recv() => return 0,
            _ = signals.quit.recv() => return 0,
            _ = signals.usr1.recv() => {
                if let Err(err) = log.reopen() {
                    tracing::error!(cause = %err, "cannot reopen the log file");
                }
                if let Err(err) = service.reopen_logs() {
                    tracing::error!(cause = %err, "cannot reopen the access log");
                }
            }
        }
    };

    // Graceful stop: no new connections, in-flight ones get until the deadline. The parent-death
    // signal is a TERM too: tell it apart by who our parent is now.
    let orphan = getppid() != arbiter;
    let grace = if orphan {
        config.graceful_timeout.min(ORPHAN_GRACE)
    } else {
        config.graceful_timeout
    };
    let reason = if orphan {
        "the arbiter is gone"
    } else {
        reason
    };
    slot.set_state(SlotState::Stopping);
    stop.cancel();
    let _ = accept_loop.await;
    conns.close();
    let active = slot.active_conns.load(Ordering::Relaxed);
    if orphan {
        tracing::warn!("the arbiter ({arbiter}) is gone: stopping, {active} connection(s) open");
    } else {
        tracing::debug!(slot = slot_number, active, "worker stopping ({reason})");
    }
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    tokio::select! {
        _ = conns.wait() => {}
        _ = &mut deadline => {
            let left = slot.active_conns.load(Ordering::Relaxed);
            tracing::info!(slot = slot_number, "graceful timeout: closing {left} connection(s)");
        }
        _ = signals.int.recv() => {}
        _ = signals.quit.recv() => {}
    }
    0
}

/// Beat often enough that a healthy worker is never near the timeout (gunicorn asks for
/// `timeout / 2`), and at least once a second so the orphan check stays prompt.
pub(crate) fn beat_interval(config: &Config) -> Duration {
    let cap = Duration::from_secs(1);
    config
        .timeout
        .map_or(cap, |t| (t / 4).clamp(Duration::from_millis(50), cap))
}

/// Marks the slot alive every `every` (workers and the hub), and cancels `orphaned` once the
/// arbiter is gone. It runs on the child's only thread, so a connection
/// that blocks the runtime stops the beat too, and the arbiter kills the wedged worker.
pub(crate) async fn heartbeat(
    slot: &'static Slot,
    every: Duration,
    arbiter: Pid,
    orphaned: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        slot.notify();
        if getppid() != arbiter {
            orphaned.cancel();
        }
    }
}
