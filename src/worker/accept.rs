//! The accept loop: one per worker, over every inherited listener, under the connection cap,
//! and the balance between workers sharing a listener.
//!
//! Every worker's epoll watches the same shared listener. Registered as mio does it, every
//! sleeping worker wakes for each new client and whoever runs first takes it; the losers pay a
//! context switch and, under load, an `accept` that finds nothing. So while a worker will
//! accept whatever wakes it (it holds a permit and is under `SLACK` connections, so one more
//! cannot put it over any share), its listener's entry in the runtime's epoll instance is
//! re-added with `EPOLLEXCLUSIVE` (mio cannot set it), and the kernel wakes one sleeping worker
//! per client, as nginx does (its `accept_mutex off`, the default). Otherwise the entry is
//! shared, so that a peer is always woken for a client this worker will not take at once. Only
//! sleepers are spared: a worker that is running when a client comes still sees it, and may
//! find nothing when it tries (measured, issue 12: context switches per short connection fell
//! from ~0.43 to ~0.40 with 2 workers, `accept`s that find nothing did not). The
//! entry is found in `/proc/self/fdinfo`; when it is not, wake-ups stay shared. (An epoll
//! instance of its own, holding the listener exclusively and itself registered with the
//! runtime, does not do it: the kernel counts a wake-up as taken only when a thread sleeps in
//! `epoll_wait` on that very instance, so every worker's inner instance is still woken.)
//!
//! Either way, whoever runs first takes a client. Left alone, that hands a burst of clients to
//! one worker (splits of 49/15 over 2 workers were measured, issue 12). So a worker that holds
//! clearly more connections than its least-loaded ready peer (read from the scoreboard) first
//! serves what it has (its ready connection tasks run, and short connections end there), and
//! only if it is still over its share waits until a client is actually queued, gives its peers
//! a short head start, and accepts only if it is still the right one to. The queue stays
//! shared: nothing is ever refused or reset, and when peers do not accept at all (wedged,
//! stopping) the worker stops deferring to them. This module never touches another worker's
//! slot except to read it, nor any entry of the runtime's epoll instance but its listeners'.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::listener::{Listener, ListenerKind};
use crate::net::{Peer, Stream};
use crate::scoreboard::{Scoreboard, Slot};
use crate::service::handoff::Targets;
use crate::service::reclaim::Reclaimer;
use crate::service::{ConnContext, Serve};

/// A listener registered with this worker's runtime.
pub enum AcceptSocket {
    /// TCP, accepted by tokio (no balancing: its readiness cannot be read apart from
    /// accepting).
    Tcp(TcpListener),
    /// Unix, accepted by tokio (no balancing).
    Unix(UnixListener),
    /// An inherited listener whose readiness is watched apart from accepting, so the worker
    /// can leave a queued client to a less busy peer. What [`AcceptSocket::from_listener`]
    /// builds.
    Watched(WatchedListener),
}

/// A non-blocking listener registered with the runtime for readiness only; accepting is a
/// separate, explicit step (see the module header). With its entry in the runtime's epoll
/// instance when that was found, so the wake-up for a new client can be made exclusive.
pub struct WatchedListener(AsyncFd<Inherited>, Option<EpollEntry>);

/// The listener's entry in the runtime's own epoll instance, which this module re-adds with or
/// without `EPOLLEXCLUSIVE` (mio cannot set it). Found by its target descriptor in
/// `/proc/self/fdinfo`, in the epoll instance that gained it when the runtime registered it;
/// the entry's `data` (the runtime's token) and flags are kept as they were.
struct EpollEntry {
    /// The runtime's epoll instance (one of its descriptors), open for the worker's life.
    epoll: RawFd,
    /// The listener.
    fd: RawFd,
    /// The flags the runtime registered (`EPOLLIN | EPOLLRDHUP | EPOLLET` with mio).
    events: u32,
    /// The runtime's token for the listener, kept on every re-add.
    data: u64,
    /// Whether the entry now has `EPOLLEXCLUSIVE`.
    exclusive: std::sync::atomic::AtomicBool,
}

/// `(epoll fd, events, data)` of every epoll instance of this process watching `fd`.
fn epoll_entries_of(fd: RawFd) -> Vec<(RawFd, u32, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for e in dir.flatten() {
        let is_epoll =
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]");
        let Some(epfd) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        if !is_epoll {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}")) else {
            continue;
        };
        for line in info.lines() {
            // "tfd:        5 events:       19 data:                0  pos:0 ino:... sdev:..."
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 6
                && f[0] == "tfd:"
                && f[1].parse() == Ok(fd)
                && let (Ok(ev), Ok(data)) =
                    (u32::from_str_radix(f[3], 16), u64::from_str_radix(f[5], 16))
            {
                out.push((epfd, ev, data));
            }
        }
    }
    out
}

