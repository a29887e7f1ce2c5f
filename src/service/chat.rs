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
//! Each member has a bounded outgoing queue ([`MEMBER_QUEUE`] lines) drained by its own writer.
//! Lines are pushed to it without ever waiting, so a member that stops reading never slows the
//! sender or anybody else; when its queue overflows it is disconnected with a final notice (if
//! the socket takes it) and the others see it leave.

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

use super::lines::{Line, LineReader};
use super::{ConnContext, idle};
use crate::bus::{Bus, BusError};
use crate::net::Stream;

/// The bus topic chat lines travel on.
pub const TOPIC: &str = "chat";

/// Prefix of the reserved names on the bus.
const KEY_PREFIX: &str = "chat:";

/// The longest name, in characters.
pub const MAX_NAME: usize = 32;

/// Lines waiting for one member before it counts as not reading and is disconnected. With a
/// few hundred bytes a line that is well under a megabyte per member, on top of what its
/// socket buffers hold.
pub const MEMBER_QUEUE: usize = 1024;

/// How long the final notice to a dropped member may take to write: it is sent only if its
/// socket has room ("if it can be written").
const NOTICE_TIMEOUT: Duration = Duration::from_millis(100);

/// After a member leaves, how long its writer may take to flush what is queued for it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes gathered for one write to a member's socket (then more lines wait for the next
/// write). One write per line would make each delivery a system call; the benchmark's
/// throughput comes mostly from batching here.
const BATCH_BYTES: usize = 64 * 1024;

/// Why a member was disconnected by the server.
const KICK_OVERFLOW: u8 = 1;
const KICK_LOST: u8 = 2;

/// Asks a member's writer to stop, and says why.
#[derive(Default)]
struct Kick {
    /// Cancelled by whoever drops the member (the fan-out on overflow, the bus on a lost name).
    token: CancellationToken,
    /// [`KICK_OVERFLOW`] or [`KICK_LOST`]; set before the token is cancelled.
    reason: AtomicU8,
}

