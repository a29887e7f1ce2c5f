//! The bus: every message and every piece of state that crosses workers goes through here.
//! No service opens its own pipe to a sibling.
//!
//! It knows no service: keys, topics and values are opaque (chat and quote choose theirs),
//! and nothing here imports `service`, `worker` or `arbiter`, except the hub's process boot
//! (`hub/boot.rs`: child start, signals, heartbeat, ready message), which is shared with the
//! workers and kept in that one file.
//!
//! What services get is [`Bus`], a few operations that a Redis deployment can offer as well:
//!
//! | operation | chat / quote use | embedded hub | Redis (later) |
//! |---|---|---|---|
//! | [`Bus::publish`] / [`Bus::subscribe`] | chat lines, join/leave notices | fan-out to the other workers | `PUBLISH` / `SUBSCRIBE` |
//! | [`Bus::reserve`] / [`Bus::release`] | unique member names | a table in the hub, per connection | `SET NX` with a lease |
//! | [`Bus::list`] | `/who` | scan of the table | `SCAN` |
//! | [`Bus::swap`] | the quote | a value in the hub | `GETSET` |
//! | [`Bus::set_if_absent`] | the initial quote, seeded by each worker | a value in the hub | `SET NX` |
//!
//! # The embedded bus
//!
//! One machine, zero setup: the arbiter forks a *hub* child ([`hub`]), supervised like a
//! worker but only when the service needs it. Workers connect to it over an abstract Unix
//! socket named after the arbiter's pid ([`hub_address`]) and exchange length-prefixed frames
//! ([`proto`]). The worker side is [`client::EmbeddedBus`].
//!
//! Why a child of its own rather than the arbiter relaying between workers (as uWSGI's master
//! and Node's cluster primary do): fan-out is N writes per message, and in the arbiter a chat
//! burst would delay its signal handling and heartbeat checks; the arbiter also never runs
//! tokio (fork safety). In a separate process a burst costs the hub alone, and a hub that dies
//! is restarted like a worker, losing only the frames in flight. A Redis bus would join as
//! another [`Bus`] variant, with the hub or each worker holding the subscription.
//!
//! Recovery, when the hub dies (even by SIGKILL): the arbiter restarts it; each worker's client
//! reconnects by itself and re-sends, in its first frame, every name its members hold and the
//! last value it saw of each key, so names stay reserved for connected members and the quote
//! survives. Messages published while the hub is away wait in the worker's queue and are sent
//! after the reconnect; only frames in flight when it died are lost. Clients of the services
//! never notice beyond that.

pub mod client;
pub mod hub;
pub(crate) mod names;
pub mod proto;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use client::EmbeddedBus;

/// The largest frame either side accepts: a chat line of `--max-line` bytes, at most
/// [`crate::config::MAX_MAX_LINE`], grows up to 3× when invalid UTF-8 becomes U+FFFD.
pub const MAX_FRAME: usize = 4 * crate::config::MAX_MAX_LINE;

/// How long a request (reserve, list, swap) waits for the hub, which may be restarting,
/// before the service is told the bus is unavailable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Called with what another worker published on a subscribed topic: one payload or several
/// concatenated (see [`Bus::publish`]). Runs on the bus's receive task: it must not block
/// (chat appends the lines to its room's log, which never waits).
pub type Handler = Arc<dyn Fn(Bytes) + Send + Sync>;

/// Called when a name held by `holder` was lost (after a hub restart, another worker's member
/// re-registered it first).
pub type LostHandler = Arc<dyn Fn(u64) + Send + Sync>;

/// Called on the bus's receive task when another worker took over the connection of
/// `holder` ([`Bus::hand_over`]), at the exact point of the delivery order where the hub cut
/// it; with how many bytes of this worker's own publications on the topic (counted from the
/// worker's start) were ordered before the cut. Must not block.
pub type CutHandler = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Why a bus operation failed. Services turn it into a line for their client; it never ends
/// the worker.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The hub did not answer within [`REQUEST_TIMEOUT`] (it is restarting, or gone).
    #[error("the bus is unavailable")]
    Unavailable,
}

/// The abstract socket the hub of the arbiter `arbiter_pid` listens on.
///
/// Abstract (a leading NUL, Linux only): nothing to clean up when the hub is SIGKILLed, and the
/// restarted hub can bind the same name at once. Anyone on the machine can connect to an
/// abstract socket, so the hub checks the peer's uid (`SO_PEERCRED`).
pub fn hub_address(arbiter_pid: u32) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let mut name = vec![0u8];
    name.extend_from_slice(format!("oxicorn-{arbiter_pid}-hub").as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(name))
}

/// [`hub_address`] as logs show it (`@` for the leading NUL, as `ss -x` does).
pub fn show_address(addr: &std::path::Path) -> String {
    addr.to_string_lossy().replacen('\0', "@", 1)
}