impl EpollEntry {
    /// The entry the runtime added for `fd` since `before` was read; `None` when it cannot be
    /// told apart (then wake-ups stay as they are).
    fn find(fd: RawFd, before: &[(RawFd, u32, u64)]) -> Option<EpollEntry> {
        let mut new: Vec<_> = epoll_entries_of(fd)
            .into_iter()
            .filter(|e| !before.iter().any(|b| b.0 == e.0))
            .collect();
        // The runtime holds its epoll instance under two descriptors (a clone of mio's
        // registry): the same entry, token and all, shows under both.
        new.sort_by_key(|e| (e.2, e.0));
        new.dedup_by_key(|e| e.2);
        if new.len() != 1 {
            return None;
        }
        let (epoll, events, data) = new.pop()?;
        Some(EpollEntry {
            epoll,
            fd,
            events,
            data,
            exclusive: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Re-adds the entry with `EPOLLEXCLUSIVE` set or not (it cannot be changed in place). An
    /// already queued client is seen again at once: `EPOLL_CTL_ADD` checks readiness.
    fn set_exclusive(&self, on: bool) -> io::Result<()> {
        use nix::libc;
        if self.exclusive.load(Ordering::Relaxed) == on {
            return Ok(());
        }
        let events = if on {
            // EPOLLEXCLUSIVE allows only these beside it.
            (self.events
                & (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLWAKEUP) as u32)
                | libc::EPOLLEXCLUSIVE as u32
        } else {
            self.events
        };
        let ctl = |op, events| {
            let mut ev = libc::epoll_event {
                events,
                u64: self.data,
            };
            // SAFETY: plain syscall on descriptors this process holds open; `ev` outlives it.
            let r = unsafe { libc::epoll_ctl(self.epoll, op, self.fd, &mut ev) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        ctl(libc::EPOLL_CTL_DEL, 0)?;
        if let Err(e) = ctl(libc::EPOLL_CTL_ADD, events) {
            // Back as the runtime made it: without an entry this worker would never hear of a
            // client on this listener again (its peers still would).
            if let Err(back) = ctl(libc::EPOLL_CTL_ADD, self.events) {
                tracing::error!(cause = %back, "a listener is no longer watched by this worker");
            }
            self.exclusive.store(false, Ordering::Relaxed);
            return Err(e);
        }
        self.exclusive.store(on, Ordering::Relaxed);
        Ok(())
    }
}

enum Inherited {
    /// With whether accepted clients inherit `TCP_NODELAY` from the listener (set there once
    /// by [`AcceptSocket::from_listener`]); when not, it is set on each client.
    Tcp(std::net::TcpListener, bool),
    Unix(std::os::unix::net::UnixListener),
}

impl AsRawFd for Inherited {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Inherited::Tcp(l, _) => l.as_raw_fd(),
            Inherited::Unix(l) => l.as_raw_fd(),
        }
    }
}

/// A client just accepted: TCP ones from an inherited listener are not registered with the
/// runtime yet, so a service may serve them without it ([`Serve::serve_fresh`]).
pub(crate) enum Client {
    /// Non-blocking, not registered.
    Fresh(std::net::TcpStream),
    /// Registered.
    Stream(Stream),
}

impl Client {
    /// The client as a registered stream.
    fn into_stream(self) -> io::Result<Stream> {
        match self {
            Client::Fresh(s) => Ok(Stream::Tcp(TcpStream::from_std(s)?)),
            Client::Stream(s) => Ok(s),
        }
    }
}

impl Inherited {
    /// One `accept`; `WouldBlock` when the queue is empty.
    fn accept(&self) -> io::Result<(Client, Peer)> {
        match self {
            Inherited::Tcp(l, nodelay_inherited) => {
                // accept4 with SOCK_NONBLOCK: one syscall where std's accept plus
                // set_nonblocking take two.
                let flags = nix::libc::SOCK_NONBLOCK | nix::libc::SOCK_CLOEXEC;
                let (s, addr) = socket2::SockRef::from(l).accept4(flags)?;
                if !*nodelay_inherited {
                    // Small writes (echo, chat lines) go out at once.
                    let _ = s.set_tcp_nodelay(true);
                }
                let addr = addr
                    .as_socket()
                    .ok_or_else(|| io::Error::other("accepted a TCP client without an address"))?;
                let addr = std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port());
                Ok((Client::Fresh(s.into()), Peer::Tcp(addr)))
            }
            Inherited::Unix(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                Ok((
                    Client::Stream(Stream::Unix(UnixStream::from_std(s)?)),
                    Peer::Unix,
                ))
            }
        }
    }

    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Inherited::Tcp(l, _) => l.as_fd(),
            Inherited::Unix(l) => l.as_fd(),
        }
    }
}

