//! The hub as a process: what it does between the fork and serving, and its main loop.
//!
//! It boots as a worker does, and for the same reasons: the arbiter blocked its signals across
//! the fork and the child drops the arbiter's handlers first; then the hub sets its
//! parent-death signal, checks the arbiter is still its parent, builds its own current-thread
//! runtime (tokio never runs in the arbiter), installs its handlers and only then unblocks.
//! Kept in this one file (signals, child start, heartbeat, ready message) so the process boot
//! can move onto a layer shared with the workers without touching the rest of the hub.

use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::state::Hub;
use super::{HUB_BOOT_ERROR, HubBoot, conn, recovery};
use crate::bus::{hub_address, show_address};
use crate::scoreboard::SlotState;

/// Runs the hub to completion and returns its exit code. Never returns into the arbiter's
/// code: the caller exits with the code.
pub fn run(boot: HubBoot) -> i32 {
    // As a worker: stop if the arbiter dies, and never run without one.
    match crate::worker::start_child(boot.arbiter, "hub") {
        crate::worker::ChildStart::Orphaned => 0,
        crate::worker::ChildStart::Failed => HUB_BOOT_ERROR,
        crate::worker::ChildStart::Ready(rt) => rt.block_on(serve(boot)),
    }
}

async fn serve(boot: HubBoot) -> i32 {
    let HubBoot {
        arbiter,
        recovery_cap,
        beat_interval,
        ready_tx,
        log,
        restart,
        workers,
        slot,
    } = boot;
    let (mut term, mut quit, mut usr1, _ignored) = match install_signals() {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(cause = %err, "hub cannot install its signal handlers");
            return HUB_BOOT_ERROR;
        }
    };
    crate::arbiter::signals::unblock();

    let addr = hub_address(arbiter.as_raw() as u32);
    let listener = match UnixListener::bind(&addr) {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(cause = %err, "hub cannot listen on {}", show_address(&addr));
            return HUB_BOOT_ERROR;
        }
    };
    tracing::debug!("hub listening on {}", show_address(&addr));

    // A first start has nothing to recover: no worker holds a name yet.
    let awaited = restart.then(|| workers.into_iter().collect());
    let hub = Arc::new(Mutex::new(Hub::new(awaited)));
    if restart {
        // Ends when recovery does; nothing else to close.
        tokio::spawn(recovery::recovery(Arc::clone(&hub), arbiter, recovery_cap));
    }

    // The heartbeat runs on the hub's only thread: if anything blocks it, the beat stops and
    // the arbiter kills and restarts the hub. It also notices an arbiter that is gone.
    let orphaned = CancellationToken::new();
    tokio::spawn(crate::worker::heartbeat(
        slot,
        beat_interval,
        arbiter,
        orphaned.clone(),
    ));
    slot.set_state(SlotState::Ready);

    let pid = std::process::id();
    if let Err(err) = nix::unistd::write(&ready_tx, &crate::worker::ready_message(pid, 0)) {
        tracing::error!(cause = %err, "hub cannot tell the arbiter it is ready");
        return HUB_BOOT_ERROR;
    }
    drop(ready_tx);

    // Accepts for as long as the hub runs; it ends with the runtime.
    tokio::spawn(conn::accept_loop(listener, hub));
    loop {
        tokio::select! {
            _ = term.recv() => return 0,
            () = orphaned.cancelled() => {
                tracing::warn!("the arbiter ({arbiter}) is gone: the hub stops");
                return 0;
            }
            _ = quit.recv() => return 0,
            _ = usr1.recv() => {
                if let Err(err) = log.reopen() {
                    tracing::error!(cause = %err, "cannot reopen the log file");
                }
            }
        }
    }
}

type Sig = tokio::signal::unix::Signal;

/// TERM, QUIT and USR1, plus the arbiter's other signals registered only so they are ignored
/// (TTIN/TTOU would otherwise stop the process by their default action).
///
/// INT is ignored too: it comes from a terminal's Ctrl-C, which the kernel sends to the whole
/// foreground process group, hub included. The arbiter gets it as well and stops the workers
/// first, then the hub (draining workers may still use the bus); a hub that quit on its own
/// INT would leave the workers warning that it is gone. The arbiter stops the hub with TERM.
fn install_signals() -> std::io::Result<(Sig, Sig, Sig, Vec<Sig>)> {
    let mut ignored = Vec::new();
    for sig in [
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        ignored.push(signal(SignalKind::from_raw(sig as i32))?);
    }
    Ok((
        signal(SignalKind::terminate())?,
        signal(SignalKind::quit())?,
        signal(SignalKind::user_defined1())?,
        ignored,
    ))
}
