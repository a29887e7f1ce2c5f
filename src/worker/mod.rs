//! A worker: what runs in each forked child.
//!
//! It owns its runtime (built here, after the fork: tokio must never run in the arbiter), its
//! accept loop, the connection cap, its heartbeat and its drain. It never forks, never reaps,
//! never writes another worker's slot, and reports failure through its exit code.
//!
//! SIGTERM stops it (drain within `--graceful-timeout`); SIGUSR2 retires it: the same drain,
//! but its line connections are first handed to a newer worker ([`handoff`]).

pub mod accept;
pub mod handoff;

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
use crate::service::handoff::Targets;
use crate::service::park::{Driver, Parking};
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

/// Whether any service of `config` holds line connections (chat, echo, quote): the ones a
/// retiring worker hands over ([`handoff`]).
fn has_line_service(config: &Config) -> bool {
    use crate::config::ServiceConfig;
    config.services.iter().any(|s| {
        matches!(
            s.service,
            ServiceConfig::Echo | ServiceConfig::Chat { .. } | ServiceConfig::Quote { .. }
        )
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

    let slot = child.slot;
    let limit = Arc::new(Semaphore::new(config.worker_connections));
    // Where idle connections park (issue 13). Not fatal: without it they wait in their tasks.
    let parking = match Parking::new(Arc::clone(&limit), slot) {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(cause = %err, "worker cannot park idle connections");
            Parking::off()
        }
    };
    // The services are built here, an application's factory among them, which may take a
    // while (a database pool, templates). A stop that comes meanwhile (the arbiter sends QUIT
    // to a worker that is not ready yet, TERM if it becomes so as the stop begins) drops the
    // factory where it waits: nothing is served yet, so nothing is lost, and the worker
    // exits at once instead of being killed when its stop deadline passes.
    let built = {
        let signals = &mut child.signals;
        tokio::select! {
            biased;
            _ = signals.quit.recv() => None,
            _ = signals.term.recv() => None,
            built = Services::for_worker(&config, routes, bus_address.as_deref()) => Some(built),
        }
    };
    let service = match built {
        Some(Ok(s)) => Arc::new(s.with_parking(parking.clone())),
        Some(Err(err)) => {
            tracing::error!(cause = %err, "worker cannot start");
            return WORKER_BOOT_ERROR;
        }
        None => {
            tracing::info!("worker stopped before it was ready");
            return 0;
        }
    };

    let arbiter = child.arbiter;
    // This process's stop token, the one the app's `Shutdown` handles watch.
    let stop = crate::shutdown::worker_stop();
    let conns = TaskTracker::new();
    // Cancelled by the heartbeat task when the arbiter is gone.
    let orphaned = child.start_heartbeat();
    // Told to every connection when this worker retires with hand-over (SIGUSR2).
    let targets = Targets::default();
    let reclaim = crate::service::reclaim::Reclaimer::default();
    // Parked kept-alive connections are the first to close for a newcomer at the cap.
    if let Some(spare) = parking.spare() {
        reclaim.set_spare(spare);
    }
    let yield_permit = Arc::new(tokio::sync::Notify::new());
    // SIGUSR2 (retire with hand-over): registered here, as only workers give it a meaning;
    // before this, the child's common set ignores it.
    let mut usr2 =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(cause = %err, "worker cannot handle SIGUSR2");
                return WORKER_BOOT_ERROR;
            }
        };

    let acceptor = Acceptor {
        listeners: sockets,
        limit: Arc::clone(&limit),
        conns: conns.clone(),
        stop: stop.clone(),
        service: Arc::clone(&service),
        slot,
        idle_timeout: None, // each service has its own
        reclaim: reclaim.clone(),
        targets: targets.clone(),
        yield_permit: Arc::clone(&yield_permit),
    };
    let accept_loop = tokio::spawn(acceptor.run());
    // Resumes parked connections, closes expired ones; at a stop or retirement it resumes every
    // one (the drain waits for it through its token of `conns`).
    tokio::spawn(
        Driver {
            parking,
            service: Arc::clone(&service),
            conns: conns.clone(),
            stop: stop.clone(),
            targets: targets.clone(),
            reclaim: reclaim.clone(),
        }
        .run(),
    );

    // Offers from retiring workers, taken until this one stops or retires. Cancelled by the
    // stop path below; the intake task then drops the socket (nobody offers to it any more).
    let intake_closed = CancellationToken::new();
    let generation = slot.generation.load(Ordering::Relaxed);
    match handoff::bind(arbiter.as_raw(), generation) {
        Ok(listener) => {
            let intake = handoff::Intake {
                listener,
                closed: intake_closed.clone(),
                limit,
                conns: conns.clone(),
                stop: stop.clone(),
                targets: targets.clone(),
                service: Arc::clone(&service),
                slot,
                reclaim,
                cap: config.worker_connections,
                yield_permit,
            };
            tokio::spawn(intake.run());
        }
        // Not fatal: this worker serves, it only cannot take connections over.
        Err(err) => tracing::warn!(cause = %err, "worker cannot take hand-overs"),
    }

    if let Err(err) = child.ready() {
        tracing::error!(cause = %err, "worker cannot tell the arbiter it is ready");
        return WORKER_BOOT_ERROR;
    }
    let signals = &mut child.signals;

    // Serve until told to stop (or retire: hand the line connections over first).
    let (reason, retire) = loop {
        tokio::select! {
            // USR2 before TERM: the arbiter sends both to a worker it retires.
            biased;
            _ = usr2.recv() => break ("SIGUSR2", true),
            _ = signals.term.recv() => break ("SIGTERM", false),
            _ = orphaned.cancelled() => break ("the arbiter is gone", false),
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
    intake_closed.cancel();
    // An orphan has nobody to hand to: the generation that would take over has no arbiter. A
    // worker with no line service has nothing to hand over (HTTP connections drain), and
    // skips looking for targets: with `--max-requests` workers retire several times a second.
    let hand_over = retire && !orphan && has_line_service(&config);
    if hand_over {
        // Before `stop`: line services look at this first, and offer themselves.
        targets.request();
        tokio::spawn(handoff::find(targets.clone(), arbiter.as_raw(), grace));
    }
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
    if hand_over
        && targets.stats().handed.load(Ordering::Relaxed)
            + targets.stats().kept.load(Ordering::Relaxed)
            > 0
    {
        let handed = targets.stats().handed.load(Ordering::Relaxed);
        let kept = targets.stats().kept.load(Ordering::Relaxed);
        if kept > 0 {
            tracing::warn!(
                slot = slot_number,
                "handed {handed} connection(s) to a newer worker; {kept} found none to take \
                 them and were stopped as before"
            );
        } else {
            tracing::info!(
                slot = slot_number,
                "handed {handed} connection(s) to a newer worker"
            );
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::{Invocation, parse_from};
    use crate::config::file::FileConfig;

    fn config(args: &[&str]) -> Config {
        match parse_from(std::iter::once("oxicorn").chain(args.iter().copied())).unwrap() {
            Invocation::Serve(a) => Config::merge(&a, &FileConfig::default()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// A retiring static worker has nothing to hand over, so it does not look for targets;
    /// one with a line service does, whatever else it serves.
    #[test]
    fn only_workers_with_line_services_look_for_hand_over_targets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        assert!(!has_line_service(&config(&["static", root])));
        assert!(has_line_service(&config(&["echo"])));
        assert!(has_line_service(&config(&["chat"])));
        assert!(has_line_service(&config(&["quote"])));
    }
}
