//! The hub: the embedded bus's process. The arbiter forks it (only for services that need a
//! bus) and supervises it like a worker: it is reaped, restarted with back-off when it dies,
//! and stopped after the last worker on shutdown.
//!
//! It boots on the child layer ([`crate::child`]), as a worker does: parent-death signal,
//! orphan check, its own current-thread runtime (tokio never runs in the arbiter), its signal
//! set before the mask is cleared, the heartbeat and the ready message.
//!
//! Inside, one task per worker connection reads frames and applies them to `Hub`, the only
//! state, under a mutex held for a few map operations and never across an `.await`. Frames for
//! a worker go through that worker's bounded queue to its writer; a worker that stops reading
//! so long that its queue fills is disconnected (it reconnects and re-registers) rather than
//! let it grow the hub's memory or slow the others.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::proto::{self, Down, Reservation, Up};
use super::{hub_address, show_address};
use crate::child::{Child, ChildBoot};
use crate::config::Config;
pub use crate::exit::HUB_BOOT_ERROR;
use crate::log::LogHandle;

/// Frames queued for one worker before it is considered stuck and disconnected.
const HUB_QUEUE: usize = 64 * 1024;

/// Bytes queued for one worker before it is considered stuck and disconnected. Frames are
/// batches of up to 64 KiB (workers merge runs of publications), so a bound in frames alone
/// would let one stopped worker make the hub hold gigabytes.
const HUB_QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// Frames written to one worker in a single batch at most.
const BATCH: usize = 256;

/// How often a restarted hub checks whether the workers it still waits for are alive. A worker
/// that dies is reaped by the arbiter, not by the hub, so nothing wakes the hub when it goes.
const RECOVERY_POLL: Duration = Duration::from_millis(100);

/// Added to `--timeout` for the recovery cap: the arbiter notices a silent worker on its next
/// pass (at most 1 s after the timeout), then the kill, the reap and one poll here.
const RECOVERY_MARGIN: Duration = Duration::from_secs(5);

