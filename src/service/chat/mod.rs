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

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use self::room::{KickReason, Room};
use super::ConnContext;
use crate::bus::Bus;
use crate::net::Stream;

pub use room::MEMBER_BACKLOG;
pub use text::{MAX_NAME, check_name, clean};

/// The bus topic chat lines travel on. A payload on it is one or more whole lines (the bus may
/// hand several publications over as one), appended to the room's log as they are.
pub const TOPIC: &str = "chat";

/// Prefix of the reserved names on the bus.
const KEY_PREFIX: &str = "chat:";

/// After a member leaves, how long its writer may take to flush what is queued for it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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

impl Chat {
    /// The room of one worker, subscribed to the other workers' lines on `bus`.
    pub fn new(bus: Bus, max_line: usize) -> Chat {
        let room = Arc::new(Room::new(max_line));
        let r = Arc::clone(&room);
        bus.subscribe(TOPIC, Arc::new(move |lines| r.append(None, &lines)));
        let r = Arc::clone(&room);
        bus.on_lost(Arc::new(move |holder| r.kick(holder, KickReason::Lost)));
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
        // Leaves the room however this task ends (see `Seat`).
        let seat = self.room.enter(id);
        let writer = writer::write_loop(wr, &seat);
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
            // Boxed, as the session's steps are (see `session`): not part of the idle future.
            Box::pin(self.leave(id, j, seat.kick.reason())).await;
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
}

#[cfg(test)]
mod memory {
    /// Every member holds one `serve` future while it waits for its next line and its writer
    /// for the room's next line (issue 13: 100,000 idle members on one small machine). The
    /// read and write buffers are not in it (a per-worker scratch buffer, given back when up to
    /// date); a buffer or a large state added to the wrong place shows here.
    #[test]
    fn an_idle_member_future_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let stream = crate::net::Stream::Tcp(c);
            let ctx =
                crate::service::ConnContext::detached(crate::net::Peer::Unix, Default::default());
            // No hub listens for this pid: the bus client retries in the background.
            let bus = crate::bus::Bus::embedded(std::process::id());
            let chat = super::Chat::new(bus, crate::config::DEFAULT_MAX_LINE);
            let f = chat.serve(stream, &ctx);
            let size = std::mem::size_of_val(&f);
            // About 1,080 bytes on rustc 1.95: the line reader (136, no buffer), its read and
            // the idle deadline (a tokio Sleep, 96), the stop signal (72), the writer's wait
            // (256), the seat. It was 2,328 before the session's bus steps were boxed.
            assert!(size <= 1152, "serve future is {size} bytes");
        });
    }
}
