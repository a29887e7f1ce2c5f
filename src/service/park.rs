//! Parking idle connections: a connection that has waited a while for its client ends its task
//! and leaves only its socket and a small record here, until its client sends again (issue 13:
//! an idle connection's memory).
//!
//! A connection served by a task costs its task (tokio's task cell, rounded up to 128 bytes),
//! its service's future, tokio's registration of its socket (a `ScheduledIo`, 128-byte
//! aligned), its entry in the worker's reclaim table and the allocator's overhead: 1.4 to
//! 1.8 KB for echo, quote or a kept-alive static connection. A parked one costs a 32-byte
//! `Record` in this module's table and the kernel's `epitem` (not user-space memory).
//!
//! **How.** A service waiting for its client's next bytes with nothing buffered asks
//! [`Spot::park_at`] when it may park (never before [`PARK_AFTER`] of silence, so a busy
//! keep-alive connection never does: no syscall is added to a connection that is not idle),
//! and at that moment calls [`Spot::park`]. Its socket leaves tokio (`into_std`: one
//! `EPOLL_CTL_DEL`) and joins this worker's own epoll instance, level-triggered, for
//! `EPOLLIN | EPOLLRDHUP` (one `EPOLL_CTL_ADD`); the service's future returns and its task ends.
//! That inner epoll is itself registered with tokio ([`AsyncFd`]); the [`Driver`] task reads
//! it. When a parked socket becomes readable (bytes, the client's FIN or RST), its record is
//! taken out, the socket removed from the inner epoll and registered with tokio again, and the
//! service's [`Serve::resume`] runs in a new connection task: it reads as if it had never
//! stopped waiting (an EOF ends it as it would have). [`Parking::wake`] resumes a record for a
//! reason other than its socket (a chat member's room output, by the key [`Spot::park`] gave).
//!
//! **What is kept, and what a parked connection still is.** A parked connection holds one of
//! the worker's `--worker-connections` permits and counts in its scoreboard's live connections
//! exactly as a served one: parking takes a free permit (and forgets it) before the task gives
//! back its own, so a worker at its cap does not park (its connections wait in their tasks as
//! before). Its idle deadline (its service's idle timeout, or HTTP keep-alive) is in its record:
//! the driver closes it when it passes, as the service would have (a sweep at most every
//! [`SWEEP_EVERY`], so up to that much later). A kept-alive HTTP connection may be closed to
//! admit a newcomer at the cap ([`super::reclaim::Spare`]): parked ones are chosen first.
//!
//! **Stop and retirement.** When the worker begins a graceful stop or retires with hand-over,
//! nothing parks any more and every parked connection is resumed at once, so each service does
//! exactly what it does for a connection that was waiting in its task: static closes an idle
//! kept-alive connection after its short grace, quote closes, line connections are offered to
//! a newer worker ([`super::handoff`]). The driver holds a token of the worker's task tracker
//! until then, so the drain cannot end with connections still parked.
//!
//! This module owns the inner epoll, the records and the accounting of parked connections. It
//! knows services only through [`Serve::resume`] and never reads or writes a socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::libc;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handoff::Targets;
use super::reclaim::{Reclaimer, Spare};
use super::{ConnContext, Serve};
use crate::net::{Peer, Stream};
use crate::scoreboard::Slot;

/// How long a connection waits for its client in its task before it may park. Long enough
/// that a connection in use (a browser's or a benchmark's keep-alive connection, a chat
/// client typing) never parks, so parking costs nothing to throughput; short enough that an
/// idle one soon costs only its record.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// A connection whose idle deadline is nearer than this after [`PARK_AFTER`] does not park: it
/// would be parked only to be closed.
const MIN_LEFT: Duration = Duration::from_secs(1);

/// How often, at most, the driver looks for parked connections whose idle deadline passed: a
/// parked connection closes up to this much after its deadline.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Parkings and resumptions after which the driver asks glibc to return the freed pages to the
/// system: the tasks of many connections that parked at once leave holes in the heap that
/// `free` alone keeps resident.
const TRIM_AFTER: usize = 256;

/// How long parking must have been quiet before the heap is trimmed: during a burst the pages
/// freed by one connection's task are soon taken by the next, and returning them would only
/// make the next allocations fault them in again.
const TRIM_QUIET: Duration = Duration::from_millis(500);

