//! The scoreboard: the only memory the arbiter and its workers both touch.
//!
//! One `memfd` mapped `MAP_SHARED` before the first fork, so every worker inherits the same
//! pages. Each worker owns one cache-line slot holding its heartbeat and live counters; the
//! arbiter reads them without asking the worker anything, which is how a worker that is alive
//! but wedged (stopped, spinning, blocked in a syscall) is still detected. Integers and
//! timestamps only: no pointers, no locks, no heap, nothing a crashed writer can leave
//! half-built.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapMut;

/// Slots in one scoreboard: workers (up to [`crate::config::MAX_WORKERS`]), doubled for the
/// overlap of a reload, plus room for helper processes.
pub const SLOTS: usize = 2 * crate::config::MAX_WORKERS + 16;

/// The scoreboard's size in bytes: a binary upgrade adopts only a memfd of this size.
pub const BYTES: u64 = (SLOTS * std::mem::size_of::<Slot>()) as u64;

/// The bus hub's slot: the last one. [`Scoreboard::claim_worker`] never hands it out, so a
/// hub and a worker can never share a heartbeat.
pub const HUB_SLOT: usize = SLOTS - 1;

/// What a slot's worker is doing, as stored in [`Slot::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SlotState {
    /// No process.
    Free = 0,
    /// Forked, building its runtime.
    Booting = 1,
    /// Accepting connections.
    Ready = 2,
    /// Told to stop: no longer accepting, finishing its connections.
    Stopping = 3,
}

