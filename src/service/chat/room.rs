//! The room of one worker: its log and every connection's seat in it (where its writer is, its
//! own lines, its replies, whether it was dropped). Appending never waits for anyone: a member
//! too far behind is kicked instead ([`KickReason::Overflow`]). Owns no socket: the writer
//! ([`super::writer`]) takes what [`Room::gather`] hands it.
//!
//! # What a member costs
//!
//! Every connection has an entry here for its whole life, so the entry is small (issue 13: "a
//! member that is up to date costs no buffer"): where its writer is, a few flags, and how to
//! wake it when there is something for it (a line, a reply, a kick, the end): its task's waker,
//! or, while its connection is parked, its parking key (no allocation of its own: a boxed waker
//! per parked member, left between the freed blocks of the tasks that ended, kept whole pages
//! of the heap resident). Its own lines and its replies are queued in a box of their own ([`Queues`]) only while
//! there are some; a member whose writer is up to date has none. No channel, `Notify` or
//! cancellation token per member: each was an allocation of its own, and a waiter in the
//! member's future.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use bytes::{Bytes, BytesMut};

use super::log::Log;
use crate::service::park::{Key, Parking};
use crate::sync::lock;

/// How far (in bytes of room traffic) a member may fall behind the room before it counts as not
/// reading and is disconnected; on top of what its socket buffers hold. This is also about the
/// most the log of one worker holds, however many members are slow: the log is shared.
pub const MEMBER_BACKLOG: u64 = 1024 * 1024;

/// Replies to one member alone (answers to its commands) that may wait for it; a member that
/// sends `/who` again and again without reading is disconnected past this.
const MEMBER_REPLIES: usize = 256;

/// Bytes gathered for one write to a member's socket (then the writer comes back for more).
pub(super) const BATCH_BYTES: usize = 64 * 1024;

/// [`Member::until`] when the member has not left: the log is sent to its head.
const NEVER: u64 = u64::MAX;

/// How to wake a member's writer when something is due for it.
enum Wake {
    /// Its task waits: its waker.
    Task(Waker),
    /// Its connection is parked: its key in the worker's parking ([`Room::park`]).
    Parked(Key),
}

/// How a member's writer is to finish, as [`Room::gather`] reports it ([`Due::Done`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// The member left: send what is due, then shut the socket's write side.
    Leaving,
    /// The member was handed to another worker: send what is due, then stop, leaving the
    /// socket as it is.
    HandedOff,
}

/// Why the server disconnected a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KickReason {
    /// It fell more than the room's backlog behind, or let too many replies pile up: it is
    /// not reading.
    Overflow,
    /// Its name was lost: after a hub restart, a member of another worker re-registered it
    /// first. The member no longer owns the name, so nothing is announced or freed for it.
    Lost,
}

/// What a member's writer finds when it asks the room ([`Room::gather`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Bytes were appended to the caller's buffer: write them, then ask again.
    Bytes,
    /// Nothing for now: the room wakes the writer's task when there is.
    Nothing,
    /// Nothing more will come (see [`Closed`]).
    Done(Closed),
    /// The member was dropped: send the notice for this reason, if the socket takes it.
    Kicked(KickReason),
    /// The member has left the room.
    Gone,
}

/// A member's own lines and its replies, while it has some: boxed, so that a member with
/// neither (one whose writer is up to date) costs a pointer for them, not two queues.
#[derive(Default)]
struct Queues {
    /// Its own lines in the log (start, end), which its writer skips.
    own: VecDeque<(u64, u64)>,
    /// Their bytes: not for this member, so not part of how far behind it is.
    own_bytes: u64,
    /// Lines for it alone, each due once the log is sent up to the offset beside it, so a
    /// reply lands after what the room said before it.
    replies: VecDeque<(u64, Bytes)>,
}