/// How many events one `epoll_wait` takes.
const EVENTS: usize = 256;

/// Where a connection may park: the worker's [`Parking`] and the index of the connection's
/// service in its worker (what [`Serve::resume`] is told). Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Spot<'a> {
    parking: Option<&'a Parking>,
    service: u16,
}

impl Spot<'static> {
    /// Nowhere: the connection never parks (a service run outside a worker).
    pub const fn none() -> Spot<'static> {
        Spot {
            parking: None,
            service: 0,
        }
    }
}

impl<'a> Spot<'a> {
    /// In `parking`, for the worker's service number `service`.
    pub fn new(parking: &'a Parking, service: usize) -> Spot<'a> {
        Spot {
            parking: Some(parking),
            service: u16::try_from(service).unwrap_or(u16::MAX),
        }
    }

    /// When a connection that begins to wait `now`, with the idle deadline `idle_at`, should
    /// try to park: [`PARK_AFTER`] from now, or `None` when it should not (no parking here,
    /// the worker is stopping, or the deadline is too near to be worth it).
    pub fn park_at(&self, now: Instant, idle_at: Option<Instant>) -> Option<Instant> {
        let p = self.parking?;
        if p.shared.as_ref()?.closed.load(Ordering::Relaxed) {
            return None;
        }
        let at = now + PARK_AFTER;
        match idle_at {
            Some(deadline) if deadline < at + MIN_LEFT => None,
            _ => Some(at),
        }
    }

    /// Parks `stream`, to be resumed when it becomes readable (or closed at `deadline`, or
    /// evicted at the cap if `evictable`); the caller's task should then end without touching
    /// the connection again. The caller must hold nothing the client is owed or has sent
    /// (no bytes buffered either way): a resumed connection starts from its socket alone.
    ///
    /// # Errors
    /// The stream back when it cannot park now (no parking here, the worker stopping, no free
    /// connection permit, the socket refused by epoll): the caller carries on waiting.
    pub fn park(
        &self,
        stream: Stream,
        deadline: Option<Instant>,
        evictable: bool,
    ) -> Result<Key, Stream> {
        self.park_tagged(stream, deadline, evictable, 0)
    }

    /// [`Spot::park`], with `tag` kept in the record and given back in [`Resumed::tag`]: how a
    /// service whose connection has state outside its socket finds it again (chat: the
    /// member's id in its room).
    ///
    /// # Errors
    /// As [`Spot::park`].
    pub fn park_tagged(
        &self,
        stream: Stream,
        deadline: Option<Instant>,
        evictable: bool,
        tag: u64,
    ) -> Result<Key, Stream> {
        match self.parking {
            Some(p) => p.park(stream, self.service, deadline, evictable, tag),
            None => Err(stream),
        }
    }

    /// The parking this spot parks in, to resume a parked connection for a reason other than
    /// its socket ([`Parking::wake`]: chat's room output); `None` where nothing parks.
    pub fn parking(&self) -> Option<&'a Parking> {
        self.parking.filter(|p| p.shared.is_some())
    }
}

/// Names one parked connection, for [`Parking::wake`]. Stale once it was resumed or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// What [`Spot::park`] returns when the socket could not be parked nor given back (it is
    /// closed, as after an I/O error): names nothing.
    pub const GONE: Key = Key {
        index: u32::MAX,
        generation: u32::MAX,
    };

    fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    fn from_u64(v: u64) -> Key {
        Key {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// Why a parked connection resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its socket became readable: bytes, the client's FIN, or an error.
    Readable,
    /// [`Parking::wake`] was called for it.
    Woken,
    /// The worker stops or retires: every parked connection is resumed to end as its service
    /// ends a waiting connection.
    Stop,
}

/// What a service is told when its parked connection resumes ([`Serve::resume`]).
#[derive(Debug, Clone, Copy)]
pub struct Resumed {
    /// The index of the connection's service in its worker ([`Spot::new`]).
    pub service: usize,
    /// The idle deadline it parked with: its first wait ends there, not a whole idle timeout
    /// from now.
    pub deadline: Option<Instant>,
    /// Why it resumed.
    pub why: Why,
    /// What it parked with ([`Spot::park_tagged`]; 0 from [`Spot::park`]).
    pub tag: u64,
}

/// One parked connection: 32 bytes.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// The service's own mark ([`Spot::park_tagged`]).
    tag: u64,
    /// The socket (owned by the record); -1 for a free entry.
    fd: RawFd,
    /// Bumped each time the entry is reused, so a stale [`Key`] finds nothing.
    generation: u32,
    /// Milliseconds after [`Shared::epoch`] at which it closes; 0 for never.
    deadline_ms: u64,
    /// Its service's index in the worker.
    service: u16,
    /// [`UNIX`], [`EVICTABLE`].
    flags: u8,
}