impl Kick {
    fn kick(&self, reason: u8) {
        let _ = self
            .reason
            .compare_exchange(0, reason, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// The queue full: the member is not reading.
struct Full;

/// A member's outgoing lines: bounded ([`MEMBER_QUEUE`]), filled without ever waiting, drained
/// by the member's writer.
///
/// Why not a `tokio::sync::mpsc` channel: every line to every member went through its
/// semaphore, list and waker, which the benchmark's profile showed as the largest cost of a
/// delivery. Here a push is an uncontended lock and a `VecDeque` push, and the writer is woken
/// only when the queue goes from empty to not empty (it drains everything it finds).
#[derive(Default)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// Wakes the writer: lines arrived in an empty queue, or the queue was closed.
    ready: Notify,
}

#[derive(Default)]
struct OutboxState {
    lines: VecDeque<Bytes>,
    /// Closed by the member's task when it is done: the writer sends what is left, then
    /// shuts the socket's write side.
    closed: bool,
}

impl Outbox {
    fn state(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a line; [`Full`] when [`MEMBER_QUEUE`] lines are already waiting.
    fn push(&self, line: Bytes) -> Result<(), Full> {
        let mut st = self.state();
        if st.closed {
            return Ok(());
        }
        if st.lines.len() >= MEMBER_QUEUE {
            return Err(Full);
        }
        let was_empty = st.lines.is_empty();
        st.lines.push_back(line);
        drop(st);
        if was_empty {
            // Stores a permit if the writer is not waiting yet, so the wake-up is not lost.
            self.ready.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }

    /// Appends waiting lines to `buf` (about [`BATCH_BYTES`] at most), waiting for one if
    /// there is none. False once the queue is closed and empty.
    async fn take(&self, buf: &mut BytesMut) -> bool {
        loop {
            {
                let mut st = self.state();
                while let Some(line) = st.lines.front() {
                    if !buf.is_empty() && buf.len() + line.len() > BATCH_BYTES {
                        break;
                    }
                    buf.extend_from_slice(line);
                    st.lines.pop_front();
                }
                if !buf.is_empty() {
                    return true;
                }
                if st.closed {
                    return false;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// A joined member of this worker, as the fan-out sees it.
struct Member {
    /// Its queue, shared with its own task (replies) and writer. The room's handle is
    /// dropped when the member leaves.
    outbox: Arc<Outbox>,
    kick: Arc<Kick>,
}

/// This worker's members.
#[derive(Default)]
struct Room {
    members: Mutex<HashMap<u64, Member>>,
}

impl Room {
    fn members(&self) -> MutexGuard<'_, HashMap<u64, Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `line` for every member but `except`; a member whose queue is full is kicked,
    /// never waited for. Called by the member tasks of this worker and by the bus's receive
    /// task (the other workers' lines).
    fn deliver(&self, except: Option<u64>, line: &Bytes) {
        for (id, m) in self.members().iter() {
            if Some(*id) == except {
                continue;
            }
            if m.outbox.push(line.clone()).is_err() {
                m.kick.kick(KICK_OVERFLOW);
            }
        }
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
        let room = Arc::new(Room::default());
        let r = Arc::clone(&room);
        bus.subscribe(TOPIC, Arc::new(move |line| r.deliver(None, &line)));
        let r = Arc::clone(&room);
        bus.on_lost(Arc::new(move |holder| {
            if let Some(m) = r.members().get(&holder) {
                m.kick.kick(KICK_LOST);
            }
        }));
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
        // The member's queue: used here for its own replies, shared with the room when it
        // joins, drained by the writer; closed below when the member is done.
        let outbox = Arc::new(Outbox::default());
        let tx = &outbox;
        let kick = Arc::new(Kick::default());
        let writer = write_loop(wr, Arc::clone(&outbox), Arc::clone(&kick));
        tokio::pin!(writer);

        let mut joined = None;
        let mut writer_done = false;
        let result = {
            let session = self.session(id, rd, tx, &kick, ctx, &mut joined);
            tokio::select! {
                r = session => r,
                () = &mut writer => {
                    writer_done = true;
                    Ok(())
                }
            }
        };
        if let Some(j) = joined {
            self.leave(id, j, kick.reason.load(Ordering::SeqCst)).await;
        }
        outbox.close();
        if !writer_done {
            // Let the writer flush the member's last lines (`* bye`), but not forever.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, writer).await;
        }
        result
    }

    /// Queues a reply to this member; a member too far behind to take it is kicked.
    fn reply(tx: &Outbox, kick: &Kick, line: impl Into<Bytes>) {
        if tx.push(line.into()).is_err() {
            kick.kick(KICK_OVERFLOW);
        }
    }

    /// Sends `line` to every other member: this worker's directly, the rest through the bus.
    async fn broadcast(&self, from: u64, line: Bytes) {
        self.room.deliver(Some(from), &line);
        self.bus.publish(TOPIC, line).await;
    }

    /// Reads the member's lines until it quits, disconnects or the worker stops.
    async fn session(
        &self,
        id: u64,
        rd: tokio::io::ReadHalf<Stream>,
        tx: &Arc<Outbox>,
        kick: &Arc<Kick>,
        ctx: &ConnContext,
        joined: &mut Option<Joined>,
    ) -> io::Result<()> {
        Self::reply(
            tx,
            kick,
            "* welcome to oxicorn chat; what is your name?\r\n",
        );
        let mut lines = LineReader::new(rd, self.max_line);
        loop {
            let line = tokio::select! {
                l = idle(ctx.idle_timeout, lines.next()) => l?,
                // A graceful stop or a reload retires this worker: a chat connection never
                // finishes by itself, so end it now (the others see a leave notice) rather
                // than hold the worker until the graceful timeout cuts it.
                () = ctx.stop.cancelled() => {
                    Self::reply(
                        tx,
                        kick,
                        "* the server is restarting or stopping; please reconnect\r\n",
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
                    Self::reply(tx, kick, msg);
                    continue;
                }
                Some(Line::Text(bytes)) => bytes,
            };
            match joined {
                None => {
                    if let Some(j) = self.choose_name(id, &bytes, tx, kick).await {
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
                        Self::reply(tx, kick, welcome);
                    }
                }
                Some(j) => {
                    if !self.said(id, j, &bytes, tx, kick).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The first lines: a name, until one is valid and free.
    async fn choose_name(
        &self,
        id: u64,
        line: &[u8],
        tx: &Arc<Outbox>,
        kick: &Arc<Kick>,
    ) -> Option<Joined> {
        let name = match std::str::from_utf8(line) {
            Ok(s) => s.trim(),
            Err(_) => {
                Self::reply(tx, kick, "* a name must be valid UTF-8; try again\r\n");
                return None;
            }
        };
        if let Err(why) = check_name(name) {
            Self::reply(tx, kick, format!("* invalid name: {why}; try again\r\n"));
            return None;
        }
        let key = format!("{KEY_PREFIX}{}", name.to_lowercase());
        // If this worker dies, the hub tells the others this member left.
        let will = (TOPIC.to_string(), Bytes::from(format!("* {name} left\r\n")));
        let value = Bytes::copy_from_slice(name.as_bytes());
        match self.bus.reserve(&key, id, value, Some(will)).await {
            Ok(true) => {}
            Ok(false) => {
                Self::reply(
                    tx,
                    kick,
                    format!("* the name {name} is taken; try another\r\n"),
                );
                return None;
            }
            Err(BusError::Unavailable) => {
                Self::reply(
                    tx,
                    kick,
                    "* names cannot be checked right now; try again in a moment\r\n",
                );
                return None;
            }
        }
        self.room.members().insert(
            id,
            Member {
                outbox: Arc::clone(tx),
                kick: Arc::clone(kick),
            },
        );
        Some(Joined {
            name: name.to_string(),
            key,
        })
    }

    /// A line from a member: a command or a message. False when the member quits.
    async fn said(
        &self,
        id: u64,
        j: &Joined,
        line: &[u8],
        tx: &Arc<Outbox>,
        kick: &Arc<Kick>,
    ) -> bool {
        if line.first() == Some(&b'/') {
            let command = String::from_utf8_lossy(line);
            match command.trim().to_ascii_lowercase().as_str() {
                "/quit" => {
                    Self::reply(tx, kick, "* bye\r\n");
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
                    Self::reply(tx, kick, reply);
                }
                _ => {
                    let shown = clean(line);
                    Self::reply(
                        tx,
                        kick,
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
        self.room.members().remove(&id);
        if reason == KICK_LOST {
            return;
        }
        tracing::debug!(member = id, name = %j.name, overflow = reason == KICK_OVERFLOW, "chat member left");
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

/// Drains a member's queue into its socket, batching what is waiting, until the queue closes
/// (the member left: the socket's write side is shut) or the member is kicked (a final notice
/// if the socket takes it).
async fn write_loop(mut wr: WriteHalf<Stream>, outbox: Arc<Outbox>, kick: Arc<Kick>) {
    let mut buf = BytesMut::new();
    let mut partial = false;
    loop {
        buf.clear();
        let more = tokio::select! {
            biased;
            () = kick.token.cancelled() => break,
            more = outbox.take(&mut buf) => more,
        };
        if !more {
            let _ = wr.shutdown().await;
            return;
        }
        let written = tokio::select! {
            biased;
            () = kick.token.cancelled() => {
                partial = true;
                break;
            }
            r = wr.write_all(&buf) => r,
        };
        if written.is_err() {
            return;
        }
    }
    let notice: &[u8] = match kick.reason.load(Ordering::SeqCst) {
        KICK_LOST => b"* your name was taken while the server recovered; please reconnect\r\n",
        _ => b"* you are not reading fast enough: disconnected\r\n",
    };
    let _ = tokio::time::timeout(NOTICE_TIMEOUT, async {
        if partial {
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
}
