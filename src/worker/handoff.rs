//! The worker's part in handing live line connections (chat, echo, quote) to a newer worker
//! when it retires for a reload, an upgrade, recycling or scaling down; and in taking them
//! over from an older one. The conversation itself and what a connection carries are
//! [`crate::service::handoff`]'s; this module owns the socket a worker takes offers on, how a
//! retiring worker finds the workers to offer to, and how an offered connection is admitted.
//!
//! **Retire, or stop.** SIGTERM stops a worker as always (its line connections are told to
//! reconnect, or cut at the graceful timeout). SIGUSR2 *retires* it: it stops accepting and
//! drains exactly as on SIGTERM, but first offers every line connection to a newer worker.
//! The arbiter sends SIGUSR2 (then SIGTERM, which a retiring worker treats as the same
//! retirement) to a worker it replaces by a ready one (HUP, USR2 upgrade, recycling) or
//! retires when scaling down, and never in a full stop. A worker sorts USR2 before TERM
//! when both are pending, and the kernel delivers the lower-numbered USR2 (12) before
//! TERM (15) anyway.
//!
//! **Finding the newer workers.** Every ready worker listens on an abstract Unix socket
//! named `\0oxicorn-<arbiter pid>-handoff-<generation>-<worker pid>` ([`address`]), bound
//! once its services are up and closed as soon as it begins to stop or retire. A retiring
//! worker lists the listening sockets of its arbiter in `/proc/net/unix` (abstract names are
//! shown there with `@` for the NUL) and offers to those of the highest generation there,
//! newest first, spreading its connections over them in turn: after a HUP they are the new
//! generation; when scaling down, the workers that stay. The arbiter is not asked: it stays
//! single-threaded and free of this traffic, and nothing has to be kept in step. Abstract
//! names need no clean-up after a crash; anyone on the machine can connect to one, so an
//! offer is only read from a peer with this worker's uid (`SO_PEERCRED`), as the bus does.
//!
//! **Deadline.** A retiring worker looks for targets for at most [`FIND_TIMEOUT`] (or the
//! graceful timeout, if shorter); if there are none, every connection gets the old
//! behaviour and the log says so once. A new worker refuses an offer when it is full
//! (`--worker-connections`), is stopping itself, or has no service of that name; the old
//! worker then tries the next, and keeps the connection when none takes it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::scoreboard::Slot;
use crate::service::handoff::{self, Found, Targets};
use crate::service::reclaim::Reclaimer;
use crate::service::{ConnContext, Serve};

/// How long a retiring worker looks for a worker to hand to, at most.
pub const FIND_TIMEOUT: Duration = Duration::from_secs(5);

/// How often it looks again meanwhile.
const FIND_EVERY: Duration = Duration::from_millis(50);

/// The prefix of the hand-over sockets of the workers of arbiter `arbiter` (without the NUL).
fn prefix(arbiter: i32) -> String {
    format!("oxicorn-{arbiter}-handoff-")
}

/// The abstract socket the worker `pid` of generation `generation` of arbiter `arbiter` takes
/// offers on (a leading NUL, Linux only).
pub fn address(arbiter: i32, generation: u64, pid: u32) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let mut name = vec![0u8];
    name.extend_from_slice(format!("{}{generation}-{pid}", prefix(arbiter)).as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(name))
}

/// Binds this worker's hand-over socket.
///
/// # Errors
/// If the name is taken (another process with this pid under this arbiter: not expected) or
/// the socket cannot be made.
pub fn bind(arbiter: i32, generation: u64) -> io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = address(arbiter, generation, std::process::id());
    let name = &addr.as_os_str().as_encoded_bytes()[1..];
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let std = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    std.set_nonblocking(true)?;
    UnixListener::from_std(std)
}