impl Record {
    const FREE: Record = Record {
        tag: 0,
        fd: -1,
        generation: 0,
        deadline_ms: 0,
        service: 0,
        flags: 0,
    };
}

/// The socket is a Unix stream (else TCP).
const UNIX: u8 = 1;
/// Kept-alive HTTP: may be closed for a newcomer at the cap.
const EVICTABLE: u8 = 2;

#[derive(Debug, Default)]
struct Table {
    records: Vec<Record>,
    /// Free entries of `records`.
    free: Vec<u32>,
    /// Records in use.
    parked: usize,
    /// Of those, evictable ones.
    evictable: usize,
    /// No record's deadline is earlier than this (the driver's next sweep); `None`: no
    /// deadline is pending.
    next_sweep: Option<Instant>,
    /// Keys woken by [`Parking::wake`], for the driver.
    woken: Vec<Key>,
    /// Records made or taken since the heap was last trimmed.
    changes_since_trim: usize,
    /// When a record was last made or taken.
    last_change: Option<Instant>,
}

/// The worker's parking: the inner epoll and the records. Cheap to clone (one `Arc`).
#[derive(Debug, Clone, Default)]
pub struct Parking {
    /// `None`: parking is off (a service run outside a worker).
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    /// The inner epoll instance, registered with the runtime for readability.
    epoll: AsyncFd<OwnedFd>,
    table: Mutex<Table>,
    /// Wakes the driver: a nearer deadline, a key woken.
    notify: Notify,
    /// Set when the worker stops or retires: nothing parks any more.
    closed: AtomicBool,
    /// The worker's connection cap: a parked connection holds one forgotten permit.
    limit: Arc<Semaphore>,
    /// The worker's scoreboard slot: a parked connection counts in `active_conns`.
    slot: &'static Slot,
    /// Deadlines are kept in milliseconds after this.
    epoch: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every method leaves the table consistent in one step: a poisoned lock is used as is.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ms(&self, at: Instant) -> u64 {
        // At least 1: 0 means "no deadline".
        (at.saturating_duration_since(self.epoch).as_millis() as u64).max(1)
    }

    fn instant(&self, ms: u64) -> Option<Instant> {
        (ms != 0).then(|| self.epoch + Duration::from_millis(ms))
    }

    /// Gives back what a parked connection held: its permit and its place in the gauge.
    fn release(&self) {
        self.limit.add_permits(1);
        self.slot.active_conns.fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes record `index` out of the table (and its socket out of the inner epoll).
    fn take(&self, t: &mut Table, index: u32) -> Record {
        let r = t.records[index as usize];
        t.records[index as usize].fd = -1;
        t.records[index as usize].generation = r.generation.wrapping_add(1);
        t.free.push(index);
        t.parked -= 1;
        if r.flags & EVICTABLE != 0 {
            t.evictable -= 1;
        }
        t.changes_since_trim += 1;
        t.last_change = Some(Instant::now());
        // SAFETY: `r.fd` is an open socket this record owns, and `epoll` an epoll instance;
        // a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                r.fd,
                std::ptr::null_mut(),
            );
        }
        r
    }

    /// Closes a record's socket and releases what it held (a deadline passed, or evicted).
    fn close(&self, r: Record) {
        // SAFETY: the record owned `r.fd`, and was just taken out of the table: nothing else
        // closes or uses it.
        drop(unsafe { OwnedFd::from_raw_fd(r.fd) });
        self.release();
    }
}

impl Spare for Shared {
    fn count(&self) -> usize {
        self.lock().evictable
    }