/// The recovery cap when the heartbeat timeout is off: nothing then kills a worker that is
/// alive but never comes back, so the hub stops waiting for it after this long.
const RECOVERY_CAP_NO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a restarted hub waits at most for the workers it was told about (see
/// [`HubBoot::workers`]) before it grants names again. Tied to the heartbeat timeout: a worker
/// silent that long is killed by the arbiter, and a dead worker is not waited for anyway; so
/// the cap only matters with the timeout off, or for a worker that beats but cannot reach the
/// hub.
pub fn recovery_cap(timeout: Option<Duration>) -> Duration {
    timeout.map_or(RECOVERY_CAP_NO_TIMEOUT, |t| t + RECOVERY_MARGIN)
}

/// Everything the hub is handed at fork.
pub struct HubBoot {
    /// What every child gets: the arbiter's pid, the hub's scoreboard slot (beaten like a
    /// worker's, so the arbiter kills a wedged hub), the ready pipe, the timeout.
    pub child: ChildBoot,
    /// The configuration at fork time (the initial quote, the heartbeat timeout that caps
    /// recovery).
    pub config: Arc<Config>,
    /// The logger, to reopen on USR1.
    pub log: &'static LogHandle,
    /// Whether an earlier hub of this arbiter died: then workers have names to re-register.
    pub restart: bool,
    /// On a restart, the workers alive when this hub was forked: the only ones that can hold
    /// names. New reservations wait until each has said hello or is gone, so a newcomer
    /// cannot take the name of a connected member whose worker has not re-registered yet.
    /// Waiting for these pids, not for a count: during a reload more workers than `--workers`
    /// run, and the new generation's (nameless) hellos must not end the wait. Workers forked
    /// after the hub have no names and are not waited for.
    pub workers: Vec<u32>,
}

/// Runs the hub to completion and returns its exit code. Never returns into the arbiter's
/// code: the caller exits with the code.
pub fn run(boot: HubBoot) -> i32 {
    let HubBoot {
        child,
        config,
        log,
        restart,
        workers,
    } = boot;
    crate::child::run(child, move |child| {
        serve(child, config, log, restart, workers)
    })
}

async fn serve(
    mut child: Child,
    config: Arc<Config>,
    log: &'static LogHandle,
    restart: bool,
    workers: Vec<u32>,
) -> i32 {
    let arbiter = child.arbiter;

    let addr = hub_address(arbiter.as_raw() as u32);
    let listener = match UnixListener::bind(&addr) {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(cause = %err, "hub cannot listen on {}", show_address(&addr));
            return HUB_BOOT_ERROR;
        }
    };
    tracing::debug!("hub listening on {}", show_address(&addr));

    let mut values = HashMap::new();
    if let crate::config::ServiceConfig::Quote { quote, .. } = &config.service {
        values.insert(
            crate::service::quote::KEY.to_string(),
            (0, Bytes::from(quote.clone())),
        );
    }
    // A first start has nothing to recover: no worker holds a name yet.
    let awaited = restart.then(|| workers.into_iter().collect());
    let hub = Arc::new(Mutex::new(Hub::new(values, awaited)));
    if restart {
        // Ends when recovery does; nothing else to close.
        tokio::spawn(recovery(
            Arc::clone(&hub),
            arbiter,
            recovery_cap(config.timeout),
        ));
    }

    // The heartbeat runs on the hub's only thread: if anything blocks it, the beat stops and
    // the arbiter kills and restarts the hub. It also notices an arbiter that is gone.
    let orphaned = child.start_heartbeat();
    if let Err(err) = child.ready() {
        tracing::error!(cause = %err, "hub cannot tell the arbiter it is ready");
        return HUB_BOOT_ERROR;
    }
    let signals = &mut child.signals;

    let uid = rustix::process::getuid().as_raw();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Abstract sockets have no file permissions: only our own user may talk
                    // to the hub.
                    match stream.peer_cred() {
                        Ok(cred) if cred.uid() == uid => {
                            tokio::spawn(connection(Arc::clone(&hub), stream));
                        }
                        Ok(cred) => tracing::warn!(
                            uid = cred.uid(),
                            "hub refused a connection from another user"
                        ),
                        Err(err) => tracing::warn!(cause = %err, "hub cannot check a peer"),
                    }
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "hub failed to accept; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = signals.term.recv() => return 0,
            () = orphaned.cancelled() => {
                tracing::warn!("the arbiter ({arbiter}) is gone: the hub stops");
                return 0;
            }
            _ = signals.int.recv() => return 0,
            _ = signals.quit.recv() => return 0,
            _ = signals.usr1.recv() => {
                if let Err(err) = log.reopen() {
                    tracing::error!(cause = %err, "cannot reopen the log file");
                }
            }
        }
    }
}

/// Ends the recovery window once every awaited worker has said hello or is gone, or
/// `cap_after` after the start, whichever comes first. This task notices the gone ones and the
/// cap; [`Hub::handle`] counts the hellos (and this task then returns at its next poll).
async fn recovery(hub: Arc<Mutex<Hub>>, arbiter: Pid, cap_after: Duration) {
    let cap = tokio::time::sleep(cap_after);
    tokio::pin!(cap);
    let mut poll = tokio::time::interval(RECOVERY_POLL);
    loop {
        tokio::select! {
            () = &mut cap => {
                lock(&hub).end_recovery(RecoveryEnd::Cap(cap_after));
                return;
            }
            _ = poll.tick() => {
                let awaited: Vec<u32> = {
                    let h = lock(&hub);
                    if !h.recovering {
                        return;
                    }
                    h.awaited.iter().copied().collect()
                };
                // Checked without the lock held: a few small procfs reads.
                let gone: Vec<u32> = awaited
                    .into_iter()
                    .filter(|&pid| !is_worker_alive(pid, arbiter))
                    .collect();
                lock(&hub).forget_workers(&gone);
            }
        }
    }
}

/// Whether `pid` is still a live child of the arbiter. Read from `/proc/PID/stat` rather than
/// `kill(pid, 0)`: a dead worker stays a zombie until the arbiter reaps it (on its next pass),
/// and `kill` succeeds on a zombie. The parent check catches a pid reused after the reap.
/// Procfs reads never wait on a disk, so this may run on the hub's only thread.
fn is_worker_alive(pid: u32, arbiter: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false; // no such process
    };
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("X");
    let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
    !matches!(state, "Z" | "X" | "x") && ppid == Some(arbiter.as_raw())
}

