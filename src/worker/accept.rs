//! The accept loop: one per worker, over every inherited listener, under the connection cap.

use std::future::poll_fn;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::listener::{Listener, ListenerKind};
use crate::net::{Peer, Stream};
use crate::scoreboard::Slot;
use crate::service::handoff::Targets;
use crate::service::reclaim::Reclaimer;
use crate::service::{ConnContext, Serve};

/// A listener registered with this worker's runtime.
pub enum AcceptSocket {
    /// TCP.
    Tcp(TcpListener),
    /// Unix.
    Unix(UnixListener),
}

impl AcceptSocket {
    /// Takes over an inherited listener.
    ///
    /// `O_NONBLOCK` lives on the open file description, which every worker shares; setting it
    /// here sets it for all of them, which is what they all want (the arbiter never accepts).
    ///
    /// # Errors
    /// If the socket cannot be registered with the runtime.
    pub fn from_listener(listener: Listener) -> io::Result<AcceptSocket> {
        let fd: OwnedFd = listener.fd;
        Ok(match listener.kind {
            ListenerKind::Tcp => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true)?;
                AcceptSocket::Tcp(TcpListener::from_std(std)?)
            }
            ListenerKind::Unix => {
                let std = std::os::unix::net::UnixListener::from(fd);
                std.set_nonblocking(true)?;
                AcceptSocket::Unix(UnixListener::from_std(std)?)
            }
        })
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, Peer)>> {
        match self {
            AcceptSocket::Tcp(l) => l.poll_accept(cx).map_ok(|(s, addr)| {
                // Small writes (echo, chat lines) go out at once.
                let _ = s.set_nodelay(true);
                let addr = std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port());
                (Stream::Tcp(s), Peer::Tcp(addr))
            }),
            AcceptSocket::Unix(l) => l
                .poll_accept(cx)
                .map_ok(|(s, _)| (Stream::Unix(s), Peer::Unix)),
        }
    }
}

/// Accepts from whichever listener is ready, starting the scan one further each time so a
/// busy listener cannot starve the others.
/// Returns the connection and the index of the listener that accepted it.
async fn accept_any(
    listeners: &[AcceptSocket],
    next: &mut usize,
) -> io::Result<(Stream, Peer, usize)> {
    poll_fn(|cx| {
        let n = listeners.len();
        for i in 0..n {
            let idx = (*next + i) % n;
            if let Poll::Ready(r) = listeners[idx].poll_accept(cx) {
                *next = (idx + 1) % n;
                return Poll::Ready(r.map(|(s, p)| (s, p, idx)));
            }
        }
        Poll::Pending
    })
    .await
}

