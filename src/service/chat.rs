//! `chat`: a line-based room usable from telnet and nc, one room for the whole server whatever
//! worker each member lands on.
//!
//! The protocol, as a member sees it (every line we send ends in CRLF; lines we read end in LF
//! or CRLF):
//!
//! ```text
//! * welcome to oxicorn chat; what is your name?
//! alice                                   ← 1–32 characters, no whitespace or control
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
//! Names are unique case-insensitively across all workers: a member reserves
//! `chat:<lowercased name>` on the [`Bus`]. Lines go to the members of this worker directly,
//! and through the bus to the other workers, which hand them to their own members. Both paths
//! keep each sender's order.
//!
//! Delivery inside a worker goes through the room's *log* ([`Log`]): every line for the
//! members of this worker is stored once, in order, and each member's writer copies from its
//! own position in it straight into one write to its socket. A line costs the same whether 3 or
//! 3,000 members get it; what a member's write costs is one copy of what it has not yet seen.
//! Lines are appended without ever waiting for anyone, so a member that stops reading never
//! slows the sender or anybody else; a member more than [`MEMBER_BACKLOG`] bytes behind (more
//! with a very large `--max-line`) is disconnected with a final notice (if the socket takes it)
//! and the others see it leave.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::lines::{Line, LineReader, TIMING_MARK_REPLY};
use super::{ConnContext, idle};
use crate::bus::{Bus, BusError};
use crate::net::Stream;

/// The bus topic chat lines travel on. A payload on it is one or more whole lines (the bus may
/// hand several publications over as one), appended to the room's log as they are.
pub const TOPIC: &str = "chat";

/// Prefix of the reserved names on the bus.
const KEY_PREFIX: &str = "chat:";

/// The longest name, in characters.
pub const MAX_NAME: usize = 32;

/// How far (in bytes of room traffic) a member may fall behind the room before it counts as not
/// reading and is disconnected; on top of what its socket buffers hold. This is also about the
/// most the log of one worker holds, however many members are slow: the log is shared.
pub const MEMBER_BACKLOG: u64 = 1024 * 1024;

/// Replies to one member alone (answers to its commands) that may wait for it; a member that
/// sends `/who` again and again without reading is disconnected past this.
const MEMBER_REPLIES: usize = 256;

/// How long the final notice to a dropped member may take to write: it is sent only if its
/// socket has room ("if it can be written").
const NOTICE_TIMEOUT: Duration = Duration::from_millis(100);

/// After a member leaves, how long its writer may take to flush what is queued for it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes gathered for one write to a member's socket (then the writer comes back for more).
const BATCH_BYTES: usize = 64 * 1024;

/// A writer that goes idle with a larger buffer than this gives it back.
const IDLE_BUFFER: usize = 4096;

/// The log's unit of allocation: lines are appended to the newest chunk while they fit.
const CHUNK: usize = 64 * 1024;

/// Why a member was disconnected by the server.
const KICK_OVERFLOW: u8 = 1;
const KICK_LOST: u8 = 2;

/// Asks a member's writer to stop, and says why.
#[derive(Default)]
struct Kick {
    /// Cancelled by whoever drops the member (the log when it is too far behind, the bus on a
    /// lost name).
    token: CancellationToken,
    /// [`KICK_OVERFLOW`] or [`KICK_LOST`]; set before the token is cancelled.
    reason: AtomicU8,
}

impl Kick {
    /// Whether the member was dropped (the log then keeps nothing for it).
    fn is_kicked(&self) -> bool {
        self.reason.load(Ordering::SeqCst) != 0
    }