    /// Closes the evictable record with the earliest deadline: with one keep-alive setting,
    /// the least recently active kept-alive connection.
    fn close_one(&self) -> bool {
        let mut t = self.lock();
        if t.evictable == 0 {
            return false;
        }
        let victim = t
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.fd >= 0 && r.flags & EVICTABLE != 0)
            .min_by_key(|(_, r)| r.deadline_ms.wrapping_sub(1))
            .map(|(i, _)| i as u32);
        let Some(index) = victim else {
            return false;
        };
        let r = self.take(&mut t, index);
        drop(t);
        self.close(r);
        true
    }
}

impl Parking {
    /// The parking of one worker: `limit` is its connection cap, `slot` its scoreboard slot.
    /// Call inside its runtime. Run a [`Driver`] with it, or parked connections never resume.
    ///
    /// # Errors
    /// If the epoll instance cannot be made or registered.
    pub fn new(limit: Arc<Semaphore>, slot: &'static Slot) -> io::Result<Parking> {
        // SAFETY: epoll_create1 has no memory arguments; the result is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `AsyncFd` owns `fd`, which stays open and unchanged until it is dropped.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Parking {
            shared: Some(Arc::new(Shared {
                epoll,
                table: Mutex::default(),
                notify: Notify::new(),
                closed: AtomicBool::new(false),
                limit,
                slot,
                epoch: Instant::now(),
            })),
        })
    }

    /// Parking that parks nothing.
    pub const fn off() -> Parking {
        Parking { shared: None }
    }

    /// This parking's evictable connections, for the worker's [`Reclaimer`]; `None` when off.
    pub fn spare(&self) -> Option<Arc<dyn Spare>> {
        self.shared.clone().map(|s| s as Arc<dyn Spare>)
    }

    /// How many connections are parked now.
    pub fn parked(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.lock().parked)
    }

    /// Resumes the connection `key` (with [`Why::Woken`]) if it is still parked: for a wake-up
    /// source other than its socket. Takes effect when the driver next runs.
    pub fn wake(&self, key: Key) {
        if let Some(s) = &self.shared {
            s.lock().woken.push(key);
            s.notify.notify_one();
        }
    }

    fn park(
        &self,
        stream: Stream,
        service: u16,
        deadline: Option<Instant>,
        evictable: bool,
        tag: u64,
    ) -> Result<Key, Stream> {
        let Some(s) = &self.shared else {
            return Err(stream);
        };
        if s.closed.load(Ordering::Relaxed) {
            return Err(stream);
        }
        // A free permit first: the task gives its own back when it ends. None free means the
        // worker is at its cap, where a waiting client must not be admitted for a moment.
        let Ok(permit) = s.limit.try_acquire() else {
            return Err(stream);
        };
        let (fd, unix) = match into_fd(stream) {
            Ok(v) => v,
            // The socket could not leave tokio: it is gone (closed), as after an I/O error.
            Err(err) => {
                tracing::debug!(cause = %err, "cannot park a connection: closed");
                return Ok(Key::GONE);
            }
        };
        let mut t = s.lock();
        let index = match t.free.pop() {
            Some(i) => i,
            None => {
                t.records.push(Record::FREE);
                (t.records.len() - 1) as u32
            }
        };
        let generation = t.records[index as usize].generation;
        let key = Key { index, generation };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key.to_u64(),
        };
        // SAFETY: `fd` is an open socket we own, `event` a valid event for the call.
        let added = unsafe {
            libc::epoll_ctl(
                s.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut event,
            )
        };
        if added < 0 {
            // Out of epoll watches (fs.epoll.max_user_watches): wait in the task after all.
            t.free.push(index);
            drop(t);
            return match from_fd(fd, unix) {
                Ok(stream) => Err(stream),
                Err(err) => {
                    tracing::debug!(cause = %err, "cannot park a connection: closed");
                    Ok(Key::GONE)
                }
            };
        }
        permit.forget();
        s.slot.active_conns.fetch_add(1, Ordering::Relaxed);
        t.records[index as usize] = Record {
            tag,
            fd: fd.into_raw_fd(),
            generation,
            deadline_ms: deadline.map_or(0, |d| s.ms(d)),
            service,
            flags: if unix { UNIX } else { 0 } | if evictable { EVICTABLE } else { 0 },
        };
        t.parked += 1;
        if evictable {
            t.evictable += 1;
        }
        t.changes_since_trim += 1;
        t.last_change = Some(Instant::now());
        // The driver sleeps until the earliest deadline it knows of, and trims the heap after
        // many parkings (each ended a task): tell it when either changes.
        let nearer = deadline.is_some_and(|d| t.next_sweep.is_none_or(|n| d < n));
        if nearer {
            t.next_sweep = deadline;
        }
        let trim = t.changes_since_trim == TRIM_AFTER;
        drop(t);
        if nearer || trim {
            s.notify.notify_one();
        }
        Ok(key)
    }
}