/// One connection of this worker, as the room sees it.
pub(super) struct Member {
    /// Where its writer is in the log; `None` until it joins (before that it gets its replies
    /// only).
    cursor: Option<u64>,
    /// Set when it leaves: the log is sent up to here, and no further ([`NEVER`] until then).
    until: u64,
    /// Its own lines and replies; `None` when it has neither.
    queues: Option<Box<Queues>>,
    /// How to wake the member, once its writer waited: woken when something is due (if
    /// `waiting`), and when the member is kicked, closed or handed over.
    wake: Option<Wake>,
    /// Why the member was dropped, if it was (the first reason given stays); the log then
    /// keeps nothing for it.
    kicked: Option<KickReason>,
    /// Its writer found nothing due (and the member is in the room's `waiting` list).
    waiting: bool,
    /// No more replies: the writer sends what is due, then shuts the socket's write side.
    closed: bool,
    /// Handed to another worker: once closed, the writer stops without shutting the socket
    /// (the other worker writes to it next).
    handed: bool,
    /// Taken over from another worker and the hub has not answered yet: lines from the bus
    /// are the old worker's to deliver until then ([`Room::adopt`]).
    awaiting_cut: bool,
    /// Its writer holds bytes its socket has not taken yet (gathered, so past its cursor): it
    /// is not up to date, and must not park ([`Room::set_unsent`]).
    unsent: bool,
}

impl Member {
    /// A connection that has not joined yet: it gets its replies only.
    fn new() -> Member {
        Member {
            cursor: None,
            until: NEVER,
            queues: None,
            wake: None,
            kicked: None,
            waiting: false,
            closed: false,
            handed: false,
            awaiting_cut: false,
            unsent: false,
        }
    }

    /// Its queues, made when first needed.
    fn queues(&mut self) -> &mut Queues {
        self.queues.get_or_insert_default()
    }

    /// Bytes of its own lines ahead of its writer.
    fn own_bytes(&self) -> u64 {
        self.queues.as_ref().map_or(0, |q| q.own_bytes)
    }

    /// Whether the log must keep the bytes at its cursor.
    fn reading(&self) -> Option<u64> {
        let c = self.cursor?;
        (self.kicked.is_none() && c < self.until).then_some(c)
    }

    /// Appends what is due for this member to `buf` (about [`BATCH_BYTES`] at most): the log
    /// from its cursor, minus its own lines, with its replies in their places. Emptied queues
    /// give their memory back: a member that is up to date holds none (issue 13).
    fn gather(&mut self, log: &Log, buf: &mut BytesMut) {
        if self.kicked.is_some() {
            // Its writer is stopping, and the log no longer keeps its place.
            return;
        }
        let mut none = Queues::default();
        let q = self.queues.as_deref_mut().unwrap_or(&mut none);
        while buf.len() < BATCH_BYTES {
            let end = match self.cursor {
                Some(c) => self.until.min(log.head).max(c),
                None => 0,
            };
            if let Some(&(at, _)) = q.replies.front()
                && self.cursor.is_none_or(|c| c >= at || c >= end)
            {
                if let Some((_, reply)) = q.replies.pop_front() {
                    buf.extend_from_slice(&reply);
                }
                continue;
            }
            let Some(c) = self.cursor else {
                break;
            };
            let mut stop = end;
            if let Some(&(at, _)) = q.replies.front() {
                stop = stop.min(at);
            }
            if let Some(&(s, e)) = q.own.front() {
                if s <= c {
                    self.cursor = Some(c.max(e));
                    q.own.pop_front();
                    q.own_bytes -= e - s;
                    continue;
                }
                stop = stop.min(s);
            }
            if c >= stop {
                break;
            }
            let to = stop.min(c + (BATCH_BYTES - buf.len()) as u64);
            log.copy(c, to, buf);
            self.cursor = Some(to);
        }
        if self
            .queues
            .as_ref()
            .is_some_and(|q| q.own.is_empty() && q.replies.is_empty())
        {
            self.queues = None;
        }
    }

    /// Keeps `waker` to wake the member's task with (cloned only when it changed).
    fn set_waker(&mut self, waker: &Waker) {
        if !matches!(&self.wake, Some(Wake::Task(w)) if w.will_wake(waker)) {
            self.wake = Some(Wake::Task(waker.clone()));
        }
    }

