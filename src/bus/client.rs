//! The worker's end of the embedded bus: one connection to the hub, kept up by a background
//! task that reconnects (with back-off) whenever the hub goes away, and re-registers this
//! worker's names and known values in its first frame.
//!
//! Services call [`EmbeddedBus`] from their connection tasks; everything goes through one
//! ordered queue to the connection task, which is what keeps each sender's messages in order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::names::Names;
use super::proto::{Down, FrameReader, FrameWriter, Reservation, Up};
use super::{BusError, CutHandler, Handler, LostHandler, REQUEST_TIMEOUT, show_address};
use crate::sync::lock;

/// Frames queued for the hub. Bounded so a hub that is away for long applies back-pressure
/// to publishers instead of growing the worker's memory; large enough to ride out a restart
/// under load.
const UP_QUEUE: usize = 16 * 1024;

/// Frames written to the socket in one batch at most (one `write` for many small frames).
const BATCH: usize = 256;

/// The largest payload [`coalesce`] makes out of several publications.
const COALESCE_BYTES: usize = 64 * 1024;

/// Reconnect back-off: from the first value, doubling, to the second.
/// The cap is low because an attempt costs one refused `connect` on an abstract socket, and a
/// restarted hub waits for every worker to come back before it grants new names.
const RECONNECT: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(250));

/// A request waiting for its answer.
struct Pending {
    /// Where the answer goes. The waiter may have given up (timed out): then a `Reserved`
    /// answer is released again instead of leaking the name.
    reply: oneshot::Sender<Down>,
    /// For a reserve: what to re-register on reconnect once it is granted.
    reservation: Option<Reservation>,
    /// Written to a connection already: if that connection dies, the answer never comes.
    sent: bool,
    /// For a hand-over: run on the receive task the moment the answer is read, before any
    /// later delivery, with whether the name moved (the cut must be exact; the waiter runs
    /// later).
    on_answer: Option<Box<dyn FnOnce(bool) + Send>>,
}

/// What the connection task and the services share. Behind a `std::sync::Mutex`: it is held
/// for a few map operations, never across an `.await` (mini-redis `db.rs` makes the same
/// choice), and the worker's runtime has one thread anyway.
#[derive(Default)]
struct State {
    next_req: u64,
    pending: HashMap<u64, Pending>,
    /// Names this worker's members hold, re-sent in every `Hello`. One entry per member, so
    /// compact ([`Names`]: about 100 bytes a chat member, one allocation).
    reservations: Names<()>,
    /// The newest value and sequence number seen for each key, re-sent in every `Hello`.
    values: HashMap<String, (u64, Bytes)>,
    subscribers: HashMap<String, Handler>,
    lost: Option<LostHandler>,
    cut: Option<CutHandler>,
    /// Bytes of publications per topic taken off the queue by every session so far: the hub
    /// counts a connection's publications from its start, this turns its count into one
    /// from the worker's start ([`Down::Cut`]).
    taken: HashMap<String, u64>,
    /// `taken` when the current session began.
    session_base: HashMap<String, u64>,
}

/// Buckets [`State::pending`] keeps once no request waits. A burst (thousands of members
/// joining at once) grows the table to hundreds of requests of some 160 bytes each; an idle
/// worker keeps only this much of it (issue 13).
const PENDING_KEPT: usize = 64;

impl State {
    /// Takes out the request `req`, if it waits; the table gives back the memory of a past
    /// burst once it is empty ([`PENDING_KEPT`]).
    fn take_pending(&mut self, req: u64) -> Option<Pending> {
        let p = self.pending.remove(&req);
        if self.pending.is_empty() && self.pending.capacity() > PENDING_KEPT {
            self.pending.shrink_to(PENDING_KEPT);
        }
        p
    }
}

struct Shared {
    /// Into the connection task, which owns the receiver for the worker's whole life (across
    /// reconnects, so what is queued survives a hub restart). Never closed: the worker exits
    /// with it.
    up: mpsc::Sender<Up>,
    state: Mutex<State>,
}