fn lock(hub: &Mutex<Hub>) -> MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker connection, as the hub holds it.
struct Conn {
    /// Encoded frames for this worker's writer. The hub drops it (closing the queue) when the
    /// connection ends.
    tx: mpsc::Sender<Bytes>,
    /// Cancelled to disconnect a worker whose queue overflowed.
    kick: CancellationToken,
    /// Its pid, from its hello (for logs).
    worker: u32,
    /// Bytes in `tx` not yet taken by the writer: added by [`Hub::send`], subtracted by the
    /// writer.
    queued: Arc<AtomicUsize>,
    /// The most `queued` may reach ([`HUB_QUEUE_BYTES`]).
    limit: usize,
}

/// A granted reservation.
struct Held {
    conn: u64,
    reservation: Reservation,
}

/// The hub's whole state.
struct Hub {
    next_conn: u64,
    conns: HashMap<u64, Conn>,
    /// By key (already lowercased by the service when it wants case-insensitivity).
    names: HashMap<String, Held>,
    /// Swappable values, with a sequence number that only grows.
    values: HashMap<String, (u64, Bytes)>,
    /// In the recovery window after a restart: reserves are parked.
    recovering: bool,
    /// Reserves received during recovery: (connection, request, reservation), in order.
    parked: Vec<(u64, u64, Reservation)>,
    /// During recovery, the pids of the workers alive at fork that have neither said hello nor
    /// gone away; recovery ends when it empties (see [`HubBoot::workers`]).
    awaited: HashSet<u32>,
    /// Hellos received since this hub started (for the recovery log line).
    hellos: usize,
    /// Names re-registered by hellos during recovery (for the recovery log line).
    recovered: usize,
}

/// Why the recovery window ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecoveryEnd {
    /// Every worker alive at fork said hello or is gone.
    AllBack,
    /// The cap (this long after the start) passed with some still silent.
    Cap(Duration),
}

impl Hub {
    /// A hub with `values`; recovering when `awaited` lists the workers to wait for (on a
    /// restart), unless that list is empty.
    fn new(values: HashMap<String, (u64, Bytes)>, awaited: Option<HashSet<u32>>) -> Hub {
        let mut hub = Hub {
            next_conn: 0,
            conns: HashMap::new(),
            names: HashMap::new(),
            values,
            recovering: awaited.is_some(),
            parked: Vec::new(),
            awaited: awaited.unwrap_or_default(),
            hellos: 0,
            recovered: 0,
        };
        hub.end_recovery_if_all_back();
        hub
    }

    /// Stops waiting for `gone` (workers that died); ends recovery if nobody is left to wait
    /// for.
    fn forget_workers(&mut self, gone: &[u32]) {
        for pid in gone {
            if self.awaited.remove(pid) {
                tracing::debug!(worker = pid, "a worker the hub waited for is gone");
            }
        }
        self.end_recovery_if_all_back();
    }

    fn end_recovery_if_all_back(&mut self) {
        if self.recovering && self.awaited.is_empty() {
            self.end_recovery(RecoveryEnd::AllBack);
        }
    }

