//! `chat`: a line-based room usable from telnet and nc, one room for the whole server whatever
//! worker each member lands on.
//!
//! The protocol, as a member sees it (every line we send ends in CRLF; lines we read end in LF
//! or CRLF):
//!
//! ```text
//! * welcome to oxicorn chat; what is your name?
//! alice                                   ← 1–32 characters: letters, digits, ASCII
//! * you joined as alice; /who lists the members, /quit leaves
//! * bob joined
//! <bob> hi
//! hello bob                               → others see `<alice> hello bob`
//! /who
//! * members (2): alice, bob
//! /quit
//! * bye
//! ```
//!
//! Names follow RFC 8265's username profile and must not be, or look like, a present member's
//! name, across all workers ([`text::check_name`]): a member reserves `chat:<key>` on the
//! [`Bus`], where the key folds case, width, normalisation and confusable look-alikes. Lines go to the members of this worker directly,
//! and through the bus to the other workers, which hand them to their own members. Both paths
//! keep each sender's order.
//!
//! Delivery inside a worker goes through the room's *log* (`log`): every line for the
//! members of this worker is stored once, in order, and each member's writer copies from its
//! own position in it straight into one write to its socket. A line costs the same whether 3 or
//! 3,000 members get it; what a member's write costs is one copy of what it has not yet seen.
//! Lines are appended without ever waiting for anyone, so a member that stops reading never
//! slows the sender or anybody else; a member more than [`MEMBER_BACKLOG`] bytes behind (more
//! with a very large `--max-line`) is disconnected with a final notice (if the socket takes it)
//! and the others see it leave.
//!
//! # Hand-over
//!
//! When its worker retires for a reload, an upgrade, recycling or scaling down, a member is
//! carried on by a newer worker ([`super::handoff`]) without noticing: its session stops
//! between two lines, the socket and what the reader held go to the new worker, the name
//! moves on the bus in one step (never free, no join or leave notice), and the room's lines
//! are cut at that step of the hub's order ([`crate::bus::Bus::hand_over`]): the old worker
//! writes the lines ordered before it, then lets go; the new one writes the rest, once the
//! old one is done. Every line reaches the member once, in each sender's order. If no worker
//! takes the member, it is told to reconnect, as on a stop.
//!
//! # Parking
//!
//! A joined member silent for [`super::park::PARK_AFTER`], whose reader holds nothing (no
//! partial line, no telnet command half read) and whose writer is at the log's head with
//! nothing due, parks ([`super::park`]): its task ends, its socket waits in the worker's
//! parking with a record tagged with its member id, its room entry stays (its place in the
//! log), with the record's key, which the room wakes through the parking instead of a task's
//! waker, and its name and its reader's telnet mode wait in [`Chat`]'s table of parked
//! members. Nothing else of it is left on the heap: no allocation of its own, which would have
//! kept resident the heap pages of the tasks that ended around it (see `ParkedMember`). Room output for it (a
//! line, a reply, a kick) wakes the record; its own bytes, or its client closing the
//! socket, make it readable; a stop or a retirement resumes every record. Whichever comes
//! first, [`Chat::resume`] carries the member on in a new task from where it was, and it
//! does exactly what it would have done in its old task (writes what is due, reads its line,
//! leaves with a notice, is told to reconnect, or is handed to a newer worker). A member with
//! an idle timeout does not park: the timeout is its task's. Why: issue 13, an idle member
//! costs its room entry, its record and its name rather than a task, a future and tokio's
//! registration of its socket.
//!
//! # Layout
//!
//! - `log`: the bytes of the room's traffic in this worker, stored once.
//! - `room`: who reads where in the log, replies, kicks (`Room::enter` gives a
//!   connection its seat).
//! - `session`: the protocol of one member: the name, commands, messages, leaving.
//! - `writer`: the only code that writes to a member's socket.
//! - [`text`]: which names are valid, what others see of a line.

