//! The hub's state machine: which worker connection holds which name, the shared values,
//! fan-out of publications, and the recovery window after a restart (reserves parked until
//! every earlier worker is back). Pure: no I/O here; frames for a worker are queued on its
//! connection ([`Conn::tx`]) and written by [`super::conn`]. Knows nothing of services: keys,
//! topics and values are opaque.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::names::Names;
use crate::bus::proto::{Down, Reservation, Up};

/// One worker connection, as the hub holds it.
pub(super) struct Conn {
    /// Encoded frames for this worker's writer. The hub drops it (closing the queue) when the
    /// connection ends.
    pub(super) tx: mpsc::Sender<Bytes>,
    /// Cancelled to disconnect a worker whose queue overflowed.
    pub(super) kick: CancellationToken,
    /// Its pid, from its hello (for logs).
    pub(super) worker: u32,
    /// Bytes in `tx` not yet taken by the writer: added by [`Hub::send`], subtracted by the
    /// writer.
    pub(super) queued: Arc<AtomicUsize>,
    /// The most `queued` may reach ([`super::conn::HUB_QUEUE_BYTES`]).
    pub(super) limit: usize,
}

/// The hub's whole state.
pub(super) struct Hub {
    pub(super) next_conn: u64,
    pub(super) conns: HashMap<u64, Conn>,
    /// Every granted name, by key, marked with the connection of the worker holding it: the
    /// one table of the hub that grows with the members (it is what keeps names unique across
    /// workers), so its entries are compact ([`Names`]: about 100 bytes a chat member).
    names: Names<u64>,
    /// Swappable values, with a sequence number that only grows.
    values: HashMap<String, (u64, Bytes)>,
    /// In the recovery window after a restart: reserves are parked.
    pub(super) recovering: bool,
    /// Reserves received during recovery: (connection, request, reservation), in order.
    parked: Vec<(u64, u64, Reservation)>,
    /// During recovery, the pids of the workers alive at fork that have neither said hello nor
    /// gone away; recovery ends when it empties (see [`HubBoot::workers`]).
    pub(super) awaited: HashSet<u32>,
    /// Hellos received since this hub started (for the recovery log line).
    hellos: usize,
    /// Names re-registered by hellos during recovery (for the recovery log line).
    recovered: usize,
    /// Bytes published on each topic by each connection since it connected: where a
    /// [`Up::HandOver`] cuts that worker's stream ([`Down::Cut`]).
    published: HashMap<u64, HashMap<String, u64>>,
}

/// Why the recovery window ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecoveryEnd {
    /// Every worker alive at fork said hello or is gone.
    AllBack,
    /// The cap (this long after the start) passed with some still silent.
    Cap(Duration),
}

impl Hub {
    /// An empty hub (values come from the workers: seeds, swaps, and their hellos after a
    /// restart); recovering when `awaited` lists the workers to wait for (on a restart),
    /// unless that list is empty.
    pub(super) fn new(awaited: Option<HashSet<u32>>) -> Hub {
        let mut hub = Hub {
            next_conn: 0,
            conns: HashMap::new(),
            names: Names::default(),
            values: HashMap::new(),
            recovering: awaited.is_some(),
            parked: Vec::new(),
            awaited: awaited.unwrap_or_default(),
            hellos: 0,
            recovered: 0,
            published: HashMap::new(),
        };
        hub.end_recovery_if_all_back();
        hub
    }