    /// Queues a frame for one worker; disconnects it if its queue is full.
    fn send(&mut self, conn: u64, frame: Bytes) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let len = frame.len();
        let over = c.queued.load(Ordering::Relaxed) + len > c.limit;
        if over || c.tx.try_send(frame).is_err() {
            if !c.kick.is_cancelled() {
                tracing::warn!(
                    worker = c.worker,
                    "a worker stopped reading the bus: disconnecting it (it will reconnect)"
                );
            }
            c.kick.cancel();
        } else {
            c.queued.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Queues a frame for every worker but `except`.
    fn broadcast(&mut self, except: Option<u64>, frame: &Bytes) {
        let ids: Vec<u64> = self
            .conns
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        for id in ids {
            self.send(id, frame.clone());
        }
    }

    fn handle(&mut self, conn: u64, msg: Up) {
        match msg {
            Up::Hello {
                worker,
                reservations,
                values,
            } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.worker = worker;
                }
                let count = reservations.len();
                for r in reservations {
                    if self.take(conn, r.clone()) {
                        self.recovered += usize::from(self.recovering);
                    } else {
                        let lost = Down::Lost {
                            key: r.key,
                            holder: r.holder,
                        };
                        self.send(conn, lost.encode());
                    }
                }
                for (key, seq, value) in values {
                    if self.values.get(&key).is_none_or(|(s, _)| *s < seq) {
                        self.values.insert(key, (seq, owned(&value)));
                    }
                }
                self.hellos += 1;
                tracing::debug!(worker, names = count, "worker joined the bus");
                // Only the listed workers count: a hello from one forked after this hub (a
                // reload's new generation) says nothing about the names held elsewhere.
                self.awaited.remove(&worker);
                self.end_recovery_if_all_back();
            }
            Up::Reserve { req, reservation } => {
                if self.recovering {
                    self.parked.push((conn, req, reservation));
                } else {
                    let ok = self.take(conn, reservation);
                    self.send(conn, Down::Reserved { req, ok }.encode());
                }
            }
            Up::Release { key, holder } => {
                if self
                    .names
                    .get(&key)
                    .is_some_and(|h| h.conn == conn && h.reservation.holder == holder)
                {
                    self.names.remove(&key);
                }
            }
            Up::Publish { topic, payload } => {
                let frame = Down::Deliver { topic, payload }.encode();
                self.broadcast(Some(conn), &frame);
            }
            Up::List { req, prefix } => {
                let values = self
                    .names
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, h)| h.reservation.value.clone())
                    .collect();
                self.send(conn, Down::Listing { req, values }.encode());
            }
            Up::Sync { req } => self.send(conn, Down::Synced { req }.encode()),
            Up::Swap { req, key, value } => {
                let (seq, old) = self.values.remove(&key).unwrap_or((0, Bytes::new()));
                let seq = seq + 1;
                self.values.insert(key.clone(), (seq, owned(&value)));
                self.send(conn, Down::Swapped { req, old }.encode());
                let changed = Down::Changed { key, seq, value }.encode();
                self.broadcast(None, &changed);
            }
        }
    }

    /// Grants `r` to `conn` if the key is free or already its holder's.
    fn take(&mut self, conn: u64, mut r: Reservation) -> bool {
        match self.names.get(&r.key) {
            Some(h) if h.conn != conn || h.reservation.holder != r.holder => false,
            _ => {
                r.value = owned(&r.value);
                if let Some((_, payload)) = &mut r.will {
                    *payload = owned(payload);
                }
                self.names.insert(
                    r.key.clone(),
                    Held {
                        conn,
                        reservation: r,
                    },
                );
                true
            }
        }
    }

    /// Answers the reserves parked during recovery, in the order they came.
    fn end_recovery(&mut self, why: RecoveryEnd) {
        if !self.recovering {
            return;
        }
        self.recovering = false;
        let how = match why {
            RecoveryEnd::AllBack => "every earlier worker is back or gone".to_string(),
            RecoveryEnd::Cap(after) => format!(
                "gave up after {}s on {} silent worker(s) (the cap)",
                after.as_secs(),
                self.awaited.len()
            ),
        };
        tracing::info!(
            "hub recovered: {} name(s) re-registered by {} worker(s); {how}",
            self.recovered,
            self.hellos
        );
        self.awaited.clear();
        for (conn, req, r) in std::mem::take(&mut self.parked) {
            let ok = self.take(conn, r);
            self.send(conn, Down::Reserved { req, ok }.encode());
        }
    }

    /// A worker went away: its names are free, and their wills (leave notices) go out.
    fn disconnect(&mut self, conn: u64) {
        self.conns.remove(&conn);
        self.parked.retain(|(c, _, _)| *c != conn);
        let gone: Vec<String> = self
            .names
            .iter()
            .filter(|(_, h)| h.conn == conn)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(h) = self.names.remove(&key)
                && let Some((topic, payload)) = h.reservation.will
            {
                let frame = Down::Deliver { topic, payload }.encode();
                self.broadcast(None, &frame);
            }
        }
    }
}