/// The hand-over sockets listening in `proc_net_unix` (the text of `/proc/net/unix`) for
/// arbiter `arbiter`, other than `own_pid`'s: those of the highest generation, in no
/// particular order.
fn parse_targets(proc_net_unix: &str, arbiter: i32, own_pid: u32) -> Vec<PathBuf> {
    /// `__SO_ACCEPTCON`: the socket listens.
    const ACCEPTCON: u32 = 1 << 16;
    let want = format!("@{}", prefix(arbiter));
    let mut found: Vec<(u64, u32)> = Vec::new();
    for line in proc_net_unix.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode Path
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(path)) = (fields.get(3), fields.get(7)) else {
            continue;
        };
        let Ok(flags) = u32::from_str_radix(flags, 16) else {
            continue;
        };
        if flags & ACCEPTCON == 0 {
            continue;
        }
        let Some(rest) = path.strip_prefix(&want) else {
            continue;
        };
        let Some((generation, pid)) = rest.split_once('-') else {
            continue;
        };
        if let (Ok(generation), Ok(pid)) = (generation.parse(), pid.parse())
            && pid != own_pid
        {
            found.push((generation, pid));
        }
    }
    let Some(newest) = found.iter().map(|(g, _)| *g).max() else {
        return Vec::new();
    };
    found
        .into_iter()
        .filter(|(g, _)| *g == newest)
        .map(|(g, pid)| address(arbiter, g, pid))
        .collect()
}

/// Looks for workers to hand to until some are found or `limit` passes, and tells the
/// connections ([`Targets::found`]).
pub async fn find(targets: Targets, arbiter: i32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit.min(FIND_TIMEOUT);
    loop {
        // A procfs file is generated in memory: reading it does not block on a disk.
        let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        let found = parse_targets(&text, arbiter, std::process::id());
        if !found.is_empty() {
            tracing::debug!(workers = found.len(), "handing line connections over");
            targets.found(Found::Workers(found));
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "hand-over: no ready worker to take this worker's line connections within {}ms; \
                 they get the old behaviour (told to reconnect, or closed at the graceful timeout)",
                limit.min(FIND_TIMEOUT).as_millis()
            );
            targets.found(Found::Nobody);
            return;
        }
        tokio::time::sleep(FIND_EVERY).await;
    }
}

/// What taking over a connection needs of the worker: the same as the accept loop.
pub struct Intake<S: Serve> {
    /// The hand-over socket; dropped (no more offers) when `closed` is cancelled.
    pub listener: UnixListener,
    /// Cancelled when this worker begins to stop or retire: it takes no more offers.
    pub closed: CancellationToken,
    /// The connection cap, shared with the accept loop: an offer takes a permit or is refused.
    pub limit: Arc<Semaphore>,
    /// The worker's connection tasks (a taken connection drains like an accepted one).
    pub conns: TaskTracker,
    /// The worker's stop token, for the contexts.
    pub stop: CancellationToken,
    /// The worker's retirement, for the contexts (a taken connection may move again).
    pub targets: Targets,
    /// The protocols.
    pub service: Arc<S>,
    /// This worker's scoreboard slot (the live-connection gauge).
    pub slot: &'static Slot,
    /// The accept loop's table of closable connections.
    pub reclaim: Reclaimer,
    /// `--worker-connections`.
    pub cap: usize,
    /// Asks the accept loop for the permit it holds while waiting for a client
    /// ([`super::accept::Acceptor::yield_permit`]).
    pub yield_permit: Arc<tokio::sync::Notify>,
}

impl<S: Serve> Intake<S> {
    /// Takes offers until `closed`.
    pub async fn run(self) {
        let uid = nix::unistd::geteuid().as_raw();
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(err) => {
                        tracing::debug!(cause = %err, "hand-over socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = self.closed.cancelled() => break,
            };
            if !stream.peer_cred().is_ok_and(|c| c.uid() == uid) {
                tracing::warn!("hand-over socket: refused a connection from another user");
                continue;
            }
            self.take(stream);
        }
    }