    /// Stops waiting for `gone` (workers that died); ends recovery if nobody is left to wait
    /// for.
    pub(super) fn forget_workers(&mut self, gone: &[u32]) {
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

    pub(super) fn handle(&mut self, conn: u64, msg: Up) {
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
                        self.values.insert(key, (seq, value));
                    }
                }
                self.hellos += 1;
                tracing::debug!(
                    worker,
                    names = count,
                    held = self.names.len(),
                    "worker joined the bus"
                );
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
                self.names.remove_held(&key, holder, Some(conn));
            }
            Up::Publish { topic, payload } => {
                let counts = self.published.entry(conn).or_default();
                let len = payload.len() as u64;
                match counts.get_mut(&topic) {
                    Some(n) => *n += len,
                    None => {
                        counts.insert(topic.clone(), len);
                    }
                }
                let frame = Down::Deliver { topic, payload }.encode();
                self.broadcast(Some(conn), &frame);
            }
            Up::List { req, prefix } => {
                let values = self.names.values(&prefix);
                self.send(conn, Down::Listing { req, values }.encode());
            }
            Up::Sync { req } => self.send(conn, Down::Synced { req }.encode()),
            Up::Swap { req, key, value } => {
                let (seq, old) = self.values.remove(&key).unwrap_or((0, Bytes::new()));
                let seq = seq + 1;
                self.values.insert(key.clone(), (seq, value.clone()));
                self.send(conn, Down::Swapped { req, old }.encode());
                let changed = Down::Changed { key, seq, value }.encode();
                self.broadcast(None, &changed);
            }
            Up::SetIfAbsent { key, value } => {
                // Sequence 0: any value a swap made (1 and up) is newer, here and in a
                // restarted hub that gets values back from the workers' hellos.
                self.values.entry(key).or_insert_with(|| (0, value));
            }
            Up::HandOver {
                req,
                topic,
                from_worker,
                from_holder,
                reservation,
            } => {
                let ok = self.hand_over(conn, topic, from_worker, from_holder, reservation);
                self.send(conn, Down::HandedOver { req, ok }.encode());
            }
        }
    }

    /// Moves a name from the worker that held it to `conn` and sends the old holder its cut
    /// (see [`Up::HandOver`]). False, changing nothing, when the old worker does not hold it.
    fn hand_over(
        &mut self,
        conn: u64,
        topic: String,
        from_worker: u32,
        from_holder: u64,
        reservation: Reservation,
    ) -> bool {
        if self.recovering {
            return false;
        }
        let Some(old) = self
            .names
            .get(&reservation.key)
            .filter(|&(holder, _)| holder == from_holder)
            .map(|(_, conn)| conn)
            .filter(|c| self.conns.get(c).is_some_and(|c| c.worker == from_worker))
        else {
            return false;
        };
        let published = self
            .published
            .get(&old)
            .and_then(|m| m.get(&topic))
            .copied()
            .unwrap_or(0);
        self.names.insert(&reservation, conn);
        let key = reservation.key;
        let cut = Down::Cut {
            key,
            holder: from_holder,
            topic,
            published,
        };
        self.send(old, cut.encode());
        true
    }

    /// Grants `r` to `conn` if the key is free or already its holder's.
    fn take(&mut self, conn: u64, r: Reservation) -> bool {
        match self.names.get(&r.key) {
            Some((holder, owner)) if owner != conn || holder != r.holder => false,
            _ => {
                self.names.insert(&r, conn);
                true
            }
        }
    }

    /// Answers the reserves parked during recovery, in the order they came.
    pub(super) fn end_recovery(&mut self, why: RecoveryEnd) {
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
    pub(super) fn disconnect(&mut self, conn: u64) {
        self.conns.remove(&conn);
        self.published.remove(&conn);
        self.parked.retain(|(c, _, _)| *c != conn);
        for r in self.names.take_owned(|owner| owner == conn) {
            if let Some((topic, payload)) = r.will {
                let frame = Down::Deliver { topic, payload }.encode();
                self.broadcast(None, &frame);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bus::hub::conn::HUB_QUEUE_BYTES;

    /// A hub; restarted (recovering) when `awaited` lists the workers alive at its fork.
    pub(crate) fn hub(awaited: Option<&[u32]>) -> Hub {
        Hub::new(awaited.map(|p| p.iter().copied().collect()))
    }

    fn hello(worker: u32, reservations: Vec<Reservation>) -> Up {
        Up::Hello {
            worker,
            reservations,
            values: vec![],
        }
    }

    /// A worker connection with a queue of `cap` frames.
    pub(crate) fn connect(
        h: &mut Hub,
        cap: usize,
    ) -> (u64, mpsc::Receiver<Bytes>, CancellationToken) {
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

    pub(crate) fn frames(rx: &mut mpsc::Receiver<Bytes>) -> Vec<Down> {
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

    pub(crate) fn reserve(h: &mut Hub, conn: u64, req: u64, key: &str, holder: u64) {
        h.handle(
            conn,
            Up::Reserve {
                req,
                reservation: name(key, holder),
            },
        );
    }

    #[test]
    fn a_hand_over_moves_the_name_in_one_step_and_cuts_the_old_worker_s_stream() {
        let mut h = hub(None);
        let (a, mut ra, _) = connect(&mut h, 16);
        let (b, mut rb, _) = connect(&mut h, 16);
        h.handle(a, hello(11, vec![]));
        h.handle(b, hello(22, vec![]));
        reserve(&mut h, a, 1, "x", 1);
        let publish = |h: &mut Hub, conn, text: &'static [u8]| {
            h.handle(
                conn,
                Up::Publish {
                    topic: "chat".into(),
                    payload: Bytes::from_static(text),
                },
            )
        };
        publish(&mut h, a, b"<x> one\r\n");
        publish(&mut h, a, b"<y> two\r\n");
        frames(&mut ra);
        frames(&mut rb);
        let hand_over = |from_holder, req| Up::HandOver {
            req,
            topic: "chat".into(),
            from_worker: 11,
            from_holder,
            reservation: name("x", 7),
        };
        // Not the holder: nothing moves.
        h.handle(b, hand_over(2, 1));
        assert_eq!(
            frames(&mut rb),
            vec![Down::HandedOver { req: 1, ok: false }]
        );
        assert!(frames(&mut ra).is_empty());
        h.handle(b, hand_over(1, 2));
        assert_eq!(frames(&mut rb), vec![Down::HandedOver { req: 2, ok: true }]);
        assert_eq!(
            frames(&mut ra),
            vec![Down::Cut {
                key: "x".into(),
                holder: 1,
                topic: "chat".into(),
                published: 18,
            }]
        );
        // The old holder can no longer free it; the new one holds it, will included.
        h.handle(
            a,
            Up::Release {
                key: "x".into(),
                holder: 1,
            },
        );
        reserve(&mut h, a, 3, "x", 1);
        assert_eq!(frames(&mut ra), vec![Down::Reserved { req: 3, ok: false }]);
        h.disconnect(a);
        assert!(frames(&mut rb).is_empty(), "no will for a name that moved");
        h.disconnect(b);
        assert!(h.names.len() == 0);
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
        assert!(h.names.len() == 0);
    }

    #[test]
    fn a_seed_sets_a_value_only_if_it_has_none() {
        let mut h = hub(None);
        let (a, mut ra, _) = connect(&mut h, 16);
        let seed = |v: &'static [u8]| Up::SetIfAbsent {
            key: "quote".into(),
            value: Bytes::from_static(v),
        };
        h.handle(a, seed(b"first"));
        h.handle(a, seed(b"second"));
        let swap = |req, v: &'static [u8]| Up::Swap {
            req,
            key: "quote".into(),
            value: Bytes::from_static(v),
        };
        h.handle(a, swap(1, b"mine"));
        // A worker that starts later seeds again: the swapped value stays.
        h.handle(a, seed(b"third"));
        h.handle(a, swap(2, b"again"));
        let swapped: Vec<Down> = frames(&mut ra)
            .into_iter()
            .filter(|d| matches!(d, Down::Swapped { .. }))
            .collect();
        assert_eq!(
            swapped,
            vec![
                Down::Swapped {
                    req: 1,
                    old: Bytes::from_static(b"first")
                },
                Down::Swapped {
                    req: 2,
                    old: Bytes::from_static(b"mine")
                }
            ]
        );
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