/// The bus as services see it. An enum that delegates (like the services' `Service`), so a
/// `Redis` variant can join `Embedded` without touching the services.
#[derive(Clone)]
pub enum Bus {
    /// The hub child process on this machine.
    Embedded(EmbeddedBus),
}

impl Bus {
    /// Connects (in the background, retrying until the hub is up) to this arbiter's hub.
    /// Call inside the worker's runtime.
    pub fn embedded(arbiter_pid: u32) -> Bus {
        Bus::embedded_at(hub_address(arbiter_pid))
    }

    /// Connects (in the background, retrying until the hub is up) to the hub at `addr`, the
    /// address the arbiter chose and handed to this worker. Call inside the worker's runtime.
    pub fn embedded_at(addr: PathBuf) -> Bus {
        Bus::Embedded(EmbeddedBus::start(addr))
    }

    /// Sends `payload` to every subscriber of `topic` in the *other* workers, in the order this
    /// worker published. Delivery inside this worker is the caller's job (it is faster, and
    /// goes on while the hub is away). Waits only when the queue to the hub is full.
    ///
    /// A topic is a stream: payloads published in quick succession may reach a subscriber
    /// concatenated, in one call of its handler, but never split or reordered. Chat publishes
    /// whole lines, so a handler gets whole lines.
    pub async fn publish(&self, topic: &str, payload: Bytes) {
        match self {
            Bus::Embedded(b) => b.publish(topic, payload).await,
        }
    }

    /// Calls `handler` with every payload other workers publish on `topic` (one handler per
    /// topic; a second call replaces the first).
    pub fn subscribe(&self, topic: &str, handler: Handler) {
        match self {
            Bus::Embedded(b) => b.subscribe(topic, handler),
        }
    }

    /// Calls `handler` when a reservation is lost (see [`LostHandler`]).
    pub fn on_lost(&self, handler: LostHandler) {
        match self {
            Bus::Embedded(b) => b.on_lost(handler),
        }
    }

    /// Calls `handler` when another worker takes over one of this worker's holders (see
    /// [`CutHandler`]).
    pub fn on_cut(&self, handler: CutHandler) {
        match self {
            Bus::Embedded(b) => b.on_cut(handler),
        }
    }

    /// Takes over a connection another worker handed to this one: moves the reservation of
    /// `from.1` in the worker whose pid is `from.0` to `reservation` (held here from now on), in one step,
    /// so the name is never free; and cuts both workers' streams at that step. `on_answer`
    /// runs on the receive task as the answer is read, before anything delivered after it:
    /// everything delivered before was ordered before the cut (the old worker delivers it),
    /// everything after it after (this worker does). The old worker learns the cut by its
    /// [`CutHandler`]. Publications this worker queues after calling this are ordered after
    /// the cut. Returns whether the name moved.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn hand_over(
        &self,
        topic: &str,
        from: (u32, u64),
        reservation: proto::Reservation,
        on_answer: Box<dyn FnOnce(bool) + Send>,
    ) -> Result<bool, BusError> {
        match self {
            Bus::Embedded(b) => b.hand_over(topic, from, reservation, on_answer).await,
        }
    }

    /// Takes `key` for `holder` if nobody holds it. `value` is what [`Bus::list`] shows; `will`
    /// is published on its topic if this worker vanishes while holding the key.
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
        match self {
            Bus::Embedded(b) => b.reserve(key, holder, value, will).await,
        }
    }

    /// Gives `key` back, if `holder` holds it. Never waits.
    pub fn release(&self, key: &str, holder: u64) {
        match self {
            Bus::Embedded(b) => b.release(key, holder),
        }
    }

    /// The values of every reservation whose key starts with `prefix`, all workers included.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Bytes>, BusError> {
        match self {
            Bus::Embedded(b) => b.list(prefix).await,
        }
    }

    /// Waits until everything this worker published so far has reached the bus (been fanned
    /// out to the other workers' queues). Chat uses it so a member is told it joined only once
    /// its join notice is ahead of anything a later member could do.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn sync(&self) -> Result<(), BusError> {
        match self {
            Bus::Embedded(b) => b.sync().await,
        }
    }

    /// Gives `key` the value `value` if it has none yet, for the whole server: a seed, such as
    /// the initial quote, which every worker may offer and only the first sets. Never waits;
    /// it takes effect before anything this worker asks the bus after it, and a value set by
    /// [`Bus::swap`] always wins over a seed (also after a hub restart).
    pub fn set_if_absent(&self, key: &str, value: Bytes) {
        match self {
            Bus::Embedded(b) => b.set_if_absent(key, value),
        }
    }

    /// Sets `key` to `value` and returns the value it replaced, as one atomic step for the
    /// whole server.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] if the hub does not answer in time.
    pub async fn swap(&self, key: &str, value: Bytes) -> Result<Bytes, BusError> {
        match self {
            Bus::Embedded(b) => b.swap(key, value).await,
        }
    }
}