/// True when at least one client waits in the listener's accept queue (a zero-timeout
/// `poll`: edge-triggered readiness alone may be stale).
fn queued(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let n = poll(&mut fds, PollTimeout::ZERO).map_err(io::Error::from)?;
    Ok(n > 0
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN)))
}

impl WatchedListener {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Client, Peer)>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            // `try_io` clears the readiness on `WouldBlock`, so the next poll waits.
            if let Ok(r) = guard.try_io(|fd| fd.get_ref().accept()) {
                return Poll::Ready(r);
            }
        }
    }

    /// Ready once a client is queued, without accepting it.
    fn poll_queued(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            if queued(guard.get_inner().as_fd())? {
                return Poll::Ready(Ok(()));
            }
            guard.clear_ready();
        }
    }
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
        let inherited = match listener.kind {
            ListenerKind::Tcp => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true)?;
                // Small writes (echo, chat lines) go out at once. Linux copies TCP_NODELAY
                // from a listener to each client when the client's handshake completes, so
                // having it on the listener saves a `setsockopt` per connection, a tenth of a
                // short connection's syscalls. The arbiter sets it when it binds; set here too
                // for sockets it adopted (`fd://`, systemd), for every worker at once (the
                // socket is shared, and they all want it). Only clients queued on an adopted
                // socket before the first worker booted go without.
                let inherited = socket2::SockRef::from(&std).set_tcp_nodelay(true).is_ok();
                Inherited::Tcp(std, inherited)
            }
            ListenerKind::Unix => {
                let std = std::os::unix::net::UnixListener::from(fd);
                std.set_nonblocking(true)?;
                Inherited::Unix(std)
            }
        };
        let raw = inherited.as_raw_fd();
        let before = epoll_entries_of(raw);
        // SAFETY: `inherited` owns its listener fd, which stays open and unchanged until the
        // `AsyncFd` (which owns `inherited`) is dropped; `as_raw_fd` always returns it.
        let fd =
            unsafe { AsyncFd::register_with_interest(inherited, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)?;
        // Registered shared: the accept loop makes the wake-up exclusive when it is ready to
        // accept (see [`wake_alone`]).
        let entry = EpollEntry::find(raw, &before);
        Ok(AcceptSocket::Watched(WatchedListener(fd, entry)))
    }

    /// Ready once a client is queued (for tokio-accepted listeners: at once, as their queue
    /// cannot be looked at).
    fn poll_queued(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            AcceptSocket::Watched(w) => w.poll_queued(cx),
            AcceptSocket::Tcp(_) | AcceptSocket::Unix(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Client, Peer)>> {
        match self {
            AcceptSocket::Tcp(l) => l.poll_accept(cx).map_ok(|(s, addr)| {
                // Small writes (echo, chat lines) go out at once.
                let _ = s.set_nodelay(true);
                let addr = std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port());
                (Client::Stream(Stream::Tcp(s)), Peer::Tcp(addr))
            }),
            AcceptSocket::Unix(l) => l
                .poll_accept(cx)
                .map_ok(|(s, _)| (Client::Stream(Stream::Unix(s)), Peer::Unix)),
            AcceptSocket::Watched(w) => w.poll_accept(cx),
        }
    }
}

/// How long a worker busier than a peer leaves a queued client to the peers before looking
/// again (the runtime's timer granularity is 1 ms).
const HEAD_START: Duration = Duration::from_millis(1);
/// Connections a worker may hold beyond its least-loaded peer's before it defers (plus one
/// in eight of the peer's). With a few, a near-even split would flap; it is also about how many
/// clients a worker takes from the queue in one go before it serves them.
const SLACK: u32 = 8;
/// How often the list of ready peers is re-read from the scoreboard (a full scan).
const PEERS_EVERY: Duration = Duration::from_millis(100);
/// How long the peers may leave queued clients alone (their `accepted` counters not moving
/// over consecutive head starts) before the worker stops deferring to them; long enough for a
/// peer to be scheduled on a loaded machine, short enough that a wedged peer costs little...
const PEERS_STALLED_AFTER: Duration = Duration::from_millis(50);
/// ... and for how long it then ignores them.
const PEERS_IGNORED_FOR: Duration = Duration::from_secs(1);