    /// Reads one offer and carries the connection on, in a connection task.
    fn take(&self, stream: tokio::net::UnixStream) {
        let limit = Arc::clone(&self.limit);
        let closed = self.closed.clone();
        let stop = self.stop.clone();
        let retire = self.targets.retire();
        let service = Arc::clone(&self.service);
        let slot = self.slot;
        let reclaim = self.reclaim.clone();
        let cap = self.cap;
        let yield_permit = Arc::clone(&self.yield_permit);
        self.conns.spawn(async move {
            let offer =
                match tokio::time::timeout(handoff::ANSWER_TIMEOUT, handoff::receive(stream)).await
                {
                    Ok(Ok(o)) => o,
                    Ok(Err(err)) => {
                        tracing::debug!(cause = %err, "hand-over: bad offer");
                        return;
                    }
                    Err(_) => return,
                };
            if closed.is_cancelled() {
                offer.receipt.refuse("this worker is stopping").await;
                return;
            }
            let Some(permit) = permit(&limit, slot, cap, &yield_permit).await else {
                offer.receipt.refuse("this worker is full").await;
                return;
            };
            let (stream, peer) = match handoff::adopt_stream(offer.fd) {
                Ok(s) => s,
                Err(err) => {
                    offer.receipt.refuse(&err.to_string()).await;
                    return;
                }
            };
            slot.active_conns.fetch_add(1, Ordering::Relaxed);
            let _guard = super::accept::ActiveGuard(slot);
            let ctx = ConnContext {
                peer,
                stop,
                idle_timeout: None,
                metrics: crate::service::metrics::Metrics::new(slot),
                reclaim: reclaim.register(),
                listener: 0,
                retire,
            };
            service
                .adopt(&offer.service, stream, offer.parcel, offer.receipt, ctx)
                .await;
            drop(permit);
        });
    }
}

/// A connection permit for a handed-over connection, if the worker serves fewer than `cap`.
/// The accept loop holds one permit while it waits for a client (it takes it before
/// `accept`); when that is the last one, the loop is asked to give it back, and this waiter,
/// queued first (tokio's semaphore is fair), gets it.
async fn permit(
    limit: &Arc<Semaphore>,
    slot: &'static Slot,
    cap: usize,
    yield_permit: &tokio::sync::Notify,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(p) = Arc::clone(limit).try_acquire_owned() {
        return Some(p);
    }
    if slot.active_conns.load(Ordering::Relaxed) as usize >= cap {
        return None;
    }
    let mut acquire = Box::pin(Arc::clone(limit).acquire_owned());
    // Queued now, before the accept loop is asked to let go.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(acquire.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(p) = first {
        return p.ok();
    }
    yield_permit.notify_one();
    tokio::time::timeout(Duration::from_secs(1), acquire)
        .await
        .ok()?
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_listening_sockets_of_the_newest_generation_but_ours() {
        let text = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 @oxicorn-7-handoff-1-100
0000000000000000: 00000002 00000000 00010000 0001 01 1002 @oxicorn-7-handoff-2-200
0000000000000000: 00000002 00000000 00010000 0001 01 1003 @oxicorn-7-handoff-2-300
0000000000000000: 00000003 00000000 00000000 0001 03 1004 @oxicorn-7-handoff-2-400
0000000000000000: 00000002 00000000 00010000 0001 01 1005 @oxicorn-8-handoff-9-500
0000000000000000: 00000002 00000000 00010000 0001 01 1006 @oxicorn-7-hub
0000000000000000: 00000002 00000000 00010000 0001 01 1007 /run/other.sock
";
        let mut got = parse_targets(text, 7, 300);
        got.sort();
        assert_eq!(got, vec![address(7, 2, 200)]);
        // Scaling down: one generation, every other worker.
        let mut got = parse_targets(text, 7, 100);
        got.sort();
        assert_eq!(got, vec![address(7, 2, 200), address(7, 2, 300)]);
        assert!(parse_targets(text, 9, 1).is_empty());
    }

    #[tokio::test]
    async fn a_bound_socket_is_found_in_proc_net_unix() {
        // A made-up arbiter pid, so no real worker's socket is in the way.
        let arbiter = -(std::process::id() as i32);
        let _l = bind(arbiter, 3).unwrap();
        let text = std::fs::read_to_string("/proc/net/unix").unwrap();
        assert_eq!(
            parse_targets(&text, arbiter, 0),
            vec![address(arbiter, 3, std::process::id())]
        );
        assert!(parse_targets(&text, arbiter, std::process::id()).is_empty());
    }
}
