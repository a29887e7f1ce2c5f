//! The session protocol of one member: the name prompt, commands (`/who`, `/quit`), messages,
//! and leaving. Reads the member's lines; everything it sends goes through the room.

use std::io;

use bytes::{Bytes, BytesMut};

use super::room::KickReason;
use super::text::{check_name, clean};
use super::{Chat, KEY_PREFIX, TOPIC, idle_deadline};
use crate::bus::BusError;
use crate::bus::names::Packed;
use crate::net::Stream;
use crate::service::ConnContext;
use crate::service::lines::{Line, LineReader, TIMING_MARK_REPLY};
use crate::service::park::Spot;
use crate::service::reclaim::IdleClass;
use tokio::time::Instant;

/// What a member of a stopping worker is told when it cannot be carried on elsewhere.
pub(super) const RECONNECT: &str = "* the server is restarting or stopping; please reconnect\r\n";

/// The last line of a connection without a name closed to admit a newcomer at the cap.
const FULL: &str = "* the server is full; please try again in a moment\r\n";

/// A member that has a name: the name as shown and its key on the bus, in 32 bytes with no
/// allocation of their own when short ([`Packed`]: a name of up to 12 ASCII letters). A parked
/// member's waits in [`Chat`]'s table for as long as the member idles: small blocks of their
/// own, allocated while the member joined between blocks its task freed later, kept whole pages
/// of the heap resident (issue 13).
pub(super) struct Joined(Packed);

impl Joined {
    pub(super) fn new(name: &str, key: &str) -> Joined {
        Joined(Packed::new(name.as_bytes(), key.as_bytes(), &[]))
    }

    /// The name, as others see it.
    pub(super) fn name(&self) -> &str {
        // Made of two `&str`s, split where they were joined: valid UTF-8.
        std::str::from_utf8(self.0.first()).expect("a name is UTF-8")
    }

    /// Its key on the bus (`chat:` and its skeleton).
    pub(super) fn key(&self) -> &str {
        // As `name`.
        std::str::from_utf8(self.0.second()).expect("a key is UTF-8")
    }
}

/// Why a session stopped reading.
pub(super) enum End {
    /// The member is done (quit, closed, or told to reconnect): it leaves.
    Closed,
    /// Its worker retires with hand-over: the session stopped between two lines, to be
    /// offered to a newer worker.
    HandOver,
    /// The member has been silent for [`crate::service::park::PARK_AFTER`]: the session
    /// stopped between two lines, and the member may park if nothing is due to it.
    Park,
}

impl Chat {
    /// Reads the member's lines (from `lines`, which the caller keeps: a hand-over passes on
    /// what it holds) until the member is done or its worker retires with hand-over.
    pub(super) async fn session(
        &self,
        id: u64,
        lines: &mut LineReader<tokio::io::ReadHalf<Stream>>,
        ctx: &ConnContext,
        joined: &mut Option<Joined>,
        spot: Spot<'_>,
    ) -> io::Result<End> {
        // Until it has a name, a connection may be closed to admit a newcomer when the worker
        // is full (issue 11): a silent client at the prompt must not hold a slot a real one
        // waits for. A member never is: an idle member still reads the room.
        if joined.is_none() {
            ctx.reclaim.set_idle(IdleClass::NoRequest);
        }
        // When a joined member may park: one timer for the session, boxed (a pointer in every
        // idle member's future), made once the member has joined and reset after each line. A
        // member with an idle timeout does not park: its deadline is its task's.
        let mut park_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let park_at = if joined.is_some() && ctx.idle_timeout.is_none() {
                spot.park_at(Instant::now(), None)
            } else {
                None
            };
            match (park_at, park_timer.as_mut()) {
                (Some(at), Some(t)) => t.as_mut().reset(at),
                (Some(at), None) => park_timer = Some(Box::pin(tokio::time::sleep_until(at))),
                (None, _) => park_timer = None,
            }
            let line = tokio::select! {
                l = lines.next() => l?,
                () = async {
                    match park_timer.as_mut() {
                        Some(t) => t.as_mut().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Only a member with nothing due stops here: its writer's bytes that the
                    // socket has not taken yet would be dropped with it. Otherwise it waits on,
                    // and tries again a second later.
                    if self.room.up_to_date(id) {
                        return Ok(End::Park);
                    }
                    continue;
                }
                () = std::future::poll_fn(|cx| ctx.reclaim.poll_evicted(cx)) => {
                    tracing::debug!(peer = %ctx.peer, "chat connection without a name closed to make room");
                    self.last_word(id, FULL);
                    return Ok(End::Closed);
                }
                // As `service::idle`, without the copy of the read future an async wrapper
                // keeps: this select is what every idle member holds.
                () = idle_deadline(ctx.idle_timeout) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
                // A graceful stop retires this worker: a chat connection never finishes by
                // itself, so end it now (the others see a leave notice) rather than hold the
                // worker until the graceful timeout cuts it.
                () = ctx.stop.cancelled() => {
                    // A retiring worker cancels `stop` too, having asked for a hand-over
                    // first: a newer worker may carry the member on. (One wait for both, not
                    // two: this select is what every idle member holds.)
                    if ctx.retire.is_requested() {
                        return Ok(End::HandOver);
                    }
                    self.last_word(id, RECONNECT);
                    return Ok(End::Closed);
                }
            };
            // `{ line }`: moved out whole, so its storage is free again; a partly moved `line`
            // would stay in every idle member's future (issue 13).
            #[allow(clippy::blocks_in_conditions)]
            let bytes = match { line } {
                None => return Ok(End::Closed),
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
                Some(Line::Negotiation(answer)) => {
                    self.reply(id, answer);
                    continue;
                }
                Some(Line::Text(bytes)) => bytes,
            };
            match joined {
                None => {
                    if let Some(j) = Box::pin(self.choose_name(id, bytes)).await {
                        tracing::debug!(peer = %ctx.peer, member = id, name = %j.name(), "chat member joined");
                        let notice = Bytes::from(format!("* {} joined\r\n", j.name()));
                        let welcome = format!(
                            "* you joined as {}; /who lists the members, /quit leaves\r\n",
                            j.name()
                        );
                        // Recorded before the next await: if this task is dropped there, the
                        // caller still sees a joined member to clean up.
                        *joined = Some(j);
                        ctx.reclaim.set_busy();
                        // The others are told first, and the bus has fanned the notice out
                        // before this member learns it joined: whoever joins after that is
                        // not told about this member twice (by the notice and by being late).
                        // If the bus is away the member joins anyway; the notice follows.
                        Box::pin(async {
                            self.broadcast(id, notice).await;
                            let _ = self.bus.sync().await;
                        })
                        .await;
                        self.reply(id, welcome);
                    }
                }
                Some(j) => {
                    // Boxed: the bus requests a line may make are large futures, and inline they
                    // would make every idle member's future as large (issue 13).
                    if !Box::pin(self.said(id, j, bytes)).await {
                        return Ok(End::Closed);
                    }
                }
            }
        }
    }