/// A worker's connection to the hub. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBus {
    shared: Arc<Shared>,
}

impl EmbeddedBus {
    /// Starts the connection task (inside the worker's runtime) and returns at once: requests
    /// made before the hub is reachable wait in the queue.
    pub fn start(addr: PathBuf) -> EmbeddedBus {
        let (up, up_rx) = mpsc::channel(UP_QUEUE);
        let shared = Arc::new(Shared {
            up,
            state: Mutex::new(State::default()),
        });
        // Runs until the worker exits; it holds no resource that needs an orderly close.
        tokio::spawn(connection_task(addr, Arc::clone(&shared), up_rx));
        EmbeddedBus { shared }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// See [`super::Bus::publish`].
    pub async fn publish(&self, topic: &str, payload: Bytes) {
        let msg = Up::Publish {
            topic: topic.to_string(),
            payload,
        };
        // `send` fails only if the connection task is gone, i.e. never while the worker runs.
        let _ = self.shared.up.send(msg).await;
    }

    /// See [`super::Bus::subscribe`].
    pub fn subscribe(&self, topic: &str, handler: Handler) {
        self.state().subscribers.insert(topic.to_string(), handler);
    }

    /// See [`super::Bus::on_lost`].
    pub fn on_lost(&self, handler: LostHandler) {
        self.state().lost = Some(handler);
    }

    /// See [`super::Bus::on_cut`].
    pub fn on_cut(&self, handler: CutHandler) {
        self.state().cut = Some(handler);
    }

    /// Queues a request and waits for its answer, at most [`REQUEST_TIMEOUT`].
    async fn request(
        &self,
        make: impl FnOnce(u64) -> Up,
        reservation: Option<Reservation>,
    ) -> Result<Down, BusError> {
        self.request_with(make, reservation, None).await
    }

    /// [`Self::request`], with a callback run on the receive task as the answer is read.
    async fn request_with(
        &self,
        make: impl FnOnce(u64) -> Up,
        reservation: Option<Reservation>,
        on_answer: Option<Box<dyn FnOnce(bool) + Send>>,
    ) -> Result<Down, BusError> {
        let (tx, rx) = oneshot::channel();
        let msg = {
            let mut st = self.state();
            st.next_req += 1;
            let req = st.next_req;
            st.pending.insert(
                req,
                Pending {
                    reply: tx,
                    reservation,
                    sent: false,
                    on_answer,
                },
            );
            make(req)
        };
        let asked = async {
            self.shared
                .up
                .send(msg)
                .await
                .map_err(|_| BusError::Unavailable)?;
            rx.await.map_err(|_| BusError::Unavailable)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, asked).await {
            Ok(r) => r,
            Err(_) => Err(BusError::Unavailable),
        }
    }

    /// See [`super::Bus::reserve`].
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn reserve(
        &self,
        key: &str,
        holder: u64,
        value: Bytes,
        will: Option<(String, Bytes)>,
    ) -> Result<bool, BusError> {
        let reservation = Reservation {
            key: key.to_string(),
            holder,
            value,
            will,
        };
        let r = reservation.clone();
        match self
            .request(
                move |req| Up::Reserve {
                    req,
                    reservation: r,
                },
                Some(reservation),
            )
            .await?
        {
            Down::Reserved { ok, .. } => Ok(ok),
            _ => Err(BusError::Unavailable),
        }
    }

    /// See [`super::Bus::hand_over`].
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn hand_over(
        &self,
        topic: &str,
        from: (u32, u64),
        reservation: Reservation,
        on_answer: Box<dyn FnOnce(bool) + Send>,
    ) -> Result<bool, BusError> {
        let r = reservation.clone();
        let topic = topic.to_string();
        match self
            .request_with(
                move |req| Up::HandOver {
                    req,
                    topic,
                    from_worker: from.0,
                    from_holder: from.1,
                    reservation: r,
                },
                Some(reservation),
                Some(on_answer),
            )
            .await?
        {
            Down::HandedOver { ok, .. } => Ok(ok),
            _ => Err(BusError::Unavailable),
        }
    }

    /// See [`super::Bus::release`].
    pub fn release(&self, key: &str, holder: u64) {
        {
            self.state().reservations.remove_held(key, holder, None);
        }
        let msg = Up::Release {
            key: key.to_string(),
            holder,
        };
        // The caller (a connection ending) never waits; order does not matter for a release.
        self.send_now(msg);
    }

    /// See [`super::Bus::set_if_absent`].
    pub fn set_if_absent(&self, key: &str, value: Bytes) {
        // Remembered as the value of sequence 0 (unless one was seen already), so a hub that
        // restarts before anybody changed the key gets the seed back in this worker's hello.
        self.state()
            .values
            .entry(key.to_string())
            .or_insert_with(|| (0, value.clone()));
        let msg = Up::SetIfAbsent {
            key: key.to_string(),
            value,
        };
        self.send_now(msg);
    }

    /// Queues `msg` without waiting: if the queue is full (the hub is away or swamped) it is
    /// sent from a task, so the caller never waits.
    fn send_now(&self, msg: Up) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.shared.up.try_send(msg) {
            let up = self.shared.up.clone();
            tokio::spawn(async move {
                let _ = up.send(msg).await;
            });
        }
    }