    fn kick(&self, reason: u8) {
        let _ = self
            .reason
            .compare_exchange(0, reason, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// The room's traffic in this worker, stored once in delivery order: lines from this worker's
/// members and from the other workers (through the bus). Positions are byte offsets from the
/// worker's start, so they only grow; each member's writer keeps its own.
///
/// Why not a queue per member (the first design): a line for 1,000 members was 1,000 queue
/// pushes, each a reference count and a lock, and the benchmark's profile was dominated by
/// them. Here a line is one copy into the newest chunk, and a member's writer copies a run of
/// lines at once.
#[derive(Default)]
struct Log {
    /// Whole lines (a line never straddles two chunks); `chunks[0]` starts at `base`.
    chunks: VecDeque<Vec<u8>>,
    /// Offset of the first byte still kept.
    base: u64,
    /// Offset just past the last byte appended.
    head: u64,
    /// A chunk every reader has passed, kept for the next one instead of a new allocation.
    spare: Option<Vec<u8>>,
}

impl Log {
    /// Appends `bytes` (whole lines) and returns where they start. True in the second place
    /// when a new chunk was started: the caller then trims what nobody needs any more.
    fn append(&mut self, bytes: &[u8]) -> (u64, bool) {
        let start = self.head;
        self.head += bytes.len() as u64;
        if let Some(last) = self.chunks.back_mut()
            && last.capacity() - last.len() >= bytes.len()
        {
            last.extend_from_slice(bytes);
            return (start, false);
        }
        let mut chunk = match self.spare.take() {
            Some(c) if c.capacity() >= bytes.len() => c,
            _ => Vec::with_capacity(CHUNK.max(bytes.len())),
        };
        chunk.extend_from_slice(bytes);
        if self.chunks.is_empty() {
            self.base = start;
        }
        self.chunks.push_back(chunk);
        (start, true)
    }

    /// Appends the bytes from `from` to `to` to `buf`.
    fn copy(&self, mut from: u64, to: u64, buf: &mut BytesMut) {
        debug_assert!(from >= self.base, "reading what the log dropped");
        from = from.max(self.base);
        let mut at = self.base;
        for chunk in &self.chunks {
            let end = at + chunk.len() as u64;
            if from < end {
                let lo = (from - at) as usize;
                let hi = (to.min(end) - at) as usize;
                buf.extend_from_slice(&chunk[lo..hi]);
                from = to.min(end);
                if from == to {
                    return;
                }
            }
            at = end;
        }
        debug_assert!(from == to, "read past the log's head");
    }

    /// Drops the chunks wholly before `needed` (but never the newest, still being filled).
    fn trim(&mut self, needed: u64) {
        while self.chunks.len() > 1 {
            let first = self.chunks[0].len() as u64;
            if self.base + first > needed {
                break;
            }
            let mut chunk = self.chunks.pop_front().unwrap_or_default();
            self.base += first;
            if chunk.capacity() == CHUNK {
                chunk.clear();
                self.spare = Some(chunk);
            }
        }
    }
}

/// One connection of this worker, as the room sees it.
struct Member {
    /// Where its writer is in the log; `None` until it joins (before that it gets its replies
    /// only).
    cursor: Option<u64>,
    /// Set when it leaves: the log is sent up to here, and no further.
    until: Option<u64>,
    /// Its own lines in the log (start, end), which its writer skips.
    own: VecDeque<(u64, u64)>,
    /// Their bytes: not for this member, so not part of how far behind it is.
    own_bytes: u64,
    /// Lines for it alone, each due once the log is sent up to the offset beside it, so a
    /// reply lands after what the room said before it.
    replies: VecDeque<(u64, Bytes)>,
    /// Its writer is waiting on `ready` (and is in the room's `waiting` list).
    waiting: bool,
    /// No more replies: the writer sends what is due, then shuts the socket's write side.
    closed: bool,
    kick: Arc<Kick>,
    /// Wakes its writer: something to send, or closed.
    ready: Arc<Notify>,
}

impl Member {
    /// A connection that has not joined yet: it gets its replies only.
    fn new(kick: Arc<Kick>, ready: Arc<Notify>) -> Member {
        Member {
            cursor: None,
            until: None,
            own: VecDeque::new(),
            own_bytes: 0,
            replies: VecDeque::new(),
            waiting: false,
            closed: false,
            kick,
            ready,
        }
    }

    /// Whether the log must keep the bytes at its cursor.
    fn reading(&self) -> Option<u64> {
        let c = self.cursor?;
        (!self.kick.is_kicked() && self.until.is_none_or(|u| c < u)).then_some(c)
    }

    /// Appends what is due for this member to `buf` (about [`BATCH_BYTES`] at most): the log
    /// from its cursor, minus its own lines, with its replies in their places.
    fn gather(&mut self, log: &Log, buf: &mut BytesMut) {
        if self.kick.is_kicked() {
            // Its writer is stopping, and the log no longer keeps its place.
            return;
        }
        while buf.len() < BATCH_BYTES {
            let end = match self.cursor {
                Some(c) => self.until.unwrap_or(log.head).min(log.head).max(c),
                None => 0,
            };
            if let Some(&(at, _)) = self.replies.front()
                && self.cursor.is_none_or(|c| c >= at || c >= end)
            {
                if let Some((_, reply)) = self.replies.pop_front() {
                    buf.extend_from_slice(&reply);
                }
                continue;
            }
            let Some(c) = self.cursor else {
                return;
            };
            let mut stop = end;
            if let Some(&(at, _)) = self.replies.front() {
                stop = stop.min(at);
            }
            if let Some(&(s, e)) = self.own.front() {
                if s <= c {
                    self.cursor = Some(c.max(e));
                    self.own.pop_front();
                    self.own_bytes -= e - s;
                    continue;
                }
                stop = stop.min(s);
            }
            if c >= stop {
                return;
            }
            let to = stop.min(c + (BATCH_BYTES - buf.len()) as u64);
            log.copy(c, to, buf);
            self.cursor = Some(to);
        }
    }

    fn wake(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.ready.notify_one();
        }
    }
}

/// This worker's room: the log and every connection.
#[derive(Default)]
struct RoomState {
    log: Log,
    members: HashMap<u64, Member>,
    /// Members whose writers wait for the log to grow.
    waiting: Vec<u64>,
}

/// Behind a `std::sync::Mutex`: held for a few copies, never across an `.await`, and the
/// worker's runtime has one thread (mini-redis `db.rs` makes the same choice).
struct Room {
    state: Mutex<RoomState>,
    /// How far behind a member may be: [`MEMBER_BACKLOG`], or more when `--max-line` is so
    /// large that a few lines would exceed it (a member must always be able to take a line).
    backlog: u64,
}

impl Room {
    fn new(max_line: usize) -> Room {
        Room {
            state: Mutex::default(),
            backlog: MEMBER_BACKLOG.max(16 * max_line as u64),
        }
    }

    fn state(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `lines` for every joined member but `from` (its own lines). Never waits: a
    /// member that is too far behind is dropped instead. Called by the member tasks of this
    /// worker and by the bus's receive task (the other workers' lines).
    fn append(&self, from: Option<u64>, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut guard = self.state();
        let st = &mut *guard;
        let (start, new_chunk) = st.log.append(lines);
        if let Some(m) = from.and_then(|id| st.members.get_mut(&id)) {
            m.own.push_back((start, st.log.head));
            m.own_bytes += lines.len() as u64;
        }
        if new_chunk {
            let head = st.log.head;
            let mut needed = head;
            for m in st.members.values_mut() {
                let Some(c) = m.reading() else { continue };
                // Only what is for this member counts: its own lines ahead of its writer (a
                // burst it sent, read faster than its writer runs) are skipped, not sent.
                if (head - c).saturating_sub(m.own_bytes) > self.backlog {
                    m.kick.kick(KICK_OVERFLOW);
                } else {
                    needed = needed.min(c);
                }
            }
            st.log.trim(needed);
        }
        // Taken and put back empty, so the list keeps its allocation from burst to burst.
        let mut waiting = std::mem::take(&mut st.waiting);
        for id in waiting.drain(..) {
            if let Some(m) = st.members.get_mut(&id) {
                m.wake();
            }
        }
        st.waiting = waiting;
    }

    /// Queues a line for member `id` alone, after what the room said so far.
    fn reply(&self, id: u64, line: Bytes) {
        let mut guard = self.state();
        let st = &mut *guard;
        let head = st.log.head;
        let Some(m) = st.members.get_mut(&id) else {
            return;
        };
        if m.closed {
            return;
        }
        if m.replies.len() >= MEMBER_REPLIES {
            m.kick.kick(KICK_OVERFLOW);
            return;
        }
        m.replies.push_back((head, line));
        m.wake();
    }

    /// Member `id` starts reading the room from now on.
    fn join(&self, id: u64) {
        let mut st = self.state();
        let head = st.log.head;
        if let Some(m) = st.members.get_mut(&id) {
            m.cursor = Some(head);
        }
    }

    /// Member `id` reads nothing the room says from now on.
    fn stop_reading(&self, id: u64) {
        let mut st = self.state();
        let head = st.log.head;
        if let Some(m) = st.members.get_mut(&id)
            && m.until.is_none()
        {
            m.until = Some(head);
        }
    }

    /// Member `id` gets no more replies: its writer finishes what is due.
    fn close(&self, id: u64) {
        if let Some(m) = self.state().members.get_mut(&id) {
            m.closed = true;
            m.ready.notify_one();
        }
    }

    fn kick(&self, id: u64, reason: u8) {
        if let Some(m) = self.state().members.get_mut(&id) {
            m.kick.kick(reason);
        }
    }
}

/// A connection's place in the room, given up when dropped.
struct Seat(Arc<Room>, u64);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.state().members.remove(&self.1);
    }
}

/// The chat service of one worker.
pub struct Chat {
    bus: Bus,
    room: Arc<Room>,
    max_line: usize,
    /// Member ids, unique in this worker (the bus tells workers apart).
    next_id: AtomicU64,
}

impl fmt::Debug for Chat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chat")
            .field("max_line", &self.max_line)
            .finish_non_exhaustive()
    }
}

