//! A worker: what runs in each forked child.
//!
//! It owns its runtime (built here, after the fork: tokio must never run in the arbiter), its
//! accept loop, the connection cap, its heartbeat and its drain. It never forks, never reaps,
//! never writes another worker's slot, and reports failure through its exit code.

pub mod accept;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::unistd::getppid;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::child::{Child, ChildBoot};
use crate::config::Config;
use crate::exit::WORKER_BOOT_ERROR;
use crate::log::LogHandle;
use crate::net::listener::Listener;
use crate::scoreboard::SlotState;
use crate::service::Services;
use accept::{AcceptSocket, Acceptor};

/// The longest an orphaned worker (its arbiter died) drains: nobody supervises it any more and
/// the operator expects it gone within seconds, not after a full `--graceful-timeout`.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);

/// Everything a worker is handed at fork. Built by the arbiter in the child, so nothing here is
/// shared with the parent except what the kernel shares (sockets, the scoreboard pages).
pub struct WorkerBoot {
    /// What every child gets: the arbiter's pid, the slot, the ready pipe, the timeout.
    pub child: ChildBoot,
    /// The listeners to accept on, owned by this process now.
    pub listeners: Vec<Listener>,
    /// The configuration of this worker's generation.
    pub config: Arc<Config>,
    /// The logger, to reopen on USR1.
    pub log: &'static LogHandle,
    /// Where the arbiter runs the bus hub, when a service needs it (the arbiter picks the
    /// address; services never derive it themselves).
    pub bus_address: Option<std::path::PathBuf>,
}

/// Runs a worker to completion and returns its exit code. Never returns into the arbiter's
/// code: the caller exits with the code.
pub fn run(boot: WorkerBoot) -> i32 {
    let WorkerBoot {
        child,
        listeners,
        config,
        log,
        bus_address,
    } = boot;
    let slot_number = child.slot_number;
    crate::child::run(child, move |child| {
        serve(child, slot_number, listeners, config, log, bus_address)
    })
}

async fn serve(
    mut child: Child,
    slot_number: usize,
    listeners: Vec<Listener>,
    config: Arc<Config>,
    log: &'static LogHandle,
    bus_address: Option<std::path::PathBuf>,
) -> i32 {
    if crate::child::test_boot_failure_injected() {
        return WORKER_BOOT_ERROR;
    }

    // Which service each listener feeds: the one whose binds name its address.
    let mut routes = Vec::with_capacity(listeners.len());
    for l in &listeners {
        match config
            .services
            .iter()
            .position(|s| s.binds.iter().any(|a| l.serves(a)))
        {
            Some(i) => routes.push(i),
            None => {
                tracing::error!("worker: no service is configured for {}", l.local);
                return WORKER_BOOT_ERROR;
            }
        }
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

    let service = match Services::for_worker(&config, routes, bus_address.as_deref()).await {
        Ok(s) => Arc::new(s),
        Err(err) => {
            tracing::error!(cause = %err, "worker cannot start");
            return WORKER_BOOT_ERROR;
        }
    };

    let slot = child.slot;
    let arbiter = child.arbiter;
    let stop = CancellationToken::new();
    let conns = TaskTracker::new();
    // Cancelled by the heartbeat task when the arbiter is gone.
    let orphaned = child.start_heartbeat();

    let acceptor = Acceptor {
        listeners: sockets,
        limit: Arc::new(Semaphore::new(config.worker_connections)),
        conns: conns.clone(),
        stop: stop.clone(),
        service: Arc::clone(&service),
        slot,
        idle_timeout: None, // each service has its own
        reclaim: Default::default(),
    };
    let accept_loop = tokio::spawn(acceptor.run());

    if let Err(err) = child.ready() {
        tracing::error!(cause = %err, "worker cannot tell the arbiter it is ready");
        return WORKER_BOOT_ERROR;
    }
    let signals = &mut child.signals;

    // Serve until told to stop.
    let reason = loop {
        tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = orphaned.cancelled() => break "the arbiter is gone",
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
        _ = signals.quit.recv() => {}
    }
    0
}