mod log;
mod room;
mod session;
pub mod text;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use self::room::{KickReason, Room, Seat};
use self::session::{End, Joined, RECONNECT};
use super::ConnContext;
use super::handoff::{self, Flushed, Parcel, Receipt};
use super::lines::{LineReader, ReaderState, RestState};
use super::park::{Key, Resumed, Spot};
use crate::bus::Bus;
use crate::net::Stream;
use crate::sync::lock;

pub use room::MEMBER_BACKLOG;
pub use text::{MAX_NAME, check_name, clean};

/// The bus topic chat lines travel on. A payload on it is one or more whole lines (the bus may
/// hand several publications over as one), appended to the room's log as they are.
pub const TOPIC: &str = "chat";

/// Prefix of the reserved names on the bus.
const KEY_PREFIX: &str = "chat:";

/// After a member leaves, how long its writer may take to flush what is queued for it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Ends after `limit`, or never, with its timer boxed, so a member waiting for its next line
/// (selecting over its read, its stop and this) holds a pointer rather than a 120-byte timer (issue 13;
/// chat has no idle timeout by default, and then nothing is allocated).
fn idle_deadline(limit: Option<Duration>) -> impl Future<Output = ()> + Send {
    let sleep = limit.map(|d| Box::pin(tokio::time::sleep(d)));
    async move {
        match sleep {
            Some(s) => s.await,
            None => std::future::pending().await,
        }
    }
}

/// One member's connection, as [`Chat::run`] takes it.
struct Connection<'a> {
    /// The member's id in this worker.
    id: u64,
    /// Its socket, to pass on in a hand-over (valid while `lines` and `wr` live).
    fd: std::os::fd::RawFd,
    /// Its place in the room.
    seat: Seat,
    /// Its reader, with what it read and did not use yet.
    lines: LineReader<tokio::io::ReadHalf<Stream>>,
    /// The writer's half of the socket.
    wr: tokio::io::WriteHalf<Stream>,
    /// Its name, once it has one.
    joined: Option<Joined>,
    /// For a member taken over: resolves when the old worker is done writing.
    flushed: Option<Flushed>,
    /// What the worker told the connection (stop, retire, timeouts).
    ctx: &'a ConnContext,
}

/// The chat service of one worker.
pub struct Chat {
    bus: Bus,
    room: Arc<Room>,
    max_line: usize,
    /// Member ids, unique in this worker (the bus tells workers apart).
    next_id: AtomicU64,
    /// What a parked member needs back when it resumes, by member id (see "Parking").
    parked: Mutex<HashMap<u64, ParkedMember>>,
}

/// A parked member's name and its reader's telnet mode: what its task held beyond its seat
/// and its socket ([`Chat::park`]). 40 bytes, no allocation of its own for a name of up to 12
/// ASCII letters: one of these per idle member (issue 13; 136 bytes and two allocations with
/// the name and the key as `String`s and the reader's whole state).
struct ParkedMember {
    joined: Joined,
    reader: RestState,
}

/// What came of [`Chat::park`].
enum Parked<'a> {
    /// The member is parked; its task ends.
    Yes,
    /// Not now (something is due, or the worker is full or stopping): it carries on.
    No(Connection<'a>),
    /// Its socket is gone: the member leaves.
    Gone(Seat, Option<Joined>),
}

impl fmt::Debug for Chat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chat")
            .field("max_line", &self.max_line)
            .finish_non_exhaustive()
    }
}

impl Chat {
    /// The room of one worker, subscribed to the other workers' lines on `bus`.
    pub fn new(bus: Bus, max_line: usize) -> Chat {
        let room = Arc::new(Room::new(max_line));
        let r = Arc::clone(&room);
        bus.subscribe(TOPIC, Arc::new(move |lines| r.append(None, &lines)));
        let r = Arc::clone(&room);
        bus.on_lost(Arc::new(move |holder| r.kick(holder, KickReason::Lost)));
        let r = Arc::clone(&room);
        bus.on_cut(Arc::new(move |holder, published| {
            r.cut(holder, published);
        }));
        Chat {
            bus,
            room,
            max_line,
            next_id: AtomicU64::new(1),
            parked: Mutex::default(),
        }
    }

