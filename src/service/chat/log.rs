//! The room's log: every line for the members of this worker, stored once in delivery order,
//! which each member's writer copies from its own position. Owns only bytes and offsets: who
//! reads where is the room's business ([`super::room`]).

use std::collections::VecDeque;

use bytes::BytesMut;

/// The log's unit of allocation: lines are appended to the newest chunk while they fit.
pub(super) const CHUNK: usize = 64 * 1024;

/// The room's traffic in this worker, stored once in delivery order: lines from this worker's
/// members and from the other workers (through the bus). Positions are byte offsets from the
/// worker's start, so they only grow; each member's writer keeps its own.
///
/// Why not a queue per member (the first design): a line for 1,000 members was 1,000 queue
/// pushes, each a reference count and a lock, and the benchmark's profile was dominated by
/// them. Here a line is one copy into the newest chunk, and a member's writer copies a run of
/// lines at once.
#[derive(Default)]
pub(super) struct Log {
    /// Whole lines (a line never straddles two chunks); `chunks[0]` starts at `base`.
    pub(super) chunks: VecDeque<Vec<u8>>,
    /// Offset of the first byte still kept.
    pub(super) base: u64,
    /// Offset just past the last byte appended.
    pub(super) head: u64,
    /// A chunk every reader has passed, kept for the next one instead of a new allocation.
    spare: Option<Vec<u8>>,
}

impl Log {
    /// Appends `bytes` (whole lines) and returns where they start. True in the second place
    /// when a new chunk was started: the caller then trims what nobody needs any more.
    pub(super) fn append(&mut self, bytes: &[u8]) -> (u64, bool) {
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
    pub(super) fn copy(&self, mut from: u64, to: u64, buf: &mut BytesMut) {
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
    pub(super) fn trim(&mut self, needed: u64) {
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