    /// The first lines: a name, until one is valid and free.
    async fn choose_name(&self, id: u64, line: Bytes) -> Option<Joined> {
        let name = match std::str::from_utf8(&line) {
            Ok(s) => s.trim(),
            Err(_) => {
                self.reply(id, "* a name must be valid UTF-8; try again\r\n");
                return None;
            }
        };
        let checked = match check_name(name) {
            Ok(n) => n,
            Err(why) => {
                self.reply(id, format!("* invalid name: {why}; try again\r\n"));
                return None;
            }
        };
        let name = checked.shown.as_str();
        // Reserved by its skeleton: look-alikes share one key, in every worker.
        let key = format!("{KEY_PREFIX}{}", checked.key);
        // If this worker dies, the hub tells the others this member left.
        let will = (TOPIC.to_string(), Bytes::from(format!("* {name} left\r\n")));
        let value = Bytes::copy_from_slice(name.as_bytes());
        match self.bus.reserve(&key, id, value, Some(will)).await {
            Ok(true) => {}
            Ok(false) => {
                let why = if self.is_present(&checked.folded).await {
                    "is taken"
                } else {
                    "looks too much like a present member's name"
                };
                self.reply(id, format!("* the name {name} {why}; try another\r\n"));
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
        Some(Joined::new(name, &key))
    }

    /// Whether a present member has the name whose folded form is `folded` (rather than a
    /// name that only looks like it). If the list cannot be had, the name counts as taken.
    async fn is_present(&self, folded: &str) -> bool {
        let Ok(names) = self.bus.list(KEY_PREFIX).await else {
            return true;
        };
        names.iter().any(|n| {
            std::str::from_utf8(n)
                .ok()
                .and_then(|n| check_name(n).ok())
                .is_some_and(|n| n.folded == folded)
        })
    }

    /// A line from a member: a command or a message. False when the member quits.
    async fn said(&self, id: u64, j: &Joined, line: Bytes) -> bool {
        if line.first() == Some(&b'/') {
            let command = String::from_utf8_lossy(&line);
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
                    let shown = clean(&line);
                    self.reply(
                        id,
                        format!("* unknown command {shown}: try /who or /quit\r\n"),
                    );
                }
            }
            return true;
        }
        let text = clean(&line);
        if text.is_empty() {
            return true;
        }
        let mut out = BytesMut::with_capacity(j.name().len() + text.len() + 5);
        out.extend_from_slice(b"<");
        out.extend_from_slice(j.name().as_bytes());
        out.extend_from_slice(b"> ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.broadcast(id, out.freeze()).await;
        true
    }

    /// The member is gone: the others are told, then the name is freed. A member whose name
    /// was lost (see [`KickReason::Lost`]) no longer owns it: nothing to announce or free.
    pub(super) async fn leave(&self, id: u64, j: Joined, reason: Option<KickReason>) {
        self.room.stop_reading(id);
        if reason == Some(KickReason::Lost) {
            return;
        }
        tracing::debug!(member = id, name = %j.name(), overflow = reason == Some(KickReason::Overflow), "chat member left");
        if reason == Some(KickReason::Overflow) {
            // The operator's business: a client too slow for the room (or a stuck one).
            tracing::info!(
                "chat member {} disconnected: more than {} bytes behind the room",
                j.name(),
                self.room.backlog
            );
        }
        self.broadcast(id, Bytes::from(format!("* {} left\r\n", j.name())))
            .await;
        self.bus.release(j.key(), id);
    }
}