    /// See [`super::Bus::list`].
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Bytes>, BusError> {
        let prefix = prefix.to_string();
        match self.request(|req| Up::List { req, prefix }, None).await? {
            Down::Listing { values, .. } => Ok(values),
            _ => Err(BusError::Unavailable),
        }
    }

    /// See [`super::Bus::sync`].
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn sync(&self) -> Result<(), BusError> {
        match self.request(|req| Up::Sync { req }, None).await? {
            Down::Synced { .. } => Ok(()),
            _ => Err(BusError::Unavailable),
        }
    }

    /// See [`super::Bus::swap`].
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn swap(&self, key: &str, value: Bytes) -> Result<Bytes, BusError> {
        let key = key.to_string();
        match self
            .request(|req| Up::Swap { req, key, value }, None)
            .await?
        {
            Down::Swapped { old, .. } => Ok(old),
            _ => Err(BusError::Unavailable),
        }
    }
}

/// Keeps a connection to the hub for the life of the worker.
async fn connection_task(addr: PathBuf, shared: Arc<Shared>, mut up_rx: mpsc::Receiver<Up>) {
    let shown = show_address(&addr);
    let mut backoff = RECONNECT.0;
    let mut sessions = 0u64;
    loop {
        let stream = match UnixStream::connect(&addr).await {
            Ok(s) => s,
            Err(err) => {
                tracing::debug!(cause = %err, "bus hub {shown} not reachable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT.1);
                continue;
            }
        };
        backoff = RECONNECT.0;
        sessions += 1;
        {
            let mut st = lock(&shared.state);
            st.session_base = st.taken.clone();
        }
        let hello = hello(&shared);
        let names = match &hello {
            Up::Hello { reservations, .. } => reservations.len(),
            _ => 0,
        };
        if sessions == 1 {
            tracing::debug!("connected to the bus hub {shown}");
        } else {
            tracing::info!("reconnected to the bus hub; re-registered {names} name(s)");
        }
        let result = session(stream, hello, &shared, &mut up_rx).await;
        // Requests already written to the dead connection will never be answered: fail them
        // now (their callers get `Unavailable`). Those still queued go to the next hub.
        let mut st = lock(&shared.state);
        st.pending.retain(|_, p| !p.sent);
        drop(st);
        match result {
            Ok(()) => tracing::warn!("the bus hub closed the connection; reconnecting"),
            Err(err) => tracing::warn!(cause = %err, "lost the bus hub; reconnecting"),
        }
    }
}

/// The first frame of a session: everything the hub must know again after a restart.
fn hello(shared: &Shared) -> Up {
    let st = lock(&shared.state);
    Up::Hello {
        worker: std::process::id(),
        reservations: st.reservations.reservations(),
        values: st
            .values
            .iter()
            .map(|(k, (seq, v))| (k.clone(), *seq, v.clone()))
            .collect(),
    }
}

/// One connection: a writer (queue → socket, batched) and a reader (socket → answers and
/// deliveries) running side by side until either fails.
async fn session(
    stream: UnixStream,
    hello: Up,
    shared: &Arc<Shared>,
    up_rx: &mut mpsc::Receiver<Up>,
) -> std::io::Result<()> {
    let (rd, wr) = stream.into_split();
    // Releases the reader wants sent (a granted name nobody waits for any more).
    let (extra_tx, mut extra_rx) = mpsc::unbounded_channel::<Up>();

    let writer = async {
        let mut frames = FrameWriter::new(wr);
        frames.feed(hello.encode())?;
        frames.flush().await?;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Releases first: each was decided before anything still in the queue was asked
            // for again (see `receive`), so it must reach the hub first.
            tokio::select! {
                biased;
                Some(m) = extra_rx.recv() => batch.push(m),
                n = up_rx.recv_many(&mut batch, BATCH) => if n == 0 {
                    return Ok(());
                },
            }
            {
                let mut st = lock(&shared.state);
                for m in &batch {
                    if let Up::Publish { topic, payload } = m {
                        let len = payload.len() as u64;
                        match st.taken.get_mut(topic) {
                            Some(n) => *n += len,
                            None => {
                                st.taken.insert(topic.clone(), len);
                            }
                        }
                    }
                    if let Up::Reserve { req, .. }
                    | Up::HandOver { req, .. }
                    | Up::List { req, .. }
                    | Up::Swap { req, .. }
                    | Up::Sync { req } = m
                        && let Some(p) = st.pending.get_mut(req)
                    {
                        p.sent = true;
                    }
                }
            }
            for m in coalesce(std::mem::take(&mut batch)) {
                frames.feed(m.encode())?;
            }
            frames.flush().await?;
        }
    };

    let reader = async {
        let mut frames = FrameReader::new(rd);
        while let Some(frame) = frames.next().await? {
            let msg = Down::decode(frame)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            receive(shared, msg, &extra_tx);
        }
        Ok::<(), std::io::Error>(())
    };

    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

/// Merges runs of publications on one topic into one (payloads concatenated, at most
/// [`COALESCE_BYTES`]), keeping every other message and the order: the hub then handles one
/// frame where it had dozens, which is most of its work under a chat burst. A topic is a
/// stream of payloads, and a subscriber may get several in one call (see [`super::Bus::publish`]).
fn coalesce(batch: Vec<Up>) -> Vec<Up> {
    let mut out: Vec<Up> = Vec::with_capacity(batch.len());
    let mut run: Option<(String, BytesMut)> = None;
    let flush = |run: &mut Option<(String, BytesMut)>, out: &mut Vec<Up>| {
        if let Some((topic, payload)) = run.take() {
            out.push(Up::Publish {
                topic,
                payload: payload.freeze(),
            });
        }
    };
    for m in batch {
        match m {
            Up::Publish { topic, payload } => {
                if let Some((t, p)) = &mut run
                    && *t == topic
                    && p.len() + payload.len() <= COALESCE_BYTES
                {
                    p.extend_from_slice(&payload);
                    continue;
                }
                flush(&mut run, &mut out);
                run = Some((topic, BytesMut::from(&payload[..])));
            }
            other => {
                flush(&mut run, &mut out);
                out.push(other);
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Acts on one frame from the hub.
fn receive(shared: &Shared, msg: Down, extra: &mpsc::UnboundedSender<Up>) {
    match msg {
        Down::Deliver { topic, payload } => {
            let handler = {
                let st = lock(&shared.state);
                st.subscribers.get(&topic).cloned()
            };
            if let Some(h) = handler {
                // Its own allocation, not a slice of the read buffer (see `proto`): a
                // subscriber may keep it queued (a slow chat member).
                h(payload);
            }
        }
        Down::Reserved { req, ok } => {
            let mut st = lock(&shared.state);
            let Some(p) = st.take_pending(req) else {
                return;
            };
            let reservation = p.reservation.clone();
            if ok && let Some(r) = &reservation {
                st.reservations.insert(r, ());
            }
            if p.reply.send(Down::Reserved { req, ok }).is_err()
                && ok
                && let Some(r) = reservation
            {
                // The waiter gave up (timed out, e.g. while a restarted hub waited for the
                // workers to re-register): give the name back rather than hold it for a member
                // that is not there.
                st.reservations.remove(&r.key);
                // Unless the same holder asked for it again (it retried after the timeout):
                // the hub grants that request too, and a release sent now would reach it after
                // and free the name under a member who was told it is theirs. That request's
                // own answer settles the name.
                let asked_again = st.pending.values().any(|p| {
                    p.reservation
                        .as_ref()
                        .is_some_and(|q| q.key == r.key && q.holder == r.holder)
                });
                if !asked_again {
                    let _ = extra.send(Up::Release {
                        key: r.key,
                        holder: r.holder,
                    });
                }
            }
        }
        Down::HandedOver { req, ok } => {
            let (p, on_answer) = {
                let mut st = lock(&shared.state);
                let Some(mut p) = st.take_pending(req) else {
                    return;
                };
                if ok && let Some(r) = &p.reservation {
                    st.reservations.insert(r, ());
                }
                let on_answer = p.on_answer.take();
                (p, on_answer)
            };
            if let Some(f) = on_answer {
                f(ok);
            }
            let reservation = p.reservation.clone();
            if p.reply.send(Down::HandedOver { req, ok }).is_err()
                && ok
                && let Some(r) = reservation
            {
                // The waiter gave up: the member it was for is not here; free the name.
                lock(&shared.state).reservations.remove(&r.key);
                let _ = extra.send(Up::Release {
                    key: r.key,
                    holder: r.holder,
                });
            }
        }
        Down::Cut {
            key,
            holder,
            topic,
            published,
        } => {
            let (handler, at) = {
                let mut st = lock(&shared.state);
                st.reservations.remove_held(&key, holder, None);
                let base = st.session_base.get(&topic).copied().unwrap_or(0);
                (st.cut.clone(), base + published)
            };
            if let Some(h) = handler {
                h(holder, at);
            }
        }
        Down::Listing { req, .. } | Down::Swapped { req, .. } | Down::Synced { req } => {
            let mut st = lock(&shared.state);
            if let Some(p) = st.take_pending(req) {
                let _ = p.reply.send(msg);
            }
        }
        Down::Changed { key, seq, value } => {
            let mut st = lock(&shared.state);
            let newer = st.values.get(&key).is_none_or(|(s, _)| *s < seq);
            if newer {
                // Kept until the next change: its own allocation (see Deliver).
                st.values.insert(key, (seq, value));
            }
        }
        Down::Lost { key, holder } => {
            let handler = {
                let mut st = lock(&shared.state);
                st.reservations.remove_held(&key, holder, None);
                st.lost.clone()
            };
            tracing::warn!(
                key,
                holder,
                "a name was lost to another worker after a hub restart"
            );
            if let Some(h) = handler {
                h(holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, payload: &'static [u8]) -> Up {
        Up::Publish {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn runs_of_publications_on_one_topic_become_one_in_order() {
        let batch = vec![
            publish("chat", b"a\r\n"),
            publish("chat", b"b\r\n"),
            Up::Sync { req: 1 },
            publish("chat", b"c\r\n"),
            publish("other", b"x"),
            publish("chat", b"d\r\n"),
        ];
        assert_eq!(
            coalesce(batch),
            vec![
                publish("chat", b"a\r\nb\r\n"),
                Up::Sync { req: 1 },
                publish("chat", b"c\r\n"),
                publish("other", b"x"),
                publish("chat", b"d\r\n"),
            ]
        );
    }

    #[test]
    fn a_coalesced_payload_stays_under_the_cap() {
        static LINE: [u8; 1000] = [b'x'; 1000];
        let batch = (0..200).map(|_| publish("chat", &LINE)).collect();
        let out = coalesce(batch);
        assert!(out.len() > 1);
        let mut total = 0;
        for m in out {
            let Up::Publish { payload, .. } = m else {
                panic!("only publications")
            };
            assert!(payload.len() <= COALESCE_BYTES);
            total += payload.len();
        }
        assert_eq!(total, 200 * 1000);
    }

    fn shared() -> Shared {
        let (up, _) = mpsc::channel(1);
        Shared {
            up,
            state: Mutex::new(State::default()),
        }
    }

    /// A reserve of `key` for `holder`, as `EmbeddedBus::request` records it.
    fn ask(shared: &Shared, key: &str, holder: u64) -> (u64, oneshot::Receiver<Down>) {
        let (reply, rx) = oneshot::channel();
        let mut st = shared.state.lock().unwrap();
        st.next_req += 1;
        let req = st.next_req;
        let reservation = Reservation {
            key: key.into(),
            holder,
            value: Bytes::new(),
            will: None,
        };
        st.pending.insert(
            req,
            Pending {
                reply,
                reservation: Some(reservation),
                sent: true,
                on_answer: None,
            },
        );
        (req, rx)
    }

    fn held(shared: &Shared) -> Vec<String> {
        shared
            .state
            .lock()
            .unwrap()
            .reservations
            .reservations()
            .into_iter()
            .map(|r| r.key)
            .collect()
    }

    #[test]
    fn a_name_granted_after_its_waiter_gave_up_is_given_back() {
        let s = shared();
        let (extra, mut sent) = mpsc::unbounded_channel();
        let (req, rx) = ask(&s, "x", 1);
        drop(rx); // timed out
        receive(&s, Down::Reserved { req, ok: true }, &extra);
        assert!(held(&s).is_empty());
        assert!(s.state.lock().unwrap().pending.is_empty());
        assert_eq!(
            sent.try_recv().unwrap(),
            Up::Release {
                key: "x".into(),
                holder: 1
            }
        );
        // A refusal nobody waits for any more needs nothing.
        let (req, rx) = ask(&s, "y", 1);
        drop(rx);
        receive(&s, Down::Reserved { req, ok: false }, &extra);
        assert!(sent.try_recv().is_err());
    }

    /// Issue 13: the table of waiting requests does not keep a burst's size once answered.
    #[test]
    fn the_pending_table_shrinks_after_a_burst() {
        let s = shared();
        let (extra, _sent) = mpsc::unbounded_channel();
        let asked: Vec<_> = (0..1000).map(|i| ask(&s, &format!("k{i}"), i)).collect();
        assert!(s.state.lock().unwrap().pending.capacity() >= 1000);
        for (req, _rx) in &asked {
            receive(
                &s,
                Down::Reserved {
                    req: *req,
                    ok: true,
                },
                &extra,
            );
        }
        let st = s.state.lock().unwrap();
        assert!(st.pending.is_empty());
        assert!(st.pending.capacity() <= 2 * PENDING_KEPT);
        assert_eq!(st.reservations.len(), 1000, "every name granted is kept");
    }

    #[test]
    fn a_holder_that_asked_again_keeps_the_name_its_first_request_got() {
        let s = shared();
        let (extra, mut sent) = mpsc::unbounded_channel();
        let (first, rx) = ask(&s, "x", 1);
        drop(rx); // timed out; the member tries the same name again
        let (second, mut rx) = ask(&s, "x", 1);
        receive(
            &s,
            Down::Reserved {
                req: first,
                ok: true,
            },
            &extra,
        );
        assert!(
            sent.try_recv().is_err(),
            "a release would free the second grant"
        );
        receive(
            &s,
            Down::Reserved {
                req: second,
                ok: true,
            },
            &extra,
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Down::Reserved {
                req: second,
                ok: true
            }
        );
        assert_eq!(held(&s), vec!["x".to_string()]);
        assert!(sent.try_recv().is_err());
    }
}