/// The worker's view of its peers' load, for deciding whether to accept now.
struct Balance {
    me: &'static Slot,
    board: Option<&'static Scoreboard>,
    peers: Vec<&'static Slot>,
    read_at: Option<Instant>,
    ignored_until: Option<Instant>,
    /// Since when the peers have let every head start pass.
    stalled_since: Option<Instant>,
}

impl Balance {
    /// Balancing needs every listener's queue to be visible; otherwise it stays off.
    fn new(me: &'static Slot, listeners: &[AcceptSocket]) -> Balance {
        let watched = listeners
            .iter()
            .all(|l| matches!(l, AcceptSocket::Watched(_)));
        Balance {
            me,
            board: if watched {
                Scoreboard::installed()
            } else {
                None
            },
            peers: Vec::new(),
            read_at: None,
            ignored_until: None,
            stalled_since: None,
        }
    }

    /// True when this worker holds clearly more connections than its least-loaded ready peer:
    /// more than `least + SLACK + least / 8` (the slack keeps a near-even split from flapping).
    fn over_share(&mut self) -> bool {
        let Some(board) = self.board else {
            return false;
        };
        let mine = self.me.active_conns.load(Ordering::Relaxed);
        // Never over any share: skip the clock and the scoreboard (and do not cache a peer list
        // read while the peers may still be booting).
        if mine <= SLACK {
            return false;
        }
        let now = Instant::now();
        if self.ignored_until.is_some_and(|t| now < t) {
            return false;
        }
        self.refresh_peers(board, now);
        let Some(least) = self
            .peers
            .iter()
            .map(|p| p.active_conns.load(Ordering::Relaxed))
            .min()
        else {
            return false;
        };
        mine > least + SLACK + least / 8
    }

    /// True when this worker, holding one more connection, would still not be over any share
    /// whatever its peers hold: [`Balance::over_share`] is false up to [`SLACK`] connections.
    /// What lets its wake-up be exclusive (see [`wake_alone`]).
    fn never_over_share_after_one_more(&self) -> bool {
        self.me.active_conns.load(Ordering::Relaxed) < SLACK
    }

    /// True when a ready peer holds fewer connections than this worker, which is at its cap:
    /// the peer has room for a queued client (every worker has the same cap), so nothing of
    /// ours should be closed to make room for it. False without a scoreboard (a worker alone,
    /// or listeners whose queue cannot be watched).
    fn a_peer_has_room(&mut self) -> bool {
        let Some(board) = self.board else {
            return false;
        };
        self.refresh_peers(board, Instant::now());
        let mine = self.me.active_conns.load(Ordering::Relaxed);
        self.peers
            .iter()
            .any(|p| p.active_conns.load(Ordering::Relaxed) < mine)
    }

    /// Re-reads the ready peers from the scoreboard, at most every [`PEERS_EVERY`].
    fn refresh_peers(&mut self, board: &'static Scoreboard, now: Instant) {
        if self.read_at.is_none_or(|t| now >= t + PEERS_EVERY) {
            self.peers = board.ready_peers(self.me);
            self.read_at = Some(now);
        }
    }

    /// Connections the peers have accepted since they booted, summed.
    fn peers_accepted(&self) -> u64 {
        self.peers
            .iter()
            .map(|p| p.accepted.load(Ordering::Relaxed))
            .sum()
    }

    /// Notes whether the peers used a head start; when they have let them all pass for
    /// [`PEERS_STALLED_AFTER`], they are ignored for a while (a wedged or stopping peer must
    /// not slow this worker's accepting).
    fn after_head_start(&mut self, peers_accepted_before: u64) {
        if self.peers_accepted() != peers_accepted_before {
            self.stalled_since = None;
            return;
        }
        let now = Instant::now();
        let since = *self.stalled_since.get_or_insert(now);
        if now >= since + PEERS_STALLED_AFTER {
            self.stalled_since = None;
            self.ignored_until = Some(now + PEERS_IGNORED_FOR);
        }
    }
}

