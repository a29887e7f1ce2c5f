//! The hub: the embedded bus's process. The arbiter forks it (only for services that need a
//! bus) and supervises it like a worker: it is reaped, restarted with back-off when it dies,
//! and stopped after the last worker on shutdown.
//!
//! It boots as a worker does, and for the same reasons: the arbiter blocked its signals across
//! the fork and the child drops the arbiter's handlers first; then the hub sets its
//! parent-death signal, checks the arbiter is still its parent, builds its own current-thread
//! runtime (tokio never runs in the arbiter), installs its handlers and only then unblocks.
//!
//! Inside, one task per worker connection reads frames and applies them to `Hub`, the only
//! state, under a mutex held for a few map operations and never across an `.await`. Frames for
//! a worker go through that worker's bounded queue to its writer; a worker that stops reading
//! so long that its queue fills is disconnected (it reconnects and re-registers) rather than
//! let it grow the hub's memory or slow the others.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::proto::{self, Down, Reservation, Up};
use super::{hub_address, show_address};
use crate::config::Config;
use crate::log::LogHandle;
use crate::scoreboard::{Slot, SlotState};

/// Exit code of a hub that could not start (its socket is taken, no runtime). The arbiter
/// restarts it with back-off, as it does for any hub exit it did not ask for.
pub const HUB_BOOT_ERROR: i32 = 3;

/// Frames queued for one worker before it is considered stuck and disconnected.
const HUB_QUEUE: usize = 64 * 1024;

/// Frames written to one worker in a single batch at most.
const BATCH: usize = 256;

/// After a restart, how long new reservations wait for the workers to re-register the names
/// their members hold (it ends sooner once every expected worker has said hello). Without it,
/// a new member could take the name of a connected member whose worker had not yet
/// reconnected.
pub const RECOVERY_WINDOW: Duration = Duration::from_secs(3);

/// Everything the hub is handed at fork.
pub struct HubBoot {
    /// The arbiter; if `getppid()` stops being this, the hub is an orphan and stops.
    pub arbiter: Pid,
    /// The configuration at fork time (the initial quote, the expected worker count).
    pub config: Arc<Config>,
    /// Write end of the arbiter's notification pipe: the hub writes the same 8-byte "ready"
    /// message a worker does once it listens. Closed after that write.
    pub ready_tx: OwnedFd,
    /// The logger, to reopen on USR1.
    pub log: &'static LogHandle,
    /// Whether an earlier hub of this arbiter died: then workers have names to re-register.
    pub restart: bool,
    /// The hub's scoreboard slot: beaten like a worker's, so the arbiter kills a wedged hub.
    pub slot: &'static Slot,
}

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
        config,
        ready_tx,
        log,
        restart,
        slot,
    } = boot;
    let (mut term, mut int, mut quit, mut usr1, _ignored) = match install_signals() {
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

    let mut values = HashMap::new();
    if let crate::config::ServiceConfig::Quote { quote, .. } = &config.service {
        values.insert(
            crate::service::quote::KEY.to_string(),
            (0, Bytes::from(quote.clone())),
        );
    }
    let hub = Arc::new(Mutex::new(Hub {
        next_conn: 0,
        conns: HashMap::new(),
        names: HashMap::new(),
        values,
        recovering: restart,
        parked: Vec::new(),
        hellos: 0,
        expected: config.workers,
    }));
    if restart {
        let hub = Arc::clone(&hub);
        // Ends the recovery window even if some worker never comes back.
        tokio::spawn(async move {
            tokio::time::sleep(RECOVERY_WINDOW).await;
            lock(&hub).end_recovery();
        });
    }

    // The heartbeat runs on the hub's only thread: if anything blocks it, the beat stops and
    // the arbiter kills and restarts the hub. It also notices an arbiter that is gone.
    let orphaned = CancellationToken::new();
    tokio::spawn(crate::worker::heartbeat(
        slot,
        crate::worker::beat_interval(&config),
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
            _ = term.recv() => return 0,
            () = orphaned.cancelled() => {
                tracing::warn!("the arbiter ({arbiter}) is gone: the hub stops");
                return 0;
            }
            _ = int.recv() => return 0,
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

/// TERM, INT, QUIT and USR1, plus the arbiter's other signals registered only so they are
/// ignored (TTIN/TTOU would otherwise stop the process by their default action).
fn install_signals() -> std::io::Result<(Sig, Sig, Sig, Sig, Vec<Sig>)> {
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
    Ok((
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
        signal(SignalKind::quit())?,
        signal(SignalKind::user_defined1())?,
        ignored,
    ))
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
    /// Hellos received since this hub started.
    hellos: usize,
    /// Workers the configuration asks for: recovery ends once this many said hello.
    expected: usize,
}

impl Hub {
    /// Queues a frame for one worker; disconnects it if its queue is full.
    fn send(&mut self, conn: u64, frame: Bytes) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(frame) {
            tracing::warn!(
                worker = c.worker,
                "a worker stopped reading the bus: disconnecting it (it will reconnect)"
            );
            c.kick.cancel();
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
                    if !self.take(conn, r.clone()) {
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
                if self.recovering && self.hellos >= self.expected {
                    self.end_recovery();
                }
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
    fn end_recovery(&mut self) {
        if !self.recovering {
            return;
        }
        self.recovering = false;
        tracing::info!(
            "hub recovered: {} name(s) re-registered by {} worker(s)",
            self.names.len(),
            self.hellos
        );
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
            codec.encode(first, &mut buf)?;
            for _ in 1..BATCH {
                match rx.try_recv() {
                    Ok(f) => codec.encode(f, &mut buf)?,
                    Err(_) => break,
                }
            }
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
    if let Err(err) = result {
        tracing::warn!(worker, cause = %err, "bus connection failed");
    } else {
        tracing::debug!(worker, "worker left the bus");
    }
    lock(&hub).disconnect(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(recovering: bool, expected: usize) -> Hub {
        Hub {
            next_conn: 0,
            conns: HashMap::new(),
            names: HashMap::new(),
            values: HashMap::new(),
            recovering,
            parked: Vec::new(),
            hellos: 0,
            expected,
        }
    }

    /// A worker connection with a queue of `cap` frames.
    fn connect(h: &mut Hub, cap: usize) -> (u64, mpsc::Receiver<Bytes>, CancellationToken) {
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
        let mut h = hub(false, 2);
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
        let mut h = hub(false, 3);
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
        let mut h = hub(true, 2);
        let (a, mut ra, _) = connect(&mut h, 16);
        let (b, mut rb, _) = connect(&mut h, 16);
        // b's new member asks first: parked, not answered, while a has not said hello.
        reserve(&mut h, b, 1, "x", 5);
        assert!(frames(&mut rb).is_empty());
        let hello = |reservations| Up::Hello {
            worker: 1,
            reservations,
            values: vec![("quote".into(), 4, Bytes::from_static(b"q4"))],
        };
        h.handle(a, hello(vec![name("x", 1)]));
        assert!(h.recovering, "one of two workers is back");
        // b re-registers a name a already holds: b is told it lost it. Both are back: the
        // parked reserve is answered, and refused.
        h.handle(b, hello(vec![name("x", 2)]));
        assert!(!h.recovering);
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
    fn a_worker_that_stops_reading_is_disconnected_not_waited_for() {
        let mut h = hub(false, 2);
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
}
