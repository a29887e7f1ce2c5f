//! The hub as a process: what it does between the fork and serving, and its main loop.
//!
//! It boots on the child layer ([`crate::child`]), as a worker does: parent-death signal,
//! orphan check, its own runtime, its signal set, then the heartbeat and one ready message.
//! Like every child it leaves a terminal's Ctrl-C (SIGINT, sent to the whole foreground
//! process group) to the arbiter, which stops the workers first and the hub last: draining
//! workers may still use the bus.

use std::sync::{Arc, Mutex};

use tokio::net::UnixListener;

use super::state::Hub;
use super::{HubBoot, conn, recovery};
use crate::bus::show_address;
use crate::child::{Child, ChildBoot};
use crate::exit::HUB_BOOT_ERROR;

/// Runs the hub to completion and returns its exit code. Never returns into the arbiter's
/// code: the caller exits with the code.
pub fn run(boot: HubBoot, child: ChildBoot) -> i32 {
    crate::child::run(child, move |child| serve(boot, child))
}

async fn serve(boot: HubBoot, mut child: Child) -> i32 {
    let HubBoot {
        address,
        recovery_cap,
        log,
        restart,
        workers,
    } = boot;
    let arbiter = child.arbiter;
    let listener = match UnixListener::bind(&address) {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(cause = %err, "hub cannot listen on {}", show_address(&address));
            return HUB_BOOT_ERROR;
        }
    };
    tracing::debug!("hub listening on {}", show_address(&address));

    // A first start has nothing to recover: no worker holds a name yet.
    let awaited = restart.then(|| workers.into_iter().collect());
    let hub = Arc::new(Mutex::new(Hub::new(awaited)));
    if restart {
        // Ends when recovery does; nothing else to close.
        tokio::spawn(recovery::recovery(Arc::clone(&hub), arbiter, recovery_cap));
    }

    // The heartbeat runs on the hub's only thread: if anything blocks it, the beat stops and
    // the arbiter kills and restarts the hub. It also notices an arbiter that is gone.
    let orphaned = child.start_heartbeat();
    if let Err(err) = child.ready() {
        tracing::error!(cause = %err, "hub cannot tell the arbiter it is ready");
        return HUB_BOOT_ERROR;
    }

    let signals = &mut child.signals;
    // Accepts for as long as the hub runs; it ends with the runtime.
    tokio::spawn(conn::accept_loop(listener, hub));
    loop {
        tokio::select! {
            // The arbiter stops the hub with QUIT, after the last worker. A TERM comes from
            // elsewhere: a service manager stopping the whole process group (systemd's default
            // KillMode) while the workers still drain and use the bus, or the parent-death
            // signal when the arbiter died. Only the latter ends the hub.
            _ = signals.term.recv() => {
                if nix::unistd::getppid() != arbiter {
                    return 0;
                }
                tracing::debug!("hub: TERM ignored; the arbiter stops the hub after the workers");
            }
            () = orphaned.cancelled() => {
                tracing::warn!("the arbiter ({arbiter}) is gone: the hub stops");
                return 0;
            }
            _ = signals.quit.recv() => return 0,
            _ = signals.usr1.recv() => {
                if let Err(err) = log.reopen() {
                    tracing::error!(cause = %err, "cannot reopen the log file");
                }
            }
        }
    }
}