    /// Serves one member from its first byte to its leave notice.
    ///
    /// # Errors
    /// Read errors; they end this member only (the others see it leave).
    ///
    /// Not an `async fn`: the connection is set up here, synchronously, and the future returned
    /// is the member's run alone. An async wrapper would keep room for its own locals (the
    /// socket halves, the reader, the seat) beside the run they were moved into, in every idle
    /// member's future (issue 13).
    pub fn serve<'a>(
        &'a self,
        stream: Stream,
        ctx: &'a ConnContext,
        spot: Spot<'a>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %ctx.peer, member = id, "chat connection");
        let fd = handoff::stream_fd(&stream);
        let (rd, wr) = tokio::io::split(stream);
        // Leaves the room however this task ends (see `Seat`).
        let seat = self.room.enter(id);
        self.reply(id, "* welcome to oxicorn chat; what is your name?\r\n");
        // telnet is one of the two clients chat is for: its Ctrl-C must not become garbage
        // in the room, nor silence the member's own screen (see `Line::TimingMark`), and the
        // options PuTTY negotiates when it connects are answered, not taken for a name.
        let lines = LineReader::telnet(rd, self.max_line);
        self.run(
            Connection {
                id,
                fd,
                seat,
                lines,
                wr,
                joined: None,
                flushed: None,
                ctx,
            },
            spot,
        )
    }

    /// Carries on a member another worker handed over (see the module's "Hand-over"): moves
    /// its name here on the bus, answers the old worker, and serves it from where it was;
    /// writes to it once the old worker is done writing.
    ///
    /// # Errors
    /// As [`Chat::serve`].
    ///
    /// Not an `async fn`, as [`Chat::serve`]: the take-over (the reader's bytes, the name, the
    /// receipt, the bus request) runs boxed and is freed once the member is carried on, so an
    /// adopted member's future is the same size as any other's: every member after a reload
    /// or an upgrade is one (issue 13; 2,264 bytes when it was all one `async fn`).
    pub fn adopt<'a>(
        &'a self,
        stream: Stream,
        reader: ReaderState,
        member: Option<handoff::Member>,
        receipt: Receipt,
        ctx: &'a ConnContext,
        spot: Spot<'a>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        let taken = Box::pin(self.take_over(stream, reader, member, receipt, ctx));
        async move {
            // Not `match taken.await { .. }`: the matched value would live, beside the run,
            // for the member's whole life.
            let Some(conn) = taken.await else {
                return Ok(());
            };
            self.run(conn, spot).await
        }
    }

    /// Carries on a member whose connection parked and resumed (see "Parking" in the module
    /// header): its seat, its name and its reader's mode are where it left them; it reads and
    /// writes from there. A record that names no parked member here closes.
    ///
    /// # Errors
    /// As [`Chat::serve`].
    pub fn resume<'a>(
        &'a self,
        stream: Stream,
        resumed: Resumed,
        ctx: &'a ConnContext,
        spot: Spot<'a>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        let id = resumed.tag;
        let parked = lock(&self.parked).remove(&id);
        let conn = parked.and_then(|p| {
            let seat = self.room.reseat(id)?;
            let fd = handoff::stream_fd(&stream);
            let (rd, wr) = tokio::io::split(stream);
            Some(Connection {
                id,
                fd,
                seat,
                lines: LineReader::resume(rd, self.max_line, p.reader.into()),
                wr,
                joined: Some(p.joined),
                flushed: None,
                ctx,
            })
        });
        async move {
            let Some(conn) = conn else {
                tracing::debug!(member = id, "a parked chat member is not here: closed");
                return Ok(());
            };
            self.run(conn, spot).await
        }
    }

    /// Parks an idle member that is up to date (its reader at rest, its writer at the log's
    /// head with nothing due): its task ends, its socket waits in the worker's parking, its
    /// room entry stays with the key that resumes it, and its name and reader's mode wait in
    /// [`Chat::parked`]. Gives the connection back when it cannot park now.
    fn park<'a>(&self, conn: Connection<'a>, spot: Spot<'_>) -> Parked<'a> {
        let reader = match conn.lines.rest_state() {
            Some(r)
                if conn.flushed.is_none()
                    && conn.joined.is_some()
                    && self.room.up_to_date(conn.id) =>
            {
                r
            }
            _ => return Parked::No(conn),
        };
        let Connection {
            id,
            fd,
            seat,
            lines,
            wr,
            joined,
            flushed,
            ctx,
        } = conn;
        let stream = lines.into_inner().unsplit(wr);
        match spot.park_tagged(stream, None, false, id) {
            Ok(key) if key != Key::GONE => {
                let Some(parking) = spot.parking() else {
                    // Not reached: a spot that parks has a parking to wake.
                    return Parked::Gone(seat, joined);
                };
                let joined = joined.expect("checked above");
                lock(&self.parked).insert(id, ParkedMember { joined, reader });
                seat.park();
                self.room.park(id, key, parking);
                tracing::debug!(member = id, "chat member parked");
                Parked::Yes
            }
            Ok(_) => Parked::Gone(seat, joined),
            Err(stream) => {
                let (rd, wr) = tokio::io::split(stream);
                Parked::No(Connection {
                    id,
                    fd,
                    seat,
                    lines: LineReader::resume(rd, self.max_line, reader.into()),
                    wr,
                    joined,
                    flushed,
                    ctx,
                })
            }
        }
    }

    /// The first part of [`Chat::adopt`]: the member's name moved here and the old worker
    /// answered; `None` if the member stays with the old worker.
    async fn take_over<'a>(
        &'a self,
        stream: Stream,
        reader: ReaderState,
        member: Option<handoff::Member>,
        receipt: Receipt,
        ctx: &'a ConnContext,
    ) -> Option<Connection<'a>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fd = handoff::stream_fd(&stream);
        let (rd, wr) = tokio::io::split(stream);
        let seat = self.room.enter(id);
        let joined = match member {
            None => None,
            Some(m) => {
                // Reads the room from here, and the hand-over is queued to the hub in the same
                // step (nothing awaits in between): this worker's lines from now on are
                // ordered after the cut, as this member's seat expects.
                self.room.adopt(id);
                let will = (
                    TOPIC.to_string(),
                    Bytes::from(format!("* {} left\r\n", m.name)),
                );
                let room = Arc::clone(&self.room);
                let answered = Box::new(move |ok: bool| {
                    if ok {
                        room.cut_answered(id);
                    }
                });
                let reservation = crate::bus::proto::Reservation {
                    key: m.key.clone(),
                    holder: id,
                    value: Bytes::copy_from_slice(m.name.as_bytes()),
                    will: Some(will),
                };
                let moved = self
                    .bus
                    .hand_over(TOPIC, (m.worker, m.holder), reservation, answered)
                    .await;
                if moved != Ok(true) {
                    receipt.refuse("the member's name could not move").await;
                    return None;
                }
                Some(Joined::new(&m.name, &m.key))
            }
        };
        tracing::debug!(peer = %ctx.peer, member = id, "chat member taken over");
        let flushed = match receipt.take().await {
            Ok(f) => Some(f),
            Err(err) => {
                // The old worker did not hear that it was taken, so it keeps the member: let
                // go of the socket and of the name (its holder here never existed for it).
                tracing::debug!(member = id, cause = %err, "hand-over: the old worker is gone");
                if let Some(j) = &joined {
                    self.bus.release(j.key(), id);
                }
                return None;
            }
        };
        let lines = LineReader::resume(rd, self.max_line, reader);
        Some(Connection {
            id,
            fd,
            seat,
            lines,
            wr,
            joined,
            flushed,
            ctx,
        })
    }

    /// Runs a member: its session and writer ([`Chat::live`]), parking it whenever it is idle
    /// and up to date, until its end or its hand-over.
    ///
    /// No `async fn`: the future keeps what it captured for its whole life, so the local an
    /// `async fn` makes of a `mut` argument would store `conn` a second time in every idle
    /// member's future (264 bytes; issue 13).
    #[allow(clippy::manual_async_fn)] // See above: an `async fn` would store `conn` twice.
    fn run<'a>(
        &'a self,
        mut conn: Connection<'a>,
        spot: Spot<'a>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        async move {
            loop {
                if let Some(result) = self.live(&mut conn, spot).await {
                    return result;
                }
                let id = conn.id;
                match self.park(conn, spot) {
                    Parked::Yes => return Ok(()),
                    Parked::No(c) => conn = c,
                    Parked::Gone(seat, joined) => {
                        // The socket could not leave the runtime: it is closed.
                        if let Some(j) = joined {
                            Box::pin(self.leave(id, j, self.room.kick_reason(id))).await;
                        }
                        self.room.close(id);
                        drop(seat);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Runs a member's session and writer to the member's end, or to its hand-over; `None`
    /// when the member has been silent long enough to park (the session and the writer
    /// stopped between two lines, leaving `conn` whole).
    ///
    /// `conn`'s fields are used where they are, never moved into locals: a copy (taking `conn`
    /// apart) would be stored a second time in every idle member's future (issue 13).
    async fn live(&self, conn: &mut Connection<'_>, spot: Spot<'_>) -> Option<io::Result<()>> {
        let (id, ctx) = (conn.id, conn.ctx);
        let writer = async {
            // A member taken over: the old worker writes what it owes first.
            if let Some(f) = conn.flushed.take()
                && !Box::pin(f.wait(DRAIN_TIMEOUT)).await
            {
                tracing::warn!(
                    member = id,
                    "hand-over: the old worker did not finish writing in time"
                );
            }
            writer::write_loop(&mut conn.wr, &conn.seat).await
        };
        tokio::pin!(writer);

        let mut writer_done = false;
        let result = {
            let session = self.session(id, &mut conn.lines, ctx, &mut conn.joined, spot);
            tokio::select! {
                // The writer first, every time this task runs. Both share the task's budget
                // (tokio's cooperative scheduling): polled in random order, a session with
                // megabytes of input queued could take it several polls in a row while the
                // writer, which also lets the log drop the member's own lines, waited.
                biased;
                () = &mut writer => {
                    writer_done = true;
                    Ok(End::Closed)
                }
                r = session => r,
            }
        };
        if let Ok(End::Park) = result {
            return None;
        }
        if let Ok(End::HandOver) = result {
            // Boxed: the hand-over's state (the offer, the wait for the cut) lives on the heap
            // only while it runs, not in every idle member's future (issue 13).
            let carried_on = Box::pin(self.hand_over(
                id,
                conn.fd,
                &conn.lines,
                conn.joined.as_ref(),
                ctx,
                writer.as_mut(),
                &mut writer_done,
            ))
            .await;
            if carried_on {
                // No leave notice and no release: the member and its name live on in the new
                // worker. The seat leaves this room as it drops.
                return Some(Ok(()));
            }
            self.last_word(id, RECONNECT);
        }
        if let Some(j) = conn.joined.take() {
            // Boxed, as the session's steps are (see `session`): not part of the idle future.
            Box::pin(self.leave(id, j, self.room.kick_reason(id))).await;
        }
        self.room.close(id);
        if !writer_done {
            // Let the writer flush the member's last lines (`* bye`), but not forever.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, writer).await;
        }
        Some(result.map(|_| ()))
    }

    /// Offers a member to a newer worker (see the module's "Hand-over") while its writer goes
    /// on writing the room up to the cut; true when a newer worker took it, false when none
    /// did (the member stays, to be told to reconnect).
    #[allow(clippy::too_many_arguments)]
    async fn hand_over(
        &self,
        id: u64,
        fd: std::os::fd::RawFd,
        lines: &LineReader<tokio::io::ReadHalf<Stream>>,
        joined: Option<&Joined>,
        ctx: &ConnContext,
        mut writer: std::pin::Pin<&mut impl Future<Output = ()>>,
        writer_done: &mut bool,
    ) -> bool {
        if joined.is_some() {
            // The member's last lines must reach the hub before the new worker asks it to
            // move the name: published after the cut, the new worker would send them back
            // to the member as if someone else had said them.
            let _ = self.bus.sync().await;
        }
        let parcel = Parcel::Chat {
            reader: lines.state(),
            member: joined.map(|j| handoff::Member {
                name: j.name().to_string(),
                key: j.key().to_string(),
                worker: std::process::id(),
                holder: id,
            }),
        };
        let offer = ctx.retire.offer(fd, &parcel);
        tokio::pin!(offer);
        // The writer goes on meanwhile: the member reads the room until the cut.
        let offered = loop {
            tokio::select! {
                biased;
                () = writer.as_mut(), if !*writer_done => *writer_done = true,
                r = &mut offer => break r,
            }
        };
        match offered {
            Ok(courier) => {
                if joined.is_none() {
                    self.room.hand_off(id);
                }
                // Writes up to the cut (which the bus reports), then stops.
                if !*writer_done
                    && tokio::time::timeout(DRAIN_TIMEOUT, writer.as_mut())
                        .await
                        .is_err()
                {
                    tracing::warn!(
                        member = id,
                        "hand-over: no cut from the bus in time; letting go"
                    );
                }
                courier.flushed().await;
                true
            }
            Err(err) => {
                tracing::debug!(member = id, cause = %err, "chat member stays: telling it to reconnect");
                false
            }
        }
    }

    /// Queues a reply to this member; a member too far behind to take it is kicked.
    fn reply(&self, id: u64, line: impl Into<Bytes>) {
        self.room.reply(id, line.into());
    }

    /// The last line this member gets: nothing the room says after it is sent to it.
    fn last_word(&self, id: u64, line: &'static str) {
        self.room.stop_reading(id);
        self.reply(id, line);
    }

    /// Sends `line` to every other member: this worker's directly, the rest through the bus.
    async fn broadcast(&self, from: u64, line: Bytes) {
        self.room.append(Some(from), &line);
        self.bus.publish(TOPIC, line).await;
    }
}

#[cfg(test)]
mod memory {
    use crate::service::test_support::{pair, runtime};

    /// Every member holds one `serve` future while it waits for its next line and its writer
    /// for the room's next line (issue 13: 100,000 idle members on one small machine). The
    /// read and write buffers are not in it (a per-worker scratch buffer, given back when up to
    /// date); a buffer or a large state added to the wrong place shows here.
    #[test]
    fn an_idle_member_future_stays_small() {
        runtime().block_on(async {
            let (stream, _client) = pair().await;
            let ctx =
                crate::service::ConnContext::detached(crate::net::Peer::Unix, Default::default());
            // No hub listens for this pid: the bus client retries in the background.
            let bus = crate::bus::Bus::embedded(std::process::id());
            let chat = super::Chat::new(bus, crate::config::DEFAULT_MAX_LINE);
            let f = chat.serve(stream, &ctx, crate::service::park::Spot::none());
            let size = std::mem::size_of_val(&f);
            // 984 bytes on rustc 1.95 (a test build), held by a member only until it parks
            // (`service::park::PARK_AFTER` of silence): 840 before parking (the spot, the
            // timer that ends the wait to park, the loop that parks). The connection (264: the line reader
            // with no buffer, 136; the name, 48; the seat, the socket's fd, the old worker's
            // flush signal), the writer (168: its socket half, an empty buffer, a poll loop
            // that waits through the room and the socket), and the session's wait (328: the
            // read, 64; the stop signal, 72; the idle deadline, boxed; the eviction check). It
            // was 2,328 before the session's bus steps were boxed, 3,432 when the hand-over's
            // steps were inline, 1,416 with the writer's own `Notify` and cancellation waits,
            // an inline idle timer and the connection stored twice (taken apart into locals),
            // issue 13.
            assert!(size <= 984, "serve future is {size} bytes");
        });
    }
}

#[cfg(test)]
mod parked {
    use super::{Joined, ParkedMember};

    /// Issue 13: what a parked member keeps in [`super::Chat`]'s table: its name and key (no
    /// allocation of their own when short) and its reader's mode, 40 bytes.
    #[test]
    fn a_parked_member_s_entry_is_small_and_keeps_its_name() {
        assert!(std::mem::size_of::<ParkedMember>() <= 40);
        for (name, key) in [
            ("alice", "chat:alice"),
            ("Ωμέγα", "chat:ωμέγα"),
            (
                "a_name_of_thirty_two_characters_",
                "chat:a_narne_of_thirty_two_characters_",
            ),
        ] {
            let j = Joined::new(name, key);
            assert_eq!((j.name(), j.key()), (name, key));
        }
    }
}

#[cfg(test)]
mod heap {
    use std::io::{BufRead, BufReader, Write};
    use std::time::Duration;

    use crate::service::lines::heap;

    /// Issue 13: what a joined, idle member costs its worker's heap, counted by the test
    /// allocator: its task and future, tokio's registration of its socket, its room entry and
    /// its name in the bus client (the hub runs on a thread of its own, the clients on
    /// another, so neither is counted).
    #[test]
    fn a_joined_idle_member_costs_its_worker_little_heap() {
        const N: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let addr = dir.path().join("hub");
        let hub_addr = addr.clone();
        std::thread::spawn(move || {
            crate::service::test_support::runtime().block_on(async move {
                crate::bus::hub::serve_in_process(&hub_addr).unwrap();
                std::future::pending::<()>().await
            })
        });
        crate::service::test_support::runtime().block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            let bus = crate::bus::Bus::embedded_at(addr);
            let chat: &'static super::Chat = Box::leak(Box::new(super::Chat::new(
                bus.clone(),
                crate::config::DEFAULT_MAX_LINE,
            )));
            // Connected to the hub (it may take a few tries).
            while bus.sync().await.is_err() {}
            crate::service::lines::with_scratch(|_| ());
            // As a worker makes each connection's context: one stop token, one retirement.
            let stop = tokio_util::sync::CancellationToken::new();
            let targets = crate::service::handoff::Targets::default();
            let reclaimer = crate::service::reclaim::Reclaimer::default();
            let (joined_tx, mut joined) = tokio::sync::mpsc::unbounded_channel::<()>();
            let clients = std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..=N {
                    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    (&s).write_all(format!("member{i}\n").as_bytes()).unwrap();
                    let mut line = String::new();
                    while !line.contains("you joined") {
                        line.clear();
                        assert!(r.read_line(&mut line).unwrap() > 0, "closed");
                    }
                    held.push(s);
                    joined_tx.send(()).unwrap();
                }
                held
            });
            let mut before = 0;
            for i in 0..=N {
                let (s, _) = l.accept().await.unwrap();
                let ctx = crate::service::ConnContext {
                    peer: crate::net::Peer::Unix,
                    stop: stop.clone(),
                    idle_timeout: None,
                    metrics: crate::service::metrics::Metrics::detached(),
                    reclaim: reclaimer.register(),
                    listener: 0,
                    retire: targets.retire(),
                };
                tokio::spawn(async move {
                    let _ = chat
                        .serve(
                            crate::net::Stream::Tcp(s),
                            &ctx,
                            crate::service::park::Spot::none(),
                        )
                        .await;
                });
                joined.recv().await.unwrap();
                if i == 0 {
                    // The first member grows what every later one shares (the log's chunk).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    before = heap::live();
                }
            }
            // The join notices reach everybody; every writer is up to date again.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let per = (heap::live() - before) / N as isize;
            // 1,779 bytes on rustc 1.95 (a test build, whose futures are larger than a
            // release's): the task with its context and 840-byte future, tokio's
            // registration of the socket, its split halves, the room entry, the name in the
            // bus client. It was 3,104 with the member's own `Notify`, cancellation token and
            // queues, its name as a map of `String` to a whole reservation, and the
            // 1,416-byte future.
            assert!(
                per <= 2048,
                "a joined idle member costs its worker {per} bytes of heap"
            );
            drop(clients.join().unwrap());
        });
    }
}