    /// Wakes the writer if it waits for something due (`parking`: where a parked member is
    /// resumed).
    fn wake(&mut self, parking: Option<&Parking>) {
        if self.waiting {
            self.waiting = false;
            self.notify(parking);
        }
    }

    /// Wakes the writer whatever it waits for (something due, a kick, the end).
    fn notify(&mut self, parking: Option<&Parking>) {
        match self.wake.take() {
            Some(Wake::Task(w)) => w.wake(),
            Some(Wake::Parked(key)) => {
                if let Some(p) = parking {
                    p.wake(key);
                }
            }
            None => {}
        }
    }

    fn kick(&mut self, reason: KickReason, parking: Option<&Parking>) {
        // The first reason stays.
        if self.kicked.is_none() {
            self.kicked = Some(reason);
        }
        self.notify(parking);
    }
}

/// This worker's room: the log and every connection.
#[derive(Default)]
struct RoomState {
    log: Log,
    /// Bytes of this worker's own lines (appended with a sender) so far: the same count as its
    /// publications on the bus, which carry the same bytes in the same order.
    published: u64,
    /// Where this worker's own lines lie in the log, as runs (log start, log end, `published`
    /// at the start), oldest first, for the runs the log still holds: a hand-over cut
    /// ([`Room::cut`]) finds by them the lines the hub had not yet ordered.
    local: VecDeque<(u64, u64, u64)>,
    /// Members taken over whose hand-over the hub has not answered ([`Room::adopt`]): almost
    /// always empty, so a line from the bus costs nothing extra per member.
    awaiting_cut: Vec<u64>,
    members: HashMap<u64, Member>,
    /// Members whose writers wait for the log to grow.
    waiting: Vec<u64>,
    /// The worker's parking, once a member parked: where a parked member's key is woken.
    parking: Option<Parking>,
}

/// Behind a `std::sync::Mutex`: held for a few copies, never across an `.await`, and the
/// worker's runtime has one thread (mini-redis `db.rs` makes the same choice).
pub(super) struct Room {
    state: Mutex<RoomState>,
    /// How far behind a member may be: [`MEMBER_BACKLOG`], or more when `--max-line` is so
    /// large that a few lines would exceed it (a member must always be able to take a line).
    pub(super) backlog: u64,
}

impl Room {
    pub(super) fn new(max_line: usize) -> Room {
        Room {
            state: Mutex::default(),
            backlog: MEMBER_BACKLOG.max(16 * max_line as u64),
        }
    }