/// Decrements the slot's live-connection gauge when a connection task ends, even by panic.
pub(crate) struct ActiveGuard(pub(crate) &'static Slot);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything the accept loop needs, moved into its task.
pub struct Acceptor<S: Serve> {
    /// The inherited listeners; dropped (closed in this process) when the loop ends.
    pub listeners: Vec<AcceptSocket>,
    /// One permit per connection being served (`--worker-connections`). Taken *before*
    /// `accept`, so a full worker leaves new clients in the kernel's queue for another worker
    /// instead of accepting and dropping them. Never closed.
    pub limit: Arc<Semaphore>,
    /// Every connection task, so a graceful stop can wait for them. Closed by the worker's
    /// shutdown path.
    pub conns: TaskTracker,
    /// Cancelled on stop: ends this loop, and tells services to finish up.
    pub stop: CancellationToken,
    /// The protocol.
    pub service: Arc<S>,
    /// This worker's scoreboard slot (counters).
    pub slot: &'static Slot,
    /// Passed to every connection (a service with its own, as in [`crate::service::Services`],
    /// replaces it).
    pub idle_timeout: Option<Duration>,
    /// The connections a newcomer may displace at the cap (idle kept-alive, silent ones).
    pub reclaim: Reclaimer,
    /// The worker's retirement with hand-over, which every connection watches.
    pub targets: Targets,
    /// Notified by the hand-over intake when it needs the permit this loop holds while it
    /// waits for a client ([`crate::worker::handoff`]): the loop gives it back and takes
    /// another when one is free, so a connection handed over counts against the cap like an
    /// accepted one. Never closed.
    pub yield_permit: Arc<tokio::sync::Notify>,
}

/// How often, at most, the "connection limit reached" warning is logged.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

impl<S: Serve> Acceptor<S> {
    /// Runs until `stop` is cancelled, then drops the listeners.
    pub async fn run(self) {
        let mut next = 0;
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            // A permit first: a full worker leaves newcomers in the kernel's queue for another
            // worker, unless one of its own connections is idle and can make room.
            let (permit, accepted) = match self.limit.clone().try_acquire_owned() {
                Ok(p) => (p, None),
                Err(_) if self.reclaim.has_idle() => {
                    // At the cap with an idle connection: take the waiting client, then close
                    // the idle one for it (its task ending frees the permit).
                    let accepted = tokio::select! {
                        r = accept_any(&self.listeners, &mut next) => r,
                        _ = self.stop.cancelled() => break,
                    };
                    if accepted.is_ok() && self.reclaim.evict_one() {
                        let now = tokio::time::Instant::now();
                        if warned.is_none_or(|at| now >= at + FULL_WARNING_EVERY) {
                            warned = Some(now);
                            tracing::warn!(
                                "worker_connections are not enough: closing idle connections \
                                 to admit new ones (raise --worker-connections)"
                            );
                        }
                    }
                    let p = tokio::select! {
                        // `expect`: the semaphore is never closed.
                        p = self.limit.clone().acquire_owned() => p.expect("connection semaphore closed"),
                        _ = self.stop.cancelled() => break,
                    };
                    (p, Some(accepted))
                }
                Err(_) => {
                    let p = tokio::select! {
                        p = self.limit.clone().acquire_owned() => p.expect("connection semaphore closed"),
                        // Look again: an idle connection can now make room.
                        _ = self.reclaim.became_idle() => continue,
                        _ = self.stop.cancelled() => break,
                    };
                    (p, None)
                }
            };
            let accepted = match accepted {
                Some(a) => a,
                None => tokio::select! {
                    r = accept_any(&self.listeners, &mut next) => r,
                    _ = self.stop.cancelled() => break,
                    // A handed-over connection waits for this permit (it is queued first).
                    () = self.yield_permit.notified() => {
                        drop(permit);
                        continue;
                    }
                },
            };
            match accepted {
                Ok((stream, peer, listener)) => {
                    self.slot.accepted.fetch_add(1, Ordering::Relaxed);
                    self.slot.active_conns.fetch_add(1, Ordering::Relaxed);
                    let guard = ActiveGuard(self.slot);
                    let service = Arc::clone(&self.service);
                    let ctx = ConnContext {
                        peer,
                        stop: self.stop.clone(),
                        idle_timeout: self.idle_timeout,
                        metrics: crate::service::metrics::Metrics::new(self.slot),
                        reclaim: self.reclaim.register(),
                        listener,
                        retire: self.targets.retire(),
                    };
                    self.conns.spawn(async move {
                        service.serve(stream, ctx).await;
                        drop(guard);
                        drop(permit);
                    });
                }
                Err(err) => {
                    // EMFILE/ENFILE/ENOBUFS and friends: the condition lasts, so retrying at
                    // once would spin. Free the permit and back off briefly.
                    drop(permit);
                    if is_transient(&err) {
                        continue;
                    }
                    tracing::warn!(cause = %err, "failed to accept; retrying in 100ms");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = self.stop.cancelled() => break,
                    }
                }
            }
        }
        // Dropping the listeners here closes this worker's copies at once: in a graceful stop
        // the other workers (or the next generation) take the queued connections.
        drop(self.listeners);
    }
}

/// Errors that concern one connection that died in the queue, not the listener.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || err.raw_os_error() == Some(nix::libc::EPROTO)
}