/// One worker's cache line. Written by that worker (heartbeat, counters, state) and by the
/// arbiter only while no process owns it (reset before fork).
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct Slot {
    /// The worker's pid, set by the arbiter after fork.
    pub pid: AtomicU32,
    /// A [`SlotState`] as `u32`.
    pub state: AtomicU32,
    /// `CLOCK_MONOTONIC` in milliseconds at the last heartbeat; the clock is system-wide, so
    /// both sides compare the same timeline.
    pub last_beat_ms: AtomicU64,
    /// The reload generation the worker was started in.
    pub generation: AtomicU64,
    /// Connections being served now.
    pub active_conns: AtomicU32,
    _pad: u32,
    /// Connections accepted since boot.
    pub accepted: AtomicU64,
    /// Requests (or messages) handled since boot, for services that count them.
    pub requests: AtomicU64,
    /// Bytes written to clients since boot.
    pub bytes_out: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    /// A zeroed slot outside the shared mapping, for a service run outside a worker (see
    /// [`crate::service::ConnContext::detached`]); the arbiter never reads it.
    pub const fn new() -> Slot {
        Slot {
            pid: AtomicU32::new(0),
            state: AtomicU32::new(0),
            last_beat_ms: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            active_conns: AtomicU32::new(0),
            _pad: 0,
            accepted: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }
}

static INSTALLED: std::sync::OnceLock<&'static Scoreboard> = std::sync::OnceLock::new();

/// The shared mapping. Created once by the arbiter and leaked, so `&'static Slot` references
/// stay valid in the arbiter and in every forked worker for the life of the process.
pub struct Scoreboard {
    map: MmapMut,
    /// The memfd behind the mapping, close-on-exec. Kept so a binary upgrade can hand it to
    /// the new image ([`Scoreboard::fd`], [`Scoreboard::adopt`]): the workers it already forked
    /// keep writing the same pages.
    file: std::fs::File,
}

impl Scoreboard {
    /// Creates the shared pages (zeroed: every slot [`SlotState::Free`]).
    ///
    /// # Errors
    /// If `memfd_create`, `ftruncate` or `mmap` fails (out of memory, seccomp).
    pub fn create() -> io::Result<&'static Scoreboard> {
        use rustix::fs::{MemfdFlags, memfd_create};
        let fd = memfd_create("oxicorn-scoreboard", MemfdFlags::CLOEXEC)?;
        let len = SLOTS * std::mem::size_of::<Slot>();
        rustix::fs::ftruncate(&fd, len as u64)?;
        let file = std::fs::File::from(fd);
        // SAFETY: the memfd is ours alone and sized above; nothing truncates it afterwards.
        // `map_mut` maps MAP_SHARED, so writes in a forked child are seen by the parent
        // (`MmapMut::map_anon` would be MAP_PRIVATE and silently not shared).
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(Box::leak(Box::new(Scoreboard { map, file })))
    }

    /// Maps a scoreboard memfd handed over by the image this process ran before an `execve`
    /// (a binary upgrade or its rollback), and marks it close-on-exec again. The slots, and
    /// the workers writing them, carry on.
    ///
    /// # Errors
    /// If `fd` is not a memfd of the scoreboard's size, or cannot be mapped.
    pub fn adopt(fd: std::os::fd::OwnedFd) -> io::Result<&'static Scoreboard> {
        let file = std::fs::File::from(fd);
        let len = SLOTS * std::mem::size_of::<Slot>();
        if file.metadata()?.len() != len as u64 {
            return Err(io::Error::other(
                "the handed-over scoreboard has another size (a different slot layout)",
            ));
        }
        rustix::io::fcntl_setfd(&file, rustix::io::FdFlags::CLOEXEC)?;
        // SAFETY: as in `create`: the memfd has the right size (checked), only oxicorn's
        // processes map it, and nothing truncates it.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(Box::leak(Box::new(Scoreboard { map, file })))
    }

    /// The memfd, for handing over across `execve` (the caller clears close-on-exec).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    /// The scoreboard this process's workers were given: the first one a worker slot was
    /// claimed from ([`Scoreboard::claim_worker`], which the arbiter calls before every fork,
    /// however it got its board), so every worker inherits it. `None` in a process that never
    /// claimed one (then a worker does not balance).
    pub fn installed() -> Option<&'static Scoreboard> {
        INSTALLED.get().copied()
    }

    /// The worker slots (never the hub's) that are [`SlotState::Ready`] now, but `me`: the
    /// peers a worker compares its load with. Scans every slot (about 1,000 cache lines), so
    /// callers cache the answer for a while rather than call it per connection.
    pub fn ready_peers(&'static self, me: &Slot) -> Vec<&'static Slot> {
        (0..HUB_SLOT)
            .map(|i| self.slot(i))
            .filter(|s| !std::ptr::eq(*s, me) && s.state() == SlotState::Ready)
            .collect()
    }

    /// Claims a free worker slot (any but [`HUB_SLOT`]) for a child about to be forked and
    /// resets it (fresh heartbeat, zeroed counters); `None` when every worker slot is
    /// taken. The slot stays
    /// taken until [`Scoreboard::release`]: a slot whose child died but is not reaped yet is
    /// not free. Only the arbiter claims and releases, so "free" cannot change under it.
    pub fn claim_worker(&'static self, generation: u64) -> Option<usize> {
        let _ = INSTALLED.set(self);
        (0..HUB_SLOT).find(|&i| self.claim(i, generation))
    }

    /// Claims [`HUB_SLOT`] for the hub about to be forked; false if a hub still holds it.
    pub fn claim_hub(&'static self, generation: u64) -> bool {
        self.claim(HUB_SLOT, generation)
    }

    fn claim(&'static self, index: usize, generation: u64) -> bool {
        let slot = self.slot(index);
        let taken = slot.state.compare_exchange(
            SlotState::Free as u32,
            SlotState::Booting as u32,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if taken.is_err() {
            return false;
        }
        slot.reset(generation);
        true
    }

    /// Gives a slot back once its child is reaped (or its fork failed).
    pub fn release(&'static self, index: usize) {
        let slot = self.slot(index);
        slot.pid.store(0, Ordering::Relaxed);
        slot.set_state(SlotState::Free);
    }

    /// The slot at `index` (0-based).
    ///
    /// # Panics
    /// If `index >= SLOTS`.
    pub fn slot(&'static self, index: usize) -> &'static Slot {
        assert!(index < SLOTS, "scoreboard slot {index} out of range");
        let base = self.map.as_ptr() as *const Slot;
        // SAFETY: the mapping is page-aligned, holds SLOTS slots, lives for the whole process
        // (leaked in `create`), and `Slot` is made of atomics only, for which every bit pattern
        // (including the initial zeroes) is valid and concurrent access is defined.
        unsafe { &*base.add(index) }
    }
}

impl Slot {
    /// Prepares a free slot for a worker about to be forked: a fresh heartbeat (so a slow boot
    /// is timed from now), zeroed counters. Called by the claims, which hand out slots.
    fn reset(&self, generation: u64) {
        self.pid.store(0, Ordering::Relaxed);
        self.generation.store(generation, Ordering::Relaxed);
        self.active_conns.store(0, Ordering::Relaxed);
        self.accepted.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.bytes_out.store(0, Ordering::Relaxed);
        self.last_beat_ms.store(monotonic_ms(), Ordering::Relaxed);
        self.set_state(SlotState::Booting);
    }

    /// Marks this child alive. The child layer calls it every `--timeout / 4` (between 50 ms
    /// and 1 s: `child::beat_interval`); the arbiter kills a child whose last call is older
    /// than `--timeout` (`murder_workers`), so a beat may be up to three intervals late.
    pub fn notify(&self) {
        self.last_beat_ms.store(monotonic_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the last [`Slot::notify`].
    pub fn beat_age_ms(&self) -> u64 {
        monotonic_ms().saturating_sub(self.last_beat_ms.load(Ordering::Relaxed))
    }

    /// Records what the worker is doing.
    pub fn set_state(&self, state: SlotState) {
        self.state.store(state as u32, Ordering::Release);
    }

    /// What the worker last said it was doing.
    pub fn state(&self) -> SlotState {
        match self.state.load(Ordering::Acquire) {
            1 => SlotState::Booting,
            2 => SlotState::Ready,
            3 => SlotState::Stopping,
            _ => SlotState::Free,
        }
    }
}

/// `CLOCK_MONOTONIC` in milliseconds: the same clock in every process, unaffected by changes
/// to the wall clock, and still running while a process is stopped.
///
/// Read through libc (nix) rather than rustix's own vDSO lookup, which faults under valgrind
/// (its auxiliary vector has no vDSO; measured 2026-11-30).
pub fn monotonic_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1000 + ts.tv_nsec() as u64 / 1_000_000,
        // Only a bad clock id or pointer fails (EINVAL, EFAULT): never for this one.
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_never_handed_out_twice_and_the_hub_s_is_reserved() {
        let board = Scoreboard::create().unwrap();
        let mut claimed = Vec::new();
        while let Some(i) = board.claim_worker(1) {
            claimed.push(i);
        }
        assert_eq!(claimed, (0..HUB_SLOT).collect::<Vec<_>>());
        assert!(board.claim_hub(1));
        assert!(!board.claim_hub(1), "the hub's slot is taken");
        board.release(5);
        assert_eq!(board.claim_worker(2), Some(5));
        assert_eq!(board.slot(5).generation.load(Ordering::Relaxed), 2);
        board.release(HUB_SLOT);
        assert!(board.claim_hub(3));
    }

    #[test]
    fn a_forked_child_writes_what_the_parent_reads() {
        let board = Scoreboard::create().unwrap();
        let slot = board.slot(board.claim_worker(7).unwrap());
        assert_eq!(slot.state(), SlotState::Booting);
        // SAFETY: the child only stores to atomics and calls _exit; it touches no lock.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                slot.requests.store(42, Ordering::Relaxed);
                slot.set_state(SlotState::Ready);
                unsafe { nix::libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
        assert_eq!(slot.requests.load(Ordering::Relaxed), 42);
        assert_eq!(slot.state(), SlotState::Ready);
        assert_eq!(slot.generation.load(Ordering::Relaxed), 7);
        assert!(slot.beat_age_ms() < 60_000);
    }
}