    fn state(&self) -> MutexGuard<'_, RoomState> {
        lock(&self.state)
    }

    /// Seats connection `id` (unique in this worker): it gets its replies, and the room's
    /// lines once it [`Room::join`]s. It leaves the room when the seat is dropped.
    pub(super) fn enter(self: &Arc<Self>, id: u64) -> Seat {
        self.state().members.insert(id, Member::new());
        Seat {
            room: Arc::clone(self),
            id,
        }
    }

    /// The seat of member `id`, still in the room while its connection was parked; `None` if
    /// it is not here (see [`Seat::park`]).
    pub(super) fn reseat(self: &Arc<Self>, id: u64) -> Option<Seat> {
        self.state().members.contains_key(&id).then(|| Seat {
            room: Arc::clone(self),
            id,
        })
    }

    /// Whether member `id` has joined and nothing is due for it: its writer is at the log's
    /// head, with no reply, own line or kick pending, still reading (not leaving, not handed
    /// over). Such a member may park.
    pub(super) fn up_to_date(&self, id: u64) -> bool {
        let st = self.state();
        let head = st.log.head;
        st.members.get(&id).is_some_and(|m| {
            m.queues.is_none()
                && m.kicked.is_none()
                && !m.closed
                && !m.handed
                && !m.awaiting_cut
                && !m.unsent
                && m.until == NEVER
                && m.cursor.is_some_and(|c| c >= head)
        })
    }

    /// Member `id`'s connection parked in `parking` under `key`: the key is woken (which
    /// resumes it) when something is due for it, as its task's waker was. Woken at once if
    /// something is due already.
    pub(super) fn park(&self, id: u64, key: Key, parking: &Parking) {
        let due = {
            let mut guard = self.state();
            let st = &mut *guard;
            if st.parking.is_none() {
                st.parking = Some(parking.clone());
            }
            let Some(m) = st.members.get_mut(&id) else {
                drop(guard);
                parking.wake(key);
                return;
            };
            m.wake = Some(Wake::Parked(key));
            if !m.waiting {
                m.waiting = true;
                st.waiting.push(id);
            }
            drop(guard);
            !self.up_to_date(id)
        };
        if due {
            self.kick_wake(id);
        }
    }

    /// Wakes member `id`'s writer whatever it waits for.
    fn kick_wake(&self, id: u64) {
        let mut guard = self.state();
        let st = &mut *guard;
        if let Some(m) = st.members.get_mut(&id) {
            m.notify(st.parking.as_ref());
        }
    }

    /// Appends what is due for member `id` to `buf` (about [`BATCH_BYTES`] at most): the log
    /// from its cursor, minus its own lines, with its replies in their places. When nothing is
    /// due ([`Due::Nothing`]), the room keeps `waker` and wakes it when something is.
    pub(super) fn gather(&self, id: u64, buf: &mut BytesMut, waker: &Waker) -> Due {
        let mut guard = self.state();
        let st = &mut *guard;
        let Some(m) = st.members.get_mut(&id) else {
            return Due::Gone;
        };
        if let Some(reason) = m.kicked {
            return Due::Kicked(reason);
        }
        let before = buf.len();
        m.gather(&st.log, buf);
        if buf.len() > before {
            return Due::Bytes;
        }
        match (m.closed, m.handed) {
            (false, _) => {}
            (true, false) => return Due::Done(Closed::Leaving),
            (true, true) => return Due::Done(Closed::HandedOff),
        }
        m.set_waker(waker);
        if !m.waiting {
            m.waiting = true;
            st.waiting.push(id);
        }
        Due::Nothing
    }

    /// Why member `id` was dropped, if it was; if not, the room keeps `waker` to wake when it
    /// is (a writer in the middle of a write asks, so that a kick ends the write).
    pub(super) fn kicked(&self, id: u64, waker: &Waker) -> Option<KickReason> {
        let mut st = self.state();
        let m = st.members.get_mut(&id)?;
        if m.kicked.is_none() {
            m.set_waker(waker);
        }
        m.kicked
    }

    /// Member `id`'s writer holds bytes its socket has not taken yet (`true`), or has written
    /// them all (`false`). Those bytes are past the member's cursor: without this, a member
    /// whose socket was full when its silence let it park would look up to date, and its
    /// writer's bytes would be dropped with its task.
    pub(super) fn set_unsent(&self, id: u64, unsent: bool) {
        if let Some(m) = self.state().members.get_mut(&id) {
            m.unsent = unsent;
        }
    }

    /// Why member `id` was dropped, if it was.
    pub(super) fn kick_reason(&self, id: u64) -> Option<KickReason> {
        self.state().members.get(&id).and_then(|m| m.kicked)
    }

    /// Another worker took member `id` over, and this is the cut in the bus's order
    /// ([`crate::bus::CutHandler`]): of the room's lines, this member gets the ones the hub
    /// ordered before the cut, which are what the log holds now minus this worker's own lines
    /// past `published` (bytes of its publications the hub had handled). The member's writer
    /// sends that, then stops without closing the socket. False if `id` is not here.
    pub(super) fn cut(&self, id: u64, published: u64) -> bool {
        let mut guard = self.state();
        let st = &mut *guard;
        let head = st.log.head;
        let Some(m) = st.members.get_mut(&id) else {
            return false;
        };
        if m.until == NEVER {
            m.until = head;
        }
        if let Some(c) = m.cursor {
            // This worker's lines the hub had not handled reach the new worker through the
            // bus after the cut: the new worker delivers them, so they are skipped here.
            let mut skips = Vec::new();
            for &(ls, le, ps) in &st.local {
                let from = ls + published.saturating_sub(ps);
                let from = from.max(c);
                if from < le {
                    skips.push((from, le));
                }
            }
            if !skips.is_empty() {
                // The member's own lines are this worker's lines too: merge the overlaps, so
                // every skipped byte is counted once.
                let q = m.queues();
                let mut all: Vec<(u64, u64)> = q.own.drain(..).collect();
                all.extend(skips);
                all.sort_unstable();
                let mut merged: VecDeque<(u64, u64)> = VecDeque::with_capacity(all.len());
                for (s, e) in all {
                    match merged.back_mut() {
                        Some(last) if s <= last.1 => last.1 = last.1.max(e),
                        _ => merged.push_back((s, e)),
                    }
                }
                q.own_bytes = merged.iter().map(|(s, e)| e - s).sum();
                q.own = merged;
            }
        }
        m.handed = true;
        m.closed = true;
        m.notify(st.parking.as_ref());
        true
    }

    /// Member `id` was handed to another worker and needs no cut (it never joined): its writer
    /// sends the replies due, then stops without closing the socket.
    pub(super) fn hand_off(&self, id: u64) {
        let mut guard = self.state();
        let st = &mut *guard;
        if let Some(m) = st.members.get_mut(&id) {
            m.handed = true;
            m.closed = true;
            m.notify(st.parking.as_ref());
        }
    }

    /// Member `id`, just taken over from another worker, reads the room from now on, but not
    /// the lines from the bus until [`Room::cut_answered`]: until the hub's answer, those are
    /// ordered before the cut and the old worker sends them. Its own lines from this worker are
    /// ordered after the cut as long as they are published after the hand-over was asked.
    pub(super) fn adopt(&self, id: u64) {
        let mut st = self.state();
        let head = st.log.head;
        if let Some(m) = st.members.get_mut(&id) {
            m.cursor = Some(head);
            m.awaiting_cut = true;
            st.awaiting_cut.push(id);
        }
    }

    /// The hub answered the hand-over of member `id`: from here on it gets every line.
    pub(super) fn cut_answered(&self, id: u64) {
        let mut st = self.state();
        st.awaiting_cut.retain(|&a| a != id);
        if let Some(m) = st.members.get_mut(&id) {
            m.awaiting_cut = false;
        }
    }

    /// Appends `lines` for every joined member but `from` (its own lines). Never waits: a
    /// member that is too far behind is dropped instead. Called by the member tasks of this
    /// worker and by the bus's receive task (the other workers' lines).
    pub(super) fn append(&self, from: Option<u64>, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut guard = self.state();
        let st = &mut *guard;
        let (start, new_chunk) = st.log.append(lines);
        let head = st.log.head;
        let len = lines.len() as u64;
        if let Some(id) = from {
            if let Some(m) = st.members.get_mut(&id) {
                let q = m.queues();
                q.own.push_back((start, head));
                q.own_bytes += len;
            }
            match st.local.back_mut() {
                Some(run) if run.1 == start => run.1 = head,
                _ => st.local.push_back((start, head, st.published)),
            }
            st.published += len;
        } else {
            // Lines from the bus that a member just taken over must not get twice.
            for id in &st.awaiting_cut {
                if let Some(m) = st.members.get_mut(id)
                    && m.awaiting_cut
                    && m.cursor.is_some()
                {
                    let q = m.queues();
                    q.own.push_back((start, head));
                    q.own_bytes += len;
                }
            }
        }
        if new_chunk {
            let head = st.log.head;
            let mut needed = head;
            for m in st.members.values_mut() {
                let Some(c) = m.reading() else { continue };
                // Only what is for this member counts: its own lines ahead of its writer (a
                // burst it sent, read faster than its writer runs) are skipped, not sent.
                if (head - c).saturating_sub(m.own_bytes()) > self.backlog {
                    m.kick(KickReason::Overflow, st.parking.as_ref());
                } else {
                    needed = needed.min(c);
                }
            }
            st.log.trim(needed);
            let base = st.log.base;
            while st.local.front().is_some_and(|r| r.1 <= base) {
                st.local.pop_front();
            }
        }
        // Taken and put back empty, so the list keeps its allocation from burst to burst.
        let mut waiting = std::mem::take(&mut st.waiting);
        for id in waiting.drain(..) {
            if let Some(m) = st.members.get_mut(&id) {
                m.wake(st.parking.as_ref());
            }
        }
        st.waiting = waiting;
    }

    /// Queues a line for member `id` alone, after what the room said so far.
    pub(super) fn reply(&self, id: u64, line: Bytes) {
        let mut guard = self.state();
        let st = &mut *guard;
        let head = st.log.head;
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        if m.closed {
            return;
        }
        if m.queues
            .as_ref()
            .is_some_and(|q| q.replies.len() >= MEMBER_REPLIES)
        {
            m.kick(KickReason::Overflow, st.parking.as_ref());
            return;
        }
        m.queues().replies.push_back((head, line));
        m.wake(st.parking.as_ref());
    }

    /// Member `id` starts reading the room from now on.
    pub(super) fn join(&self, id: u64) {
        let mut st = self.state();
        let head = st.log.head;
        if let Some(m) = st.members.get_mut(&id) {
            m.cursor = Some(head);
        }
    }

    /// Member `id` reads nothing the room says from now on.
    pub(super) fn stop_reading(&self, id: u64) {
        let mut st = self.state();
        let head = st.log.head;
        if let Some(m) = st.members.get_mut(&id)
            && m.until == NEVER
        {
            m.until = head;
        }
    }

    /// Member `id` gets no more replies: its writer finishes what is due.
    pub(super) fn close(&self, id: u64) {
        let mut guard = self.state();
        let st = &mut *guard;
        if let Some(m) = st.members.get_mut(&id) {
            m.closed = true;
            m.notify(st.parking.as_ref());
        }
    }

    pub(super) fn kick(&self, id: u64, reason: KickReason) {
        let mut guard = self.state();
        let st = &mut *guard;
        if let Some(m) = st.members.get_mut(&id) {
            m.kick(reason, st.parking.as_ref());
        }
    }
}