/// A member that has a name.
struct Joined {
    name: String,
    key: String,
}

impl Chat {
    /// The room of one worker, subscribed to the other workers' lines on `bus`.
    pub fn new(bus: Bus, max_line: usize) -> Chat {
        let room = Arc::new(Room::new(max_line));
        let r = Arc::clone(&room);
        bus.subscribe(TOPIC, Arc::new(move |lines| r.append(None, &lines)));
        let r = Arc::clone(&room);
        bus.on_lost(Arc::new(move |holder| r.kick(holder, KICK_LOST)));
        Chat {
            bus,
            room,
            max_line,
            next_id: AtomicU64::new(1),
        }
    }

    /// Serves one member from its first byte to its leave notice.
    ///
    /// # Errors
    /// Read errors; they end this member only (the others see it leave).
    pub async fn serve(&self, stream: Stream, ctx: &ConnContext) -> io::Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %ctx.peer, member = id, "chat connection");
        let (rd, wr) = tokio::io::split(stream);
        let kick = Arc::new(Kick::default());
        let ready = Arc::new(Notify::new());
        self.room
            .state()
            .members
            .insert(id, Member::new(Arc::clone(&kick), Arc::clone(&ready)));
        // Leaves the room however this task ends: returned, panicked, or dropped by a worker
        // that stops (a member left behind would hold the log until the backlog dropped it).
        let _seat = Seat(Arc::clone(&self.room), id);
        let writer = write_loop(wr, Arc::clone(&self.room), id, kick.clone(), ready);
        tokio::pin!(writer);

        let mut joined = None;
        let mut writer_done = false;
        let result = {
            let session = self.session(id, rd, ctx, &mut joined);
            tokio::select! {
                // The writer first, every time this task runs. Both share the task's budget
                // (tokio's cooperative scheduling): polled in random order, a session with
                // megabytes of input queued could take it several polls in a row while the
                // writer, which also lets the log drop the member's own lines, waited.
                biased;
                () = &mut writer => {
                    writer_done = true;
                    Ok(())
                }
                r = session => r,
            }
        };
        if let Some(j) = joined {
            self.leave(id, j, kick.reason.load(Ordering::SeqCst)).await;
        }
        self.room.close(id);
        if !writer_done {
            // Let the writer flush the member's last lines (`* bye`), but not forever.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, writer).await;
        }
        result
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

    /// Reads the member's lines until it quits, disconnects or the worker stops.
    async fn session(
        &self,
        id: u64,
        rd: tokio::io::ReadHalf<Stream>,
        ctx: &ConnContext,
        joined: &mut Option<Joined>,
    ) -> io::Result<()> {
        self.reply(id, "* welcome to oxicorn chat; what is your name?\r\n");
        // telnet is one of the two clients chat is for: its Ctrl-C must not become garbage
        // in the room, nor silence the member's own screen (see `Line::TimingMark`).
        let mut lines = LineReader::telnet(rd, self.max_line);
        loop {
            let line = tokio::select! {
                l = idle(ctx.idle_timeout, lines.next()) => l?,
                // A graceful stop or a reload retires this worker: a chat connection never
                // finishes by itself, so end it now (the others see a leave notice) rather
                // than hold the worker until the graceful timeout cuts it.
                () = ctx.stop.cancelled() => {
                    self.last_word(id, "* the server is restarting or stopping; please reconnect\r\n",
                    );
                    return Ok(());
                }
            };
            let bytes = match line {
                None => return Ok(()),
                Some(Line::TooLong) => {
                    let msg = format!(
                        "* line too long (more than {} bytes): discarded\r\n",
                        self.max_line
                    );
                    self.reply(id, msg);
                    continue;
                }
                Some(Line::TimingMark) => {
                    self.reply(id, Bytes::from_static(TIMING_MARK_REPLY));
                    continue;
                }
                Some(Line::Text(bytes)) => bytes,
            };
            match joined {
                None => {
                    if let Some(j) = self.choose_name(id, &bytes).await {
                        tracing::debug!(peer = %ctx.peer, member = id, name = %j.name, "chat member joined");
                        let notice = Bytes::from(format!("* {} joined\r\n", j.name));
                        let welcome = format!(
                            "* you joined as {}; /who lists the members, /quit leaves\r\n",
                            j.name
                        );
                        // Recorded before the next await: if this task is dropped there, the
                        // caller still sees a joined member to clean up.
                        *joined = Some(j);
                        // The others are told first, and the bus has fanned the notice out
                        // before this member learns it joined: whoever joins after that is
                        // not told about this member twice (by the notice and by being late).
                        // If the bus is away the member joins anyway; the notice follows.
                        self.broadcast(id, notice).await;
                        let _ = self.bus.sync().await;
                        self.reply(id, welcome);
                    }
                }
                Some(j) => {
                    if !self.said(id, j, &bytes).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The first lines: a name, until one is valid and free.
    async fn choose_name(&self, id: u64, line: &[u8]) -> Option<Joined> {
        let name = match std::str::from_utf8(line) {
            Ok(s) => s.trim(),
            Err(_) => {
                self.reply(id, "* a name must be valid UTF-8; try again\r\n");
                return None;
            }
        };
        if let Err(why) = check_name(name) {
            self.reply(id, format!("* invalid name: {why}; try again\r\n"));
            return None;
        }
        let key = format!("{KEY_PREFIX}{}", name.to_lowercase());
        // If this worker dies, the hub tells the others this member left.
        let will = (TOPIC.to_string(), Bytes::from(format!("* {name} left\r\n")));
        let value = Bytes::copy_from_slice(name.as_bytes());
        match self.bus.reserve(&key, id, value, Some(will)).await {
            Ok(true) => {}
            Ok(false) => {
                self.reply(id, format!("* the name {name} is taken; try another\r\n"));
                return None;
            }
            Err(BusError::Unavailable) => {
                self.reply(
                    id,
                    "* names cannot be checked right now; try again in a moment\r\n",
                );
                return None;
            }
        }
        self.room.join(id);
        Some(Joined {
            name: name.to_string(),
            key,
        })
    }

    /// A line from a member: a command or a message. False when the member quits.
    async fn said(&self, id: u64, j: &Joined, line: &[u8]) -> bool {
        if line.first() == Some(&b'/') {
            let command = String::from_utf8_lossy(line);
            match command.trim().to_ascii_lowercase().as_str() {
                "/quit" => {
                    self.last_word(id, "* bye\r\n");
                    return false;
                }
                "/who" => {
                    let reply = match self.bus.list(KEY_PREFIX).await {
                        Ok(names) => {
                            let mut names: Vec<String> = names
                                .iter()
                                .map(|n| String::from_utf8_lossy(n).into_owned())
                                .collect();
                            names.sort_by_key(|n| n.to_lowercase());
                            format!("* members ({}): {}\r\n", names.len(), names.join(", "))
                        }
                        Err(BusError::Unavailable) => {
                            "* the member list is unavailable right now; try again\r\n".into()
                        }
                    };
                    self.reply(id, reply);
                }
                _ => {
                    let shown = clean(line);
                    self.reply(
                        id,
                        format!("* unknown command {shown}: try /who or /quit\r\n"),
                    );
                }
            }
            return true;
        }
        let text = clean(line);
        if text.is_empty() {
            return true;
        }
        let mut out = BytesMut::with_capacity(j.name.len() + text.len() + 5);
        out.extend_from_slice(b"<");
        out.extend_from_slice(j.name.as_bytes());
        out.extend_from_slice(b"> ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.broadcast(id, out.freeze()).await;
        true
    }

    /// The member is gone: the others are told, then the name is freed. A member whose name
    /// was lost (see [`KICK_LOST`]) no longer owns it: nothing to announce or free.
    async fn leave(&self, id: u64, j: Joined, reason: u8) {
        self.room.stop_reading(id);
        if reason == KICK_LOST {
            return;
        }
        tracing::debug!(member = id, name = %j.name, overflow = reason == KICK_OVERFLOW, "chat member left");
        if reason == KICK_OVERFLOW {
            // The operator's business: a client too slow for the room (or a stuck one).
            tracing::info!(
                "chat member {} disconnected: more than {} bytes behind the room",
                j.name,
                self.room.backlog
            );
        }
        self.broadcast(id, Bytes::from(format!("* {} left\r\n", j.name)))
            .await;
        self.bus.release(&j.key, id);
    }
}

/// Why a name is refused, if it is.
///
/// # Errors
/// A reason for the member.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let n = name.chars().count();
    if n == 0 {
        return Err("it is empty");
    }
    if n > MAX_NAME {
        return Err("use at most 32 characters");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("no spaces or control characters");
    }
    Ok(())
}

/// What others see of a line: invalid UTF-8 as U+FFFD, control characters other than tab
/// removed (a member cannot move anybody's cursor or ring their bell).
pub fn clean(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .filter(|c| *c == '\t' || !c.is_control())
        .collect()
}

/// Sends member `id` what is due for it ([`Member::gather`]), one batch per write, until it is
/// closed and everything due is sent (then the socket's write side is shut) or it is kicked (a
/// final notice, if the socket takes it).
async fn write_loop(
    mut wr: WriteHalf<Stream>,
    room: Arc<Room>,
    id: u64,
    kick: Arc<Kick>,
    ready: Arc<Notify>,
) {
    // Grows to a batch under load; given back when the member goes quiet (below), so a
    // thousand idle members do not each keep a batch-sized buffer.
    let mut buf = BytesMut::new();
    // Whether the last byte written ended a line: the final notice must start on its own.
    let mut at_line_start = true;
    loop {
        buf.clear();
        let closed = {
            let mut guard = room.state();
            let st = &mut *guard;
            let Some(m) = st.members.get_mut(&id) else {
                return;
            };
            m.gather(&st.log, &mut buf);
            if buf.is_empty() && !m.closed && !m.waiting {
                m.waiting = true;
                st.waiting.push(id);
            }
            m.closed
        };
        if buf.is_empty() {
            if closed {
                let _ = wr.shutdown().await;
                return;
            }
            if buf.capacity() > IDLE_BUFFER {
                buf = BytesMut::new();
            }
            tokio::select! {
                biased;
                () = kick.token.cancelled() => break,
                () = ready.notified() => continue,
            }
        }
        let written = tokio::select! {
            biased;
            () = kick.token.cancelled() => {
                // The batch may have gone out in part: assume it did not end a line.
                at_line_start = false;
                break;
            }
            r = wr.write_all(&buf) => r,
        };
        if written.is_err() {
            return;
        }
        at_line_start = buf.ends_with(b"\n");
    }
    let notice: &[u8] = match kick.reason.load(Ordering::SeqCst) {
        KICK_LOST => b"* your name was taken while the server recovered; please reconnect\r\n",
        _ => b"* you are not reading fast enough: disconnected\r\n",
    };
    let _ = tokio::time::timeout(NOTICE_TIMEOUT, async {
        if !at_line_start {
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(notice).await?;
        wr.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        for ok in [
            "a",
            "Alice",
            "émile",
            "x".repeat(32).as_str(),
            "名前",
            "a<b>",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "a\tb", "a\u{7}", &"x".repeat(33), "a\u{a0}b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cleaning_keeps_tabs_and_replaces_invalid_utf8() {
        assert_eq!(clean(b"a\tb"), "a\tb");
        assert_eq!(clean(b"a\x07b\x1b[2Jc\x7f"), "ab[2Jc");
        assert_eq!(clean(b"caf\xc3\xa9 \xff!"), "café \u{fffd}!");
    }

    /// A room whose members `ids` have joined.
    fn room_of(ids: &[u64]) -> Room {
        let room = Room::new(crate::config::DEFAULT_MAX_LINE);
        for &id in ids {
            room.state()
                .members
                .insert(id, Member::new(Arc::default(), Arc::default()));
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
            room.state()
                .members
                .insert(id, Member::new(Arc::default(), Arc::default()));
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

    #[test]
    fn a_member_that_stopped_reading_gets_its_last_word_last() {
        let room = Room::new(crate::config::DEFAULT_MAX_LINE);
        room.state()
            .members
            .insert(1, Member::new(Arc::default(), Arc::default()));
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
        assert!(!two.kick.is_kicked(), "dropped for its own lines");
        assert_eq!(gathered(two, &st.log), "for two\r\n");
        assert_eq!(two.own_bytes, 0);
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
        assert!(slow.kick.is_kicked() && slow.kick.token.is_cancelled());
        assert_eq!(slow.kick.reason.load(Ordering::SeqCst), KICK_OVERFLOW);
        assert!(!st.members[&1].kick.is_kicked());
        assert!(
            st.log.head - st.log.base <= 2 * CHUNK as u64,
            "the log was trimmed"
        );
    }
}