/// Takes a stream out of the runtime: its socket, and whether it is a Unix one.
fn into_fd(stream: Stream) -> io::Result<(OwnedFd, bool)> {
    Ok(match stream {
        Stream::Tcp(s) => (OwnedFd::from(s.into_std()?), false),
        Stream::Unix(s) => (OwnedFd::from(s.into_std()?), true),
    })
}

/// Registers a parked socket with the runtime again (it is still non-blocking).
fn from_fd(fd: OwnedFd, unix: bool) -> io::Result<Stream> {
    Ok(if unix {
        Stream::Unix(tokio::net::UnixStream::from_std(fd.into())?)
    } else {
        Stream::Tcp(tokio::net::TcpStream::from_std(fd.into())?)
    })
}

/// The connection's peer, as the accept loop gave it (a TCP peer that is gone already shows
/// as `0.0.0.0:0`; its service finds out at its first read).
fn peer_of(stream: &Stream) -> Peer {
    match stream {
        Stream::Tcp(s) => {
            let addr = s
                .peer_addr()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            Peer::Tcp(std::net::SocketAddr::new(
                addr.ip().to_canonical(),
                addr.port(),
            ))
        }
        Stream::Unix(_) => Peer::Unix,
    }
}

/// A resumed connection's share of the cap and of the gauge, given back when its task ends
/// (as the accept loop's permit and guard are).
struct Held(Arc<Shared>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The task that resumes parked connections and closes expired ones: one per worker, spawned
/// beside the accept loop, with what a connection task needs (as the accept loop has).
pub struct Driver<S: Serve> {
    /// The parking it drives.
    pub parking: Parking,
    /// The protocols, whose [`Serve::resume`] carries a connection on.
    pub service: Arc<S>,
    /// The worker's connection tasks: resumed connections are tracked like accepted ones, and
    /// the driver holds a token of it until it has resumed every parked connection at a stop.
    pub conns: TaskTracker,
    /// The worker's stop: cancelled, every parked connection resumes (and ends).
    pub stop: CancellationToken,
    /// The worker's retirement with hand-over: requested, every parked connection resumes
    /// (and is offered to a newer worker).
    pub targets: Targets,
    /// The accept loop's table of closable connections, for the resumed contexts.
    pub reclaim: Reclaimer,
}

impl<S: Serve> Driver<S> {
    /// Runs until the worker stops or retires, and every parked connection was resumed.
    pub async fn run(self) {
        let Some(shared) = self.parking.shared.clone() else {
            return;
        };
        // Until every parked connection is back in a task, the worker's drain must not end.
        let token = self.conns.token();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut last_sweep = Instant::now();
        let mut trim_at: Option<Instant> = None;
        let retire = self.targets.retire();
        loop {
            let sweep_at = shared
                .lock()
                .next_sweep
                .map(|n| n.max(last_sweep + SWEEP_EVERY));
            let wake_at = match (sweep_at, trim_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                () = retire.requested() => break,
                r = shared.epoll.readable() => match r {
                    Ok(mut guard) => {
                        if self.ready(&shared, &mut events) {
                            guard.clear_ready();
                        }
                    }
                    Err(err) => {
                        tracing::error!(cause = %err, "parked connections: epoll failed");
                        break;
                    }
                },
                () = shared.notify.notified() => self.woken(&shared),
                () = sleep => {
                    let now = Instant::now();
                    if sweep_at.is_some_and(|at| now >= at) {
                        last_sweep = now;
                        sweep(&shared, now);
                    }
                }
            }
            trim_at = trim(&shared);
        }
        // Stopping or retiring: nothing parks from now on; every parked connection goes back
        // to a task, where its service ends it as it ends a waiting one.
        shared.closed.store(true, Ordering::Relaxed);
        let all: Vec<(u32, Record)> = {
            let mut t = shared.lock();
            let keys: Vec<u32> = (0..t.records.len() as u32)
                .filter(|&i| t.records[i as usize].fd >= 0)
                .collect();
            keys.into_iter()
                .map(|i| (i, shared.take(&mut t, i)))
                .collect()
        };
        for (_, r) in all {
            self.resume(&shared, r, Why::Stop);
        }
        drop(token);
    }

    /// Resumes the connections whose sockets are ready; false if more may be waiting (the
    /// readiness must then not be cleared).
    fn ready(&self, shared: &Arc<Shared>, events: &mut [libc::epoll_event]) -> bool {
        // SAFETY: `events` is a valid buffer of `events.len()` entries; timeout 0: no wait.
        let n = unsafe {
            libc::epoll_wait(
                shared.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                0,
            )
        };
        if n < 0 {
            return false;
        }
        for e in &events[..n as usize] {
            let key = Key::from_u64(e.u64);
            let record = {
                let mut t = shared.lock();
                match t.records.get(key.index as usize) {
                    Some(r) if r.fd >= 0 && r.generation == key.generation => {
                        Some(shared.take(&mut t, key.index))
                    }
                    _ => None,
                }
            };
            if let Some(r) = record {
                self.resume(shared, r, Why::Readable);
            }
        }
        (n as usize) < events.len()
    }

    /// Resumes the connections [`Parking::wake`] named.
    fn woken(&self, shared: &Arc<Shared>) {
        let taken: Vec<Record> = {
            let mut t = shared.lock();
            let keys = std::mem::take(&mut t.woken);
            keys.into_iter()
                .filter_map(|key| match t.records.get(key.index as usize) {
                    Some(r) if r.fd >= 0 && r.generation == key.generation => {
                        Some(shared.take(&mut t, key.index))
                    }
                    _ => None,
                })
                .collect()
        };
        for r in taken {
            self.resume(shared, r, Why::Woken);
        }
    }

    /// Carries a taken record on in a new connection task.
    fn resume(&self, shared: &Arc<Shared>, r: Record, why: Why) {
        let held = Held(Arc::clone(shared));
        // SAFETY: the record owned `r.fd` and was taken out of the table: it is ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(r.fd) };
        let stream = match from_fd(fd, r.flags & UNIX != 0) {
            Ok(s) => s,
            Err(err) => {
                tracing::debug!(cause = %err, "cannot resume a parked connection: closed");
                return;
            }
        };
        let ctx = ConnContext {
            peer: peer_of(&stream),
            stop: self.stop.clone(),
            idle_timeout: None,
            metrics: super::metrics::Metrics::new(shared.slot),
            reclaim: self.reclaim.register(),
            listener: 0,
            retire: self.targets.retire(),
        };
        let resumed = Resumed {
            service: usize::from(r.service),
            deadline: shared.instant(r.deadline_ms),
            why,
            tag: r.tag,
        };
        let service = Arc::clone(&self.service);
        self.conns.spawn(async move {
            service.resume(stream, resumed, ctx).await;
            drop(held);
        });
    }
}

/// Closes the records whose deadline passed by `now`, and notes the next deadline.
fn sweep(shared: &Shared, now: Instant) {
    let now_ms = shared.ms(now);
    let mut expired = Vec::new();
    let mut next: Option<u64> = None;
    {
        let mut t = shared.lock();
        for i in 0..t.records.len() {
            let r = t.records[i];
            if r.fd < 0 || r.deadline_ms == 0 {
                continue;
            }
            if r.deadline_ms <= now_ms {
                expired.push(shared.take(&mut t, i as u32));
            } else {
                next = Some(next.map_or(r.deadline_ms, |n| n.min(r.deadline_ms)));
            }
        }
        t.next_sweep = next.and_then(|ms| shared.instant(ms));
    }
    for r in expired {
        shared.close(r);
    }
}

/// Hands the pages freed by many parkings (each ended a task) back to the system, once
/// [`TRIM_AFTER`] changes have been followed by [`TRIM_QUIET`] without any. Returns when to
/// look again, if a trim is due but parking is not quiet yet.
fn trim(shared: &Shared) -> Option<Instant> {
    let now = Instant::now();
    {
        let mut t = shared.lock();
        if t.changes_since_trim < TRIM_AFTER {
            return None;
        }
        if let Some(at) = t.last_change.map(|c| c + TRIM_QUIET)
            && now < at
        {
            return Some(at);
        }
        t.changes_since_trim = 0;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists and returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::{pair, runtime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    /// Tells the test how each parked connection resumed and what it read first.
    struct Probe(mpsc::UnboundedSender<(Why, usize, Vec<u8>)>);

    impl Serve for Probe {
        async fn serve(&self, _: Stream, _: ConnContext) {}

        fn resume(
            &self,
            mut stream: Stream,
            resumed: Resumed,
            _: ConnContext,
        ) -> impl Future<Output = ()> + Send {
            let tx = self.0.clone();
            async move {
                let mut buf = [0u8; 64];
                let n = match resumed.why {
                    Why::Readable => stream.read(&mut buf).await.unwrap_or(0),
                    _ => 0,
                };
                let _ = tx.send((resumed.why, resumed.service, buf[..n].to_vec()));
                if n > 0 {
                    let _ = stream.write_all(&buf[..n]).await;
                }
            }
        }
    }

    struct World {
        parking: Parking,
        limit: Arc<Semaphore>,
        slot: &'static Slot,
        stop: CancellationToken,
        resumed: mpsc::UnboundedReceiver<(Why, usize, Vec<u8>)>,
        conns: TaskTracker,
    }

    const CAP: usize = 10;

    /// A worker's parking with its driver running, a cap of [`CAP`] and a slot of its own.
    fn world() -> World {
        let limit = Arc::new(Semaphore::new(CAP));
        let slot: &'static Slot = Box::leak(Box::new(Slot::new()));
        let parking = Parking::new(Arc::clone(&limit), slot).unwrap();
        let (tx, resumed) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let conns = TaskTracker::new();
        tokio::spawn(
            Driver {
                parking: parking.clone(),
                service: Arc::new(Probe(tx)),
                conns: conns.clone(),
                stop: stop.clone(),
                targets: Targets::default(),
                reclaim: Reclaimer::default(),
            }
            .run(),
        );
        World {
            parking,
            limit,
            slot,
            stop,
            resumed,
            conns,
        }
    }

    impl World {
        /// What the parked connections hold: (parked, permits taken, gauge).
        fn held(&self) -> (usize, usize, u32) {
            (
                self.parking.parked(),
                CAP - self.limit.available_permits(),
                self.slot.active_conns.load(Ordering::Relaxed),
            )
        }

        /// Waits (boundedly) until nothing is held any more.
        async fn settle(&self) {
            // Done tasks give back what they held; the driver runs in between.
            for _ in 0..500 {
                if self.held() == (0, 0, 0) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_parked_connection_resumes_with_its_bytes() {
        runtime().block_on(async {
            let mut w = world();
            let (stream, mut client) = pair().await;
            let spot = Spot::new(&w.parking, 3);
            assert!(spot.park(stream, None, false).is_ok());
            assert_eq!(
                w.held(),
                (1, 1, 1),
                "a parked connection holds a permit and counts"
            );
            client.write_all(b"hello").await.unwrap();
            let (why, service, bytes) = tokio::time::timeout(WAIT, w.resumed.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (why, service, &bytes[..]),
                (Why::Readable, 3, &b"hello"[..])
            );
            // The resumed connection still works both ways.
            let mut back = [0u8; 5];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"hello");
            drop(client);
            w.settle().await;
            assert_eq!(
                w.held(),
                (0, 0, 0),
                "a finished connection gives everything back"
            );
        });
    }

    #[test]
    fn the_idle_deadline_closes_a_parked_connection() {
        runtime().block_on(async {
            let w = world();
            let (stream, mut client) = pair().await;
            let deadline = Instant::now() + Duration::from_millis(300);
            assert!(
                Spot::new(&w.parking, 0)
                    .park(stream, Some(deadline), false)
                    .is_ok()
            );
            let mut buf = [0u8; 1];
            let n = tokio::time::timeout(WAIT, client.read(&mut buf))
                .await
                .unwrap();
            assert_eq!(n.unwrap(), 0, "closed, with nothing sent");
            // Within a sweep or so of its deadline; the margin is for a loaded machine (1.24 s
            // late was seen at load 15-20), the point is that the sweep closes it at all and
            // not, say, one keep-alive or idle timeout later.
            let late = Instant::now().saturating_duration_since(deadline);
            assert!(
                late < SWEEP_EVERY + Duration::from_secs(3),
                "closed {late:?} late"
            );
            w.settle().await;
            assert_eq!(w.held(), (0, 0, 0));
        });
    }

    #[test]
    fn a_peer_that_closes_while_parked_is_cleaned_up() {
        runtime().block_on(async {
            let mut w = world();
            let (stream, client) = pair().await;
            assert!(Spot::new(&w.parking, 1).park(stream, None, false).is_ok());
            drop(client);
            let (why, _, bytes) = tokio::time::timeout(WAIT, w.resumed.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (why, bytes.len()),
                (Why::Readable, 0),
                "resumed to read its EOF"
            );
            w.settle().await;
            assert_eq!(w.held(), (0, 0, 0));
        });
    }

    #[test]
    fn a_stop_resumes_every_parked_connection_and_nothing_parks_after() {
        runtime().block_on(async {
            let mut w = world();
            let mut clients = Vec::new();
            for _ in 0..3 {
                let (stream, client) = pair().await;
                assert!(Spot::new(&w.parking, 2).park(stream, None, false).is_ok());
                clients.push(client);
            }
            w.conns.close();
            w.stop.cancel();
            // The drain cannot end before every parked connection is back in a task.
            tokio::time::timeout(WAIT, w.conns.wait()).await.unwrap();
            for _ in 0..3 {
                assert_eq!(w.resumed.recv().await.unwrap().0, Why::Stop);
            }
            let (stream, _client) = pair().await;
            let spot = Spot::new(&w.parking, 2);
            assert!(spot.park_at(Instant::now(), None).is_none());
            assert!(spot.park(stream, None, false).is_err());
            w.settle().await;
            assert_eq!(w.held(), (0, 0, 0));
        });
    }

    #[test]
    fn a_full_worker_does_not_park_and_an_evicted_connection_frees_its_place() {
        runtime().block_on(async {
            let w = world();
            // Every permit in use (the connection's own among them).
            let taken = Arc::clone(&w.limit).acquire_many_owned(CAP as u32).await;
            let (stream, _c1) = pair().await;
            let stream = match Spot::new(&w.parking, 0).park(stream, None, true) {
                Ok(_) => panic!("parked at the cap"),
                Err(s) => s,
            };
            drop(taken);
            let (other, mut c2) = pair().await;
            assert!(Spot::new(&w.parking, 0).park(other, None, false).is_ok());
            assert!(Spot::new(&w.parking, 0).park(stream, None, true).is_ok());
            let spare = w.parking.spare().unwrap();
            assert_eq!(spare.count(), 1, "only the kept-alive one may be evicted");
            assert!(spare.close_one());
            assert!(!spare.close_one());
            assert_eq!(w.held(), (1, 1, 1));
            // The other one is still parked, and still there.
            c2.write_all(b"x").await.unwrap();
        });
    }

    #[test]
    fn a_wake_resumes_a_parked_connection_once() {
        runtime().block_on(async {
            let mut w = world();
            let (stream, _client) = pair().await;
            let key = Spot::new(&w.parking, 5).park(stream, None, false).unwrap();
            w.parking.wake(key);
            w.parking.wake(key);
            let (why, service, _) = tokio::time::timeout(WAIT, w.resumed.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((why, service), (Why::Woken, 5));
            w.settle().await;
            assert!(w.resumed.try_recv().is_err(), "a stale key wakes nothing");
        });
    }

    #[test]
    fn a_record_is_small() {
        // 24 before the tag chat needs to find its member again.
        assert_eq!(std::mem::size_of::<Record>(), 32);
    }
}