/// A connection's place in the room, given up when dropped (however its task ends: returned,
/// panicked, or dropped by a worker that stops; a member left behind would hold the log until
/// the backlog dropped it).
pub(super) struct Seat {
    room: Arc<Room>,
    id: u64,
}

impl Seat {
    /// The member's id in this worker.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// The room it sits in.
    pub(super) fn room(&self) -> &Room {
        &self.room
    }
}

impl Seat {
    /// The member's connection parked: it stays in the room (its entry keeps its place in the
    /// log and the waker that resumes it) until [`Room::reseat`] gives its seat back.
    pub(super) fn park(self) {
        let seat = std::mem::ManuallyDrop::new(self);
        // SAFETY: `seat` is never used or dropped again: its `room` is read out once, and
        // dropped here, so the count of the room's `Arc` stays right.
        drop(unsafe { std::ptr::read(&seat.room) });
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut st = self.room.state();
        st.members.remove(&self.id);
        if !st.awaiting_cut.is_empty() {
            let id = self.id;
            st.awaiting_cut.retain(|&a| a != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::chat::log::CHUNK;

    /// A room whose members `ids` have joined.
    fn room_of(ids: &[u64]) -> Room {
        let room = Room::new(crate::config::DEFAULT_MAX_LINE);
        for &id in ids {
            room.state().members.insert(id, Member::new());
            room.join(id);
        }
        room
    }

    fn gathered(m: &mut Member, log: &Log) -> String {
        let mut buf = BytesMut::new();
        m.gather(log, &mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn a_member_gets_the_log_from_where_it_joined_without_its_own_lines() {
        let room = Room::new(crate::config::DEFAULT_MAX_LINE);
        for id in [1, 2] {
            room.state().members.insert(id, Member::new());
        }
        room.append(None, b"before\r\n");
        room.join(1);
        room.reply(1, Bytes::from_static(b"* joined\r\n"));
        room.append(Some(2), b"<two> hi\r\n");
        room.append(Some(1), b"<one> mine\r\n");
        room.reply(1, Bytes::from_static(b"* reply\r\n"));
        room.append(None, b"<far> x\r\n");
        let mut st = room.state();
        let st = &mut *st;
        let m = st.members.get_mut(&1).unwrap();
        assert_eq!(
            gathered(m, &st.log),
            "* joined\r\n<two> hi\r\n* reply\r\n<far> x\r\n"
        );
        assert_eq!(gathered(m, &st.log), "");
        // Member 2 never joined: the room's lines are not for it.
        let m = st.members.get_mut(&2).unwrap();
        assert_eq!(gathered(m, &st.log), "");
    }

    /// Everything due for member `id` now, and how its writer is to finish.
    fn drain(room: &Room, id: u64) -> (String, Option<Closed>) {
        let mut out = BytesMut::new();
        loop {
            let mut buf = BytesMut::new();
            let closed = match room.gather(id, &mut buf, Waker::noop()) {
                Due::Bytes => {
                    out.extend_from_slice(&buf);
                    continue;
                }
                Due::Nothing => None,
                Due::Done(c) => Some(c),
                other => panic!("{other:?}"),
            };
            return (String::from_utf8(out.to_vec()).unwrap(), closed);
        }
    }

    #[test]
    fn a_cut_gives_the_old_worker_s_member_what_the_hub_ordered_before_it() {
        // Member 1 is handed over; member 2 stays and talks.
        let room = room_of(&[1, 2]);
        room.append(None, b"hub 1\r\n");
        room.append(Some(2), b"<two> a\r\n"); // published bytes 0..9: the hub had them
        room.append(Some(1), b"<one> mine\r\n"); // 9..23: not yet
        room.append(Some(2), b"<two> b\r\n"); // 23..32: not yet
        room.append(None, b"hub 2\r\n");
        assert!(room.cut(1, 9));
        room.append(None, b"hub 3\r\n");
        room.append(Some(2), b"<two> c\r\n");
        // The new worker delivers `<two> b` (after the cut in the hub's order) and the rest.
        assert_eq!(
            drain(&room, 1),
            (
                "hub 1\r\n<two> a\r\nhub 2\r\n".to_string(),
                Some(Closed::HandedOff)
            )
        );
        assert_eq!(room.state().members[&1].own_bytes(), 0);
        assert!(!room.cut(9, 0));
    }

    #[test]
    fn a_member_taken_over_skips_the_bus_until_the_hub_answers() {
        let room = room_of(&[2]);
        room.state().members.insert(5, Member::new());
        room.append(None, b"before\r\n");
        room.adopt(5);
        room.append(None, b"<far> old\r\n"); // ordered before the cut: the old worker's
        room.append(Some(2), b"<two> here\r\n"); // published after the hand-over was asked
        room.cut_answered(5);
        room.append(None, b"<far> new\r\n");
        assert_eq!(
            drain(&room, 5),
            ("<two> here\r\n<far> new\r\n".to_string(), None)
        );
    }

    /// Issue 13: a member that is up to date costs its entry alone, no queue, no buffer.
    #[test]
    fn a_member_that_is_up_to_date_holds_no_queue() {
        let room = room_of(&[1, 2]);
        room.append(Some(1), b"<one> hi\r\n");
        room.reply(1, Bytes::from_static(b"* reply\r\n"));
        room.append(None, b"<far> x\r\n");
        assert!(room.state().members[&1].queues.is_some());
        assert_eq!(
            drain(&room, 1),
            ("* reply\r\n<far> x\r\n".to_string(), None)
        );
        assert_eq!(
            drain(&room, 2),
            ("<one> hi\r\n<far> x\r\n".to_string(), None)
        );
        let st = room.state();
        assert!(st.members.values().all(|m| m.queues.is_none()));
        // Where its writer is, its waker or parking key, its flags: 64 bytes on rustc 1.95
        // (128 with two queues inline, plus a `Notify` and a cancellation token of its own).
        assert!(std::mem::size_of::<Member>() <= 64);
    }

    /// A member whose writer holds bytes its socket has not taken yet is past them in the log,
    /// but not up to date: parking it would drop them (`tests/chat.rs`
    /// `a_member_that_stops_reading_is_dropped_and_the_others_get_everything` lost the end of a
    /// line that way now and then, on a loaded machine).
    #[test]
    fn a_member_with_unsent_bytes_is_not_up_to_date() {
        let room = room_of(&[1]);
        assert!(room.up_to_date(1));
        room.set_unsent(1, true);
        assert!(!room.up_to_date(1));
        room.set_unsent(1, false);
        assert!(room.up_to_date(1));
    }

    #[test]
    fn a_member_that_stopped_reading_gets_its_last_word_last() {
        let room = Room::new(crate::config::DEFAULT_MAX_LINE);
        room.state().members.insert(1, Member::new());
        room.join(1);
        room.append(None, b"a\r\n");
        room.stop_reading(1);
        room.reply(1, Bytes::from_static(b"* bye\r\n"));
        room.append(None, b"b\r\n");
        let mut st = room.state();
        let st = &mut *st;
        let m = st.members.get_mut(&1).unwrap();
        assert_eq!(gathered(m, &st.log), "a\r\n* bye\r\n");
    }

    #[test]
    fn the_log_spans_chunks_and_drops_what_everyone_has_read() {
        let room = room_of(&[1, 2]);
        let line = format!("{}\r\n", "x".repeat(998));
        for _ in 0..200 {
            room.append(None, line.as_bytes());
        }
        let mut st = room.state();
        let st = &mut *st;
        assert!(st.log.chunks.len() > 3);
        let m = st.members.get_mut(&1).unwrap();
        let mut all = String::new();
        loop {
            let got = gathered(m, &st.log);
            if got.is_empty() {
                break;
            }
            assert!(got.len() <= BATCH_BYTES);
            all.push_str(&got);
        }
        assert_eq!(all, line.repeat(200));
        // Member 2 has read nothing: everything is kept for it.
        st.log.trim(0);
        assert_eq!(st.log.base, 0);
        st.members.get_mut(&2).unwrap().cursor = Some(st.log.head);
        st.log.trim(st.log.head);
        assert_eq!(st.log.chunks.len(), 1, "the newest chunk stays");
    }

    #[test]
    fn a_member_s_own_lines_are_not_its_backlog() {
        let room = room_of(&[1, 2]);
        let line = format!("<two> {}\r\n", "z".repeat(1000));
        // Member 2 sends twice the backlog before its writer runs; member 1 keeps up.
        let mut sent = 0;
        while sent <= 2 * MEMBER_BACKLOG {
            room.append(Some(2), line.as_bytes());
            sent += line.len() as u64;
            let mut st = room.state();
            let st = &mut *st;
            let m = st.members.get_mut(&1).unwrap();
            while !gathered(m, &st.log).is_empty() {}
        }
        room.append(None, b"for two\r\n");
        let mut st = room.state();
        let st = &mut *st;
        let two = st.members.get_mut(&2).unwrap();
        assert!(two.kicked.is_none(), "dropped for its own lines");
        assert_eq!(gathered(two, &st.log), "for two\r\n");
        assert_eq!(two.own_bytes(), 0);
    }

    #[test]
    fn a_member_too_far_behind_is_kicked_and_no_longer_holds_the_log() {
        let room = room_of(&[1, 2]);
        let line = format!("{}\r\n", "y".repeat(1022));
        let mut sent = 0u64;
        while sent <= MEMBER_BACKLOG + 2 * CHUNK as u64 {
            room.append(None, line.as_bytes());
            sent += line.len() as u64;
            // Member 1 keeps up.
            let mut st = room.state();
            let st = &mut *st;
            let m = st.members.get_mut(&1).unwrap();
            while !gathered(m, &st.log).is_empty() {}
        }
        let st = room.state();
        let slow = &st.members[&2];
        assert_eq!(slow.kicked, Some(KickReason::Overflow));
        assert!(st.members[&1].kicked.is_none());
        assert!(
            st.log.head - st.log.base <= 2 * CHUNK as u64,
            "the log was trimmed"
        );
    }
}