/// Accepts the next client, first leaving queued clients to less busy peers while this
/// worker is over its share (see the module header).
async fn accept_balanced(
    listeners: &[AcceptSocket],
    next: &mut usize,
    balance: &mut Balance,
) -> io::Result<(Client, Peer, usize)> {
    // A client that came while this worker slept with an exclusive wake-up may have woken it
    // alone: it is taken here, not left to peers that may know nothing of it. Only a hand-over
    // (which adds connections without an accept) can have brought the worker over its share
    // since; the next call defers as usual, its wake-up shared.
    let woken_alone = woke_alone(listeners);
    balance.stalled_since = None;
    while !woken_alone && balance.over_share() {
        // Serve what is here first: every connection task that is ready runs (and the runtime
        // polls for I/O) before this one resumes. Short connections (one request each) end in
        // that round and bring the worker back under its share. Deferring at once instead, on
        // a timer, left both workers asleep with the queue full: `Connection: close` clients
        // ran at half nginx's rate over 2 workers (issue 12). Kept-alive connections stay, so a
        // burst of them is still split.
        tokio::task::yield_now().await;
        if !balance.over_share() {
            break;
        }
        // Sleep until someone is actually waiting: an idle worker must not tick.
        let queued = wait_queued(listeners).await;
        if queued.is_err() || !balance.over_share() {
            break;
        }
        let before = balance.peers_accepted();
        tokio::time::sleep(HEAD_START).await;
        balance.after_head_start(before);
    }
    wake_alone(listeners, balance.never_over_share_after_one_more());
    accept_any(listeners, next).await
}