/// A copy of what the hub keeps: decoded fields are slices of the connection's 64 KiB read
/// buffer, and a name held for hours would otherwise keep that whole buffer alive.
fn owned(b: &Bytes) -> Bytes {
    Bytes::copy_from_slice(b)
}

/// Serves one worker until it disconnects, sends garbage, or is kicked.
async fn connection(hub: Arc<Mutex<Hub>>, stream: UnixStream) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(HUB_QUEUE);
    let kick = CancellationToken::new();
    let queued = Arc::new(AtomicUsize::new(0));
    let id = {
        let mut h = lock(&hub);
        h.next_conn += 1;
        let id = h.next_conn;
        h.conns.insert(
            id,
            Conn {
                tx,
                kick: kick.clone(),
                worker: 0,
                queued: Arc::clone(&queued),
                limit: HUB_QUEUE_BYTES,
            },
        );
        id
    };
    let (mut rd, mut wr) = stream.into_split();

    let reader = async {
        let mut codec = proto::codec();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(frame) = codec.decode(&mut buf)? {
                let msg = Up::decode(frame.freeze())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                lock(&hub).handle(id, msg);
            }
            if rd.read_buf(&mut buf).await? == 0 {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let writer = async {
        let mut codec = proto::codec();
        let mut buf = BytesMut::new();
        while let Some(first) = rx.recv().await {
            buf.clear();
            let mut taken = first.len();
            codec.encode(first, &mut buf)?;
            for _ in 1..BATCH {
                match rx.try_recv() {
                    Ok(f) => {
                        taken += f.len();
                        codec.encode(f, &mut buf)?;
                    }
                    Err(_) => break,
                }
            }
            queued.fetch_sub(taken, Ordering::Relaxed);
            wr.write_all(&buf).await?;
        }
        Ok::<(), std::io::Error>(())
    };

    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
        _ = kick.cancelled() => Ok(()),
    };
    let worker = lock(&hub).conns.get(&id).map_or(0, |c| c.worker);
    match result {
        // A worker that exits (a reload, TTOU, a crash the arbiter reports) closes its end
        // while the hub may still be writing to it: that is a departure, not a fault.
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            tracing::debug!(worker, cause = %err, "worker left the bus");
        }
        Err(err) => tracing::warn!(worker, cause = %err, "bus connection failed"),
        Ok(()) => tracing::debug!(worker, "worker left the bus"),
    }
    lock(&hub).disconnect(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub; restarted (recovering) when `awaited` lists the workers alive at its fork.
    fn hub(awaited: Option<&[u32]>) -> Hub {
        Hub::new(HashMap::new(), awaited.map(|p| p.iter().copied().collect()))
    }

    fn hello(worker: u32, reservations: Vec<Reservation>) -> Up {
        Up::Hello {
            worker,
            reservations,
            values: vec![],
        }
    }

    /// A worker connection with a queue of `cap` frames.
    fn connect(h: &mut Hub, cap: usize) -> (u64, mpsc::Receiver<Bytes>, CancellationToken) {
        connect_bounded(h, cap, HUB_QUEUE_BYTES)
    }

    /// A worker connection with a queue of `cap` frames and `limit` bytes.
    fn connect_bounded(
        h: &mut Hub,
        cap: usize,
        limit: usize,
    ) -> (u64, mpsc::Receiver<Bytes>, CancellationToken) {
        h.next_conn += 1;
        let id = h.next_conn;
        let (tx, rx) = mpsc::channel(cap);
        let kick = CancellationToken::new();
        h.conns.insert(
            id,
            Conn {
                tx,
                kick: kick.clone(),
                worker: 0,
                queued: Arc::default(),
                limit,
            },
        );
        (id, rx, kick)
    }

    fn frames(rx: &mut mpsc::Receiver<Bytes>) -> Vec<Down> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(Down::decode(f).unwrap());
        }
        out
    }

    fn name(key: &str, holder: u64) -> Reservation {
        Reservation {
            key: key.into(),
            holder,
            value: Bytes::copy_from_slice(key.as_bytes()),
            will: Some(("chat".into(), Bytes::from(format!("{key} left")))),
        }
    }

    fn reserve(h: &mut Hub, conn: u64, req: u64, key: &str, holder: u64) {
        h.handle(
            conn,
            Up::Reserve {
                req,
                reservation: name(key, holder),
            },
        );
    }

    #[test]
    fn names_are_exclusive_until_released_or_their_worker_leaves() {
        let mut h = hub(None);
        let (a, mut ra, _) = connect(&mut h, 16);
        let (b, mut rb, _) = connect(&mut h, 16);
        reserve(&mut h, a, 1, "x", 1);
        assert_eq!(frames(&mut ra), vec![Down::Reserved { req: 1, ok: true }]);
        // Asking again for the same holder is fine; another holder is refused.
        reserve(&mut h, a, 2, "x", 1);
        assert_eq!(frames(&mut ra), vec![Down::Reserved { req: 2, ok: true }]);
        reserve(&mut h, b, 1, "x", 9);
        assert_eq!(frames(&mut rb), vec![Down::Reserved { req: 1, ok: false }]);
        // Only the holder releases.
        h.handle(
            b,
            Up::Release {
                key: "x".into(),
                holder: 1,
            },
        );
        reserve(&mut h, b, 2, "x", 9);
        assert_eq!(frames(&mut rb), vec![Down::Reserved { req: 2, ok: false }]);
        h.handle(
            a,
            Up::List {
                req: 3,
                prefix: String::new(),
            },
        );
        assert_eq!(
            frames(&mut ra),
            vec![Down::Listing {
                req: 3,
                values: vec![Bytes::from_static(b"x")]
            }]
        );
        // The holder's worker vanishes: the name is free and its will goes out.
        h.disconnect(a);
        assert_eq!(
            frames(&mut rb),
            vec![Down::Deliver {
                topic: "chat".into(),
                payload: Bytes::from_static(b"x left")
            }]
        );
        reserve(&mut h, b, 3, "x", 9);
        assert_eq!(frames(&mut rb), vec![Down::Reserved { req: 3, ok: true }]);
        h.handle(
            b,
            Up::Release {
                key: "x".into(),
                holder: 9,
            },
        );
        assert!(h.names.is_empty());
    }

    #[test]
    fn publications_reach_every_other_worker_in_order() {
        let mut h = hub(None);
        let (a, mut ra, _) = connect(&mut h, 16);
        let (_b, mut rb, _) = connect(&mut h, 16);
        let (_c, mut rc, _) = connect(&mut h, 16);
        for i in 0..3u8 {
            h.handle(
                a,
                Up::Publish {
                    topic: "chat".into(),
                    payload: Bytes::from(vec![i]),
                },
            );
        }
        h.handle(a, Up::Sync { req: 7 });
        let want: Vec<Down> = (0..3u8)
            .map(|i| Down::Deliver {
                topic: "chat".into(),
                payload: Bytes::from(vec![i]),
            })
            .collect();
        assert_eq!(frames(&mut rb), want);
        assert_eq!(frames(&mut rc), want);
        assert_eq!(frames(&mut ra), vec![Down::Synced { req: 7 }]);
    }

    #[test]
    fn a_restarted_hub_waits_for_workers_to_re_register_their_names() {
        let mut h = hub(Some(&[1, 2]));
        let (a, mut ra, _) = connect(&mut h, 16);
        let (b, mut rb, _) = connect(&mut h, 16);
        // b's new member asks first: parked, not answered, while a has not said hello.
        reserve(&mut h, b, 1, "x", 5);
        assert!(frames(&mut rb).is_empty());
        let hello = |worker, reservations| Up::Hello {
            worker,
            reservations,
            values: vec![("quote".into(), 4, Bytes::from_static(b"q4"))],
        };
        h.handle(a, hello(1, vec![name("x", 1)]));
        assert!(h.recovering, "one of two workers is back");
        // b re-registers a name a already holds: b is told it lost it. Both are back: the
        // parked reserve is answered, and refused.
        h.handle(b, hello(2, vec![name("x", 2)]));
        assert!(!h.recovering);
        assert_eq!(h.recovered, 1);
        assert_eq!(
            frames(&mut rb),
            vec![
                Down::Lost {
                    key: "x".into(),
                    holder: 2
                },
                Down::Reserved { req: 1, ok: false }
            ]
        );
        assert!(frames(&mut ra).is_empty());
        // The newest value any worker saw is back, and the next swap continues from it.
        h.handle(
            a,
            Up::Swap {
                req: 2,
                key: "quote".into(),
                value: Bytes::from_static(b"q5"),
            },
        );
        assert_eq!(
            frames(&mut ra),
            vec![
                Down::Swapped {
                    req: 2,
                    old: Bytes::from_static(b"q4")
                },
                Down::Changed {
                    key: "quote".into(),
                    seq: 5,
                    value: Bytes::from_static(b"q5")
                }
            ]
        );
        assert_eq!(
            frames(&mut rb),
            vec![Down::Changed {
                key: "quote".into(),
                seq: 5,
                value: Bytes::from_static(b"q5")
            }]
        );
        // An older value from a late worker does not win.
        let (c, _rc, _) = connect(&mut h, 16);
        h.handle(
            c,
            Up::Hello {
                worker: 3,
                reservations: vec![],
                values: vec![("quote".into(), 3, Bytes::new())],
            },
        );
        assert_eq!(h.values["quote"], (5, Bytes::from_static(b"q5")));
    }

    #[test]
    fn recovery_waits_for_each_listed_worker_not_for_a_count() {
        // A reload was in flight: old workers 11 and 12, new workers 21 and 22 (forked before
        // the hub, so listed too), and 31, forked after it.
        let mut h = hub(Some(&[11, 12, 21, 22]));
        let (old1, mut r11, _) = connect(&mut h, 16);
        let (new1, mut r21, _) = connect(&mut h, 16);
        let (new2, _r22, _) = connect(&mut h, 16);
        let (late, _r31, _) = connect(&mut h, 16);
        h.handle(new1, hello(21, vec![]));
        h.handle(new2, hello(22, vec![]));
        h.handle(late, hello(31, vec![]));
        h.handle(late, hello(31, vec![])); // a reconnect says hello again
        assert!(
            h.recovering,
            "more hellos than before, but 11 and 12 hold names"
        );
        reserve(&mut h, new1, 1, "x", 5);
        reserve(&mut h, new1, 2, "y", 6);
        h.handle(old1, hello(11, vec![name("x", 1)]));
        assert!(h.recovering, "12 has not said hello");
        assert!(frames(&mut r21).is_empty());
        // The last listed worker comes back: the parked reserves are answered in order.
        let (old2, mut r12, _) = connect(&mut h, 16);
        h.handle(old2, hello(12, vec![name("y", 2)]));
        assert!(!h.recovering);
        assert_eq!(
            frames(&mut r21),
            vec![
                Down::Reserved { req: 1, ok: false },
                Down::Reserved { req: 2, ok: false }
            ]
        );
        assert!(frames(&mut r11).is_empty() && frames(&mut r12).is_empty());
        assert_eq!(h.recovered, 2);
        // After recovery, reserves are answered at once.
        reserve(&mut h, new1, 3, "z", 7);
        assert_eq!(frames(&mut r21), vec![Down::Reserved { req: 3, ok: true }]);
    }

    #[test]
    fn a_listed_worker_that_is_gone_is_not_waited_for() {
        let mut h = hub(Some(&[11, 12]));
        let (a, _ra, _) = connect(&mut h, 16);
        let (n, mut rn, _) = connect(&mut h, 16);
        h.handle(a, hello(11, vec![name("x", 1)]));
        reserve(&mut h, n, 1, "w", 5);
        h.forget_workers(&[99]); // not listed: changes nothing
        assert!(h.recovering);
        h.forget_workers(&[12]);
        assert!(!h.recovering);
        assert_eq!(frames(&mut rn), vec![Down::Reserved { req: 1, ok: true }]);
        // A first start, or a restart with no worker alive, has no window at all.
        assert!(!hub(None).recovering);
        assert!(!hub(Some(&[])).recovering);
    }

    /// Two children of this process: one that lives (30 s at most, if a test fails before
    /// killing it) and one that exits at once.
    fn live_and_exiting_children() -> (std::process::Child, std::process::Child) {
        let live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let exiting = std::process::Command::new("true").spawn().unwrap();
        (live, exiting)
    }

    #[test]
    fn only_a_live_child_of_the_arbiter_is_alive() {
        let arbiter = Pid::this();
        let (mut live, mut dead) = live_and_exiting_children();
        let zombie = dead.id();
        // Exited but not reaped: a zombie, which `kill(pid, 0)` would call alive.
        assert!(eventually_true(|| {
            std::fs::read_to_string(format!("/proc/{zombie}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        }));
        assert!(is_worker_alive(live.id(), arbiter));
        assert!(
            !is_worker_alive(live.id(), Pid::from_raw(1)),
            "not the arbiter's child"
        );
        assert!(!is_worker_alive(zombie, arbiter));
        dead.wait().unwrap();
        assert!(!is_worker_alive(zombie, arbiter), "reaped");
        live.kill().unwrap();
        live.wait().unwrap();
    }

    fn eventually_true(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The recovery task: a dead listed worker ends the wait at the next poll; a live silent
    /// one is waited for until the cap.
    #[tokio::test]
    async fn recovery_ends_when_listed_workers_are_gone_or_at_the_cap() {
        let arbiter = Pid::this();
        let (mut live, mut dead) = live_and_exiting_children();
        let gone = dead.id();
        dead.wait().unwrap();

        // Only the dead one listed: recovery ends at the first poll, long before the cap.
        let h = Arc::new(Mutex::new(hub(Some(&[gone]))));
        let started = std::time::Instant::now();
        recovery(Arc::clone(&h), arbiter, Duration::from_secs(30)).await;
        assert!(!lock(&h).recovering);
        assert!(started.elapsed() < Duration::from_secs(5));

        // A live one that never says hello: the cap ends it, and the parked reserve is
        // answered.
        let h = Arc::new(Mutex::new(hub(Some(&[gone, live.id()]))));
        let (n, mut rn, _) = connect(&mut lock(&h), 16);
        reserve(&mut lock(&h), n, 1, "x", 5);
        let cap = Duration::from_millis(300);
        let started = std::time::Instant::now();
        recovery(Arc::clone(&h), arbiter, cap).await;
        assert!(started.elapsed() >= cap);
        assert!(!lock(&h).recovering);
        assert!(lock(&h).awaited.is_empty());
        assert_eq!(frames(&mut rn), vec![Down::Reserved { req: 1, ok: true }]);
        live.kill().unwrap();
        live.wait().unwrap();
    }

    #[test]
    fn the_recovery_cap_follows_the_heartbeat_timeout() {
        assert_eq!(recovery_cap(None), RECOVERY_CAP_NO_TIMEOUT);
        assert_eq!(
            recovery_cap(Some(Duration::from_secs(30))),
            Duration::from_secs(30) + RECOVERY_MARGIN
        );
    }

    #[test]
    fn a_worker_that_stops_reading_is_disconnected_not_waited_for() {
        let mut h = hub(None);
        let (a, _ra, _) = connect(&mut h, 16);
        let (_b, _rb, kicked) = connect(&mut h, 2);
        for _ in 0..2 {
            h.handle(
                a,
                Up::Publish {
                    topic: "chat".into(),
                    payload: Bytes::new(),
                },
            );
        }
        assert!(!kicked.is_cancelled());
        h.handle(
            a,
            Up::Publish {
                topic: "chat".into(),
                payload: Bytes::new(),
            },
        );
        assert!(kicked.is_cancelled());
    }

    #[test]
    fn a_worker_is_disconnected_by_the_bytes_waiting_for_it_not_only_the_frames() {
        let mut h = hub(None);
        let (a, _ra, _) = connect(&mut h, 16);
        // Room for many frames, but 100 KiB at most.
        let (_b, _rb, kicked) = connect_bounded(&mut h, 1024, 100 * 1024);
        let batch = |h: &mut Hub| {
            h.handle(
                a,
                Up::Publish {
                    topic: "chat".into(),
                    payload: Bytes::from(vec![b'x'; 40 * 1024]),
                },
            )
        };
        batch(&mut h);
        batch(&mut h);
        assert!(!kicked.is_cancelled());
        batch(&mut h);
        assert!(kicked.is_cancelled());
    }
}