/// Resolves once a client is queued on any listener, without accepting it.
async fn wait_queued(listeners: &[AcceptSocket]) -> io::Result<()> {
    poll_fn(|cx| {
        for l in listeners {
            if let Poll::Ready(r) = l.poll_queued(cx) {
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
    .await
}

/// True when a watched listener's wake-up is exclusive.
fn woke_alone(listeners: &[AcceptSocket]) -> bool {
    listeners.iter().any(|l| {
        matches!(l, AcceptSocket::Watched(WatchedListener(_, Some(e)))
            if e.exclusive.load(Ordering::Relaxed))
    })
}

/// Makes each watched listener's wake-up exclusive (`alone`: the kernel wakes one sleeping
/// worker per new client, as nginx's `EPOLLEXCLUSIVE`) or shared (every sleeping worker wakes).
/// Exclusive only while this worker will accept whatever woke it: it holds a permit and one
/// more client cannot put it over its share (see
/// [`Balance::never_over_share_after_one_more`]). A sleeper that would not accept (deferring,
/// at its connection cap, backing off) must not be the one the kernel picks: nothing wakes its
/// peers for that client again. A worker that is running (not asleep in `epoll_wait`) never
/// takes the wake-up from a sleeping peer, whatever its flag. Each change costs two
/// `epoll_ctl`; none when the flag is already so. A listener whose entry was not found stays
/// shared.
fn wake_alone(listeners: &[AcceptSocket], alone: bool) {
    for l in listeners {
        if let AcceptSocket::Watched(WatchedListener(_, Some(entry))) = l
            && let Err(err) = entry.set_exclusive(alone)
        {
            tracing::debug!(cause = %err, alone, "could not change the listener's wake-up");
        }
    }
}

/// Accepts from whichever listener is ready, starting the scan one further each time so a
/// busy listener cannot starve the others.
/// Returns the connection and the index of the listener that accepted it.
async fn accept_any(
    listeners: &[AcceptSocket],
    next: &mut usize,
) -> io::Result<(Client, Peer, usize)> {
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
        let mut balance = Balance::new(self.slot, &self.listeners);
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            // A permit first: a full worker leaves newcomers in the kernel's queue for another
            // worker, unless one of its own connections is idle and can make room.
            let permit = match self.limit.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) if self.reclaim.has_idle() && !balance.a_peer_has_room() => {
                    // At the cap: the peers are woken for new clients too.
                    wake_alone(&self.listeners, false);
                    // At the cap with an idle connection, and no peer with room (nginx, too,
                    // reuses a connection only when it has no free one). Once a client is
                    // actually queued, close the idle connection first, then wait for the
                    // permit its task gives back, and accept as usual: a client is never
                    // accepted before there is room for it (the idle one may get busy
                    // meanwhile), and the queued client may as well go to a peer.
                    let queued = tokio::select! {
                        r = wait_queued(&self.listeners) => r.is_ok(),
                        // Re-evaluated now and then: the idle one may get busy, a peer free.
                        _ = tokio::time::sleep(PEERS_EVERY) => false,
                        _ = self.stop.cancelled() => break,
                    };
                    if !queued
                        || !self.reclaim.has_idle()
                        || balance.a_peer_has_room()
                        || !self.reclaim.evict_one()
                    {
                        continue;
                    }
                    let now = tokio::time::Instant::now();
                    if warned.is_none_or(|at| now >= at + FULL_WARNING_EVERY) {
                        warned = Some(now);
                        tracing::warn!(
                            "worker_connections are not enough: closing idle connections \
                             to admit new ones (raise --worker-connections)"
                        );
                    }
                    tokio::select! {
                        // `expect`: the semaphore is never closed.
                        p = self.limit.clone().acquire_owned() => p.expect("connection semaphore closed"),
                        _ = self.stop.cancelled() => break,
                    }
                }
                Err(_) => {
                    wake_alone(&self.listeners, false);
                    tokio::select! {
                        p = self.limit.clone().acquire_owned() => p.expect("connection semaphore closed"),
                        // Look again: an idle connection can now make room...
                        _ = self.reclaim.became_idle() => continue,
                        // ... or the peers that had room have filled up.
                        _ = tokio::time::sleep(PEERS_EVERY), if self.reclaim.has_idle() => continue,
                        _ = self.stop.cancelled() => break,
                    }
                }
            };
            let accepted = tokio::select! {
                r = accept_balanced(&self.listeners, &mut next, &mut balance) => r,
                _ = self.stop.cancelled() => break,
                // A handed-over connection waits for this permit (it is queued first).
                () = self.yield_permit.notified() => {
                    drop(permit);
                    continue;
                }
            };
            // Registered with the runtime here, unless the service serves it fresh (below).
            let accepted = match accepted {
                Ok((client @ Client::Fresh(_), peer, l)) if !self.service.serves_fresh(l) => {
                    client.into_stream().map(|s| (Client::Stream(s), peer, l))
                }
                other => other,
            };
            match accepted {
                Ok((client, peer, listener)) => {
                    self.slot.accepted.fetch_add(1, Ordering::Relaxed);
                    self.slot.active_conns.fetch_add(1, Ordering::Relaxed);
                    let guard = ActiveGuard(self.slot);
                    let ctx = ConnContext {
                        peer,
                        stop: self.stop.clone(),
                        idle_timeout: self.idle_timeout,
                        metrics: crate::service::metrics::Metrics::new(self.slot),
                        reclaim: self.reclaim.register(),
                        listener,
                        retire: self.targets.retire(),
                    };
                    let service = Arc::clone(&self.service);
                    let stream = match client {
                        Client::Stream(stream) => stream,
                        Client::Fresh(sock) => {
                            // Polled once right here: a short connection whose request is
                            // already there is answered and closed within this poll, on its
                            // descriptor, with no task and no `epoll_ctl` (issue 12). One that
                            // must wait becomes a task like any other; the task's first poll
                            // takes over every waker this poll left with the accept loop's.
                            let mut conn = Box::pin(async move {
                                service.serve_fresh(sock, ctx).await;
                                drop(guard);
                                drop(permit);
                            });
                            let polled = poll_fn(|cx| {
                                Poll::Ready(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                                    || conn.as_mut().poll(cx),
                                )))
                            })
                            .await;
                            match polled {
                                Ok(Poll::Pending) => drop(self.conns.spawn(conn)),
                                Ok(Poll::Ready(())) => {}
                                // As a task's panic does: the connection ends (dropping it
                                // closes the socket and gives back its slot and permit), and
                                // the accept loop goes on. The hook has reported it.
                                Err(_) => drop(conn),
                            }
                            continue;
                        }
                    };
                    // The stream and context stay captured here for the task's whole life
                    // beside the service's future, which holds them too (152 bytes; issue 13).
                    // Boxing them to move them out on the first poll made the task 48 bytes
                    // instead of 192, yet an idle connection cost 40-60 bytes *more* (PSS over
                    // 10,000 connections: 1,796-1,820 against 1,758-1,759), so they stay.
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
                    wake_alone(&self.listeners, false);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoreboard::SlotState;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    /// A loopback listener as a worker takes it over, and a client in its queue.
    fn listening_with_a_client() -> (Vec<AcceptSocket>, std::net::TcpStream) {
        let addr = crate::net::BindAddr::Tcp("127.0.0.1:0".parse().unwrap());
        let listener = Listener::bind(&addr, 16).unwrap();
        let crate::net::BindAddr::Tcp(bound) = listener.bound else {
            unreachable!("a TCP listener is bound to a TCP address")
        };
        let client = std::net::TcpStream::connect(bound).unwrap();
        (vec![AcceptSocket::from_listener(listener).unwrap()], client)
    }

    /// Accepted clients have Nagle's algorithm off (small writes go out at once), whether the
    /// listener passed it on or the accept set it.
    #[test]
    fn accepted_clients_send_small_writes_at_once() {
        runtime().block_on(async {
            let (listeners, _client) = listening_with_a_client();
            let (client, _, _) = accept_any(&listeners, &mut 0).await.unwrap();
            let Stream::Tcp(stream) = client.into_stream().unwrap() else {
                unreachable!("accepted from a TCP listener")
            };
            assert!(stream.nodelay().unwrap());
        });
    }

    /// Serves connections fresh (polled in place by the accept loop): echoes one byte read
    /// from the descriptor, or panics when it is `!`.
    struct TouchyFresh;

    impl Serve for TouchyFresh {
        async fn serve(&self, _stream: Stream, _ctx: ConnContext) {
            unreachable!("every connection is served fresh")
        }

        fn serves_fresh(&self, _listener: usize) -> bool {
            true
        }

        async fn serve_fresh(&self, sock: std::net::TcpStream, _ctx: ConnContext) {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut b = [0u8; 1];
            // Usually the byte is there (it is sent right after connecting), and the panic
            // comes within the accept loop's own poll; otherwise in a task.
            let raw = std::io::Read::read(&mut &sock, &mut b);
            let mut s = TcpStream::from_std(sock).unwrap();
            match raw {
                Ok(1) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
            if b[0] == b'!' {
                panic!("a bug in one connection's handling");
            }
            let _ = s.write_all(&b).await;
        }
    }

    /// A panic while a connection is polled in place ends that connection only, as in a task
    /// (tests/connection_panic.rs): the accept loop goes on and the slot and permit come back.
    #[test]
    fn a_panic_in_a_connection_served_in_place_ends_only_that_connection() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                use std::io::{Read, Write};
                let addr = crate::net::BindAddr::Tcp("127.0.0.1:0".parse().unwrap());
                let listener = Listener::bind(&addr, 16).unwrap();
                let crate::net::BindAddr::Tcp(bound) = listener.bound else {
                    unreachable!("a TCP listener is bound to a TCP address")
                };
                let slot = Scoreboard::create().unwrap().slot(0);
                let stop = CancellationToken::new();
                let acceptor = Acceptor {
                    listeners: vec![AcceptSocket::from_listener(listener).unwrap()],
                    // One slot: a panicking connection that kept its permit would block all.
                    limit: Arc::new(Semaphore::new(1)),
                    conns: TaskTracker::new(),
                    stop: stop.clone(),
                    service: Arc::new(TouchyFresh),
                    slot,
                    idle_timeout: None,
                    reclaim: Default::default(),
                    targets: Default::default(),
                    yield_permit: Default::default(),
                };
                let accept_loop = tokio::spawn(acceptor.run());
                let clients = tokio::task::spawn_blocking(move || {
                    for round in 0..3 {
                        for (byte, answer) in [(b'!', None), (b'a', Some(b'a'))] {
                            // Connect and send before the loop can accept (it may not run yet
                            // at all; then the byte is there the sooner).
                            let mut c = std::net::TcpStream::connect(bound).unwrap();
                            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            c.write_all(&[byte]).unwrap();
                            let mut buf = [0u8; 1];
                            let got = match c.read(&mut buf) {
                                Ok(1) => Some(buf[0]),
                                _ => None,
                            };
                            assert_eq!(got, answer, "round {round}, byte {byte}");
                        }
                    }
                });
                clients.await.unwrap();
                assert_eq!(slot.active_conns.load(Ordering::Relaxed), 0);
                stop.cancel();
                accept_loop.await.unwrap();
            });
    }

    /// A worker over its share with one client queued, whose listener's readiness is already
    /// known (as in a busy accept loop), and a peer with nothing.
    struct Setup {
        listeners: Vec<AcceptSocket>,
        balance: Balance,
        me: &'static Slot,
        _client: std::net::TcpStream,
    }

    async fn over_share_with_a_client_queued() -> Setup {
        let board = Scoreboard::create().unwrap();
        let (me, peer) = (board.slot(0), board.slot(1));
        peer.set_state(SlotState::Ready);
        me.active_conns.store(2 * SLACK + 2, Ordering::Relaxed);
        let (listeners, client) = listening_with_a_client();
        wait_queued(&listeners).await.unwrap();
        let balance = Balance {
            me,
            board: Some(board),
            peers: Vec::new(),
            read_at: None,
            ignored_until: None,
            stalled_since: None,
        };
        Setup {
            listeners,
            balance,
            me,
            _client: client,
        }
    }

    /// Short connections: the worker's own connections end as soon as their tasks run, which
    /// brings it under its share, so it accepts the queued client at once rather than leave it
    /// to a peer on a timer (which left both workers asleep with the queue full, issue 12).
    #[test]
    fn a_worker_over_its_share_serves_its_own_short_connections_before_deferring() {
        runtime().block_on(async {
            let mut s = over_share_with_a_client_queued().await;
            assert!(s.balance.over_share());
            // The worker's connections, ready to run and to end (one request each).
            let me = s.me;
            tokio::spawn(async move { me.active_conns.store(0, Ordering::Relaxed) });
            let started = tokio::time::Instant::now();
            accept_balanced(&s.listeners, &mut 0, &mut s.balance)
                .await
                .unwrap();
            assert_eq!(started.elapsed(), Duration::ZERO);
        });
    }

    /// The flags the kernel holds for the listener's entry in the runtime's epoll instance.
    fn registered_flags(listeners: &[AcceptSocket]) -> u32 {
        let AcceptSocket::Watched(WatchedListener(_, Some(entry))) = &listeners[0] else {
            panic!("the listener's entry in the runtime's epoll instance was not found")
        };
        epoll_entries_of(entry.fd)
            .into_iter()
            .find(|e| e.0 == entry.epoll && e.2 == entry.data)
            .expect("the entry is registered")
            .1
    }

    const EXCLUSIVE: u32 = nix::libc::EPOLLEXCLUSIVE as u32;

    /// A worker that accepts at once has the kernel wake it alone for a new client (as
    /// nginx's `EPOLLEXCLUSIVE`); one over its share leaves the wake-up shared while it defers,
    /// so the peer it defers to is woken for the client too. Read from the kernel's own view
    /// of the entry (`/proc/self/fdinfo`).
    #[test]
    fn the_wake_up_is_exclusive_only_while_the_worker_accepts_at_once() {
        runtime().block_on(async {
            let mut s = over_share_with_a_client_queued().await;
            // Registered shared, keeping the runtime's token and flags.
            let flags = registered_flags(&s.listeners);
            assert_eq!(flags & EXCLUSIVE, 0);
            assert_ne!(flags & nix::libc::EPOLLIN as u32, 0);
            let (listeners, mut next) = (&s.listeners, 0);
            let deferring = async {
                tokio::time::sleep(HEAD_START).await;
                registered_flags(listeners)
            };
            let (accepted, while_deferring) = tokio::join!(
                accept_balanced(listeners, &mut next, &mut s.balance),
                deferring
            );
            accepted.unwrap();
            assert_eq!(while_deferring & EXCLUSIVE, 0, "shared while deferring");
            // Still over its share after accepting: the next wake-up stays shared.
            assert_eq!(registered_flags(&s.listeners) & EXCLUSIVE, 0);

            // Under its share: the wake-up is exclusive while it waits for the next client.
            s.me.active_conns.store(0, Ordering::Relaxed);
            let _second = std::net::TcpStream::connect(match &s.listeners[0] {
                AcceptSocket::Watched(WatchedListener(fd, _)) => match fd.get_ref() {
                    Inherited::Tcp(l, _) => l.local_addr().unwrap(),
                    Inherited::Unix(_) => unreachable!("a TCP listener"),
                },
                _ => unreachable!("a watched listener"),
            })
            .unwrap();
            accept_balanced(&s.listeners, &mut 0, &mut s.balance)
                .await
                .unwrap();
            let flags = registered_flags(&s.listeners);
            assert_ne!(flags & EXCLUSIVE, 0);
            assert_ne!(flags & nix::libc::EPOLLIN as u32, 0);

            // At the connection cap (or backing off): shared again, and the runtime's token
            // unchanged throughout (it still hears of clients).
            wake_alone(&s.listeners, false);
            assert_eq!(registered_flags(&s.listeners) & EXCLUSIVE, 0);
        });
    }

    /// Kept-alive connections stay after their tasks ran: the worker is still over its share
    /// and leaves the queued client to its peer for a head start first.
    #[test]
    fn a_worker_over_its_share_with_kept_alive_connections_defers() {
        runtime().block_on(async {
            let mut s = over_share_with_a_client_queued().await;
            let started = tokio::time::Instant::now();
            // The peer never accepts (it is a slot only): the worker stops deferring to it.
            accept_balanced(&s.listeners, &mut 0, &mut s.balance)
                .await
                .unwrap();
            assert!(started.elapsed() >= PEERS_STALLED_AFTER);
        });
    }
}
