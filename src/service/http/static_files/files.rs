//! Opening files below the root, so that no path and no symlink can lead out of it.
//!
//! Every open is `openat2(root_fd, relative, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` (Linux
//! 5.6+): the kernel refuses, with `EXDEV`, any resolution that would leave the root, whether by
//! `..`, an absolute symlink or a relative one that climbs out, and it checks each component at
//! open time, so there is no window between a check and the open for a swapped symlink.
//! `RESOLVE_BENEATH` also refuses absolute symlinks that point back *inside* the root; for
//! those (rare) cases we open normally and accept the file if `/proc/self/fd` shows it below the
//! root. Where `openat2` does not exist (`ENOSYS`: a kernel before 5.6, valgrind, an old
//! seccomp profile) every open is that fallback: `openat`, then the same check. Opens are
//! blocking syscalls on the worker's thread, as in nginx without aio: on a warm page cache
//! they take microseconds, less than a hop to a thread pool.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a path could not be opened, as the client will be told.
#[derive(Debug)]
pub enum OpenError {
    /// 404: nothing there (or a name the filesystem refuses).
    NotFound,
    /// 403: it exists but is not ours to serve (permissions, a symlink out of the root).
    Forbidden,
    /// 500: anything else.
    Other(io::Error),
}

/// An open file with the metadata it was opened with. The descriptor is kept for the whole
/// response, so a rename or unlink of the path mid-send does not change what is sent.
#[derive(Debug)]
pub struct Opened {
    /// The open file or directory (shared with the open-file cache).
    pub file: Arc<File>,
    /// Regular file, directory or other.
    pub kind: FileType,
    /// Length in bytes when opened; the most that is ever sent.
    pub len: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Inode number, for the ETag.
    pub ino: u64,
    /// Hard links: 0 once the path was unlinked or renamed over.
    pub links: u64,
    /// Which precompressed siblings exist, when the open-file cache already knows (the
    /// [`FileCache::siblings`] mask of the entry it was served from): the caller need not
    /// look the path up a second time to ask. `None` when not known.
    pub siblings: Option<u8>,
    /// The file's bytes, exactly `len` of them, when the open-file cache holds them (see
    /// [`FileCache`]): what `len`, `mtime` and `ino` describe, to be sent instead of reading
    /// `file`. `None`: read `file`.
    pub bytes: Option<Bytes>,
}

impl Opened {
    /// A strong validator: inode, size and modification time to the nanosecond. Any write,
    /// truncation or replacement changes at least one of them.
    pub fn etag(&self) -> String {
        let ns = self
            .mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        // Hex digits appended by hand: `format!` with a u128 was a visible share of a
        // request's user time (issue 12).
        let mut tag = String::with_capacity(2 + 16 + 1 + 16 + 1 + 32);
        tag.push('"');
        push_hex(&mut tag, u128::from(self.ino));
        tag.push('-');
        push_hex(&mut tag, u128::from(self.len));
        tag.push('-');
        push_hex(&mut tag, ns);
        tag.push('"');
        tag
    }
}

/// Appends `n` in lower-case hex without leading zeros (`0` for zero), as `{:x}` does.
fn push_hex(s: &mut String, n: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let shown = (128 - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..shown).rev() {
        s.push(char::from(DIGITS[((n >> (4 * i)) & 0xf) as usize]));
    }
}

/// Opens the served directory itself, once per worker, as the anchor of every lookup.
///
/// # Errors
/// If the directory cannot be opened (gone since the config was checked, or no permission).
pub fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `rel` (from [`super::path::CleanPath::relative`]) below `root_fd`, following
/// symlinks only where they stay below `root` unless `follow_symlinks`.
///
/// # Errors
/// An [`OpenError`] saying which status to answer.
pub fn open(
    root_fd: &OwnedFd,
    root: &Path,
    rel: &Path,
    follow_symlinks: bool,
) -> Result<Opened, OpenError> {
    // NONBLOCK: opening a FIFO for reading would otherwise block the worker until a writer
    // appears. It changes nothing for regular files.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    let resolve = if follow_symlinks {
        ResolveFlags::NO_MAGICLINKS
    } else {
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
    };
    let fd = match rustix::fs::openat2(root_fd, rel, flags, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(Errno::XDEV) if !follow_symlinks => open_checked(root_fd, root, rel, flags)?,
        Err(Errno::NOSYS) => open_without_openat2(root_fd, root, rel, flags, follow_symlinks)?,
        Err(e) => return Err(classify(e)),
    };
    stat(Arc::new(File::from(fd)))
}

/// Where `openat2` does not exist (`ENOSYS`: Linux before 5.6, valgrind, a seccomp profile
/// that predates it): `openat`, then the same check as [`open_checked`]'s, so a symlink may
/// still lead only below the root (with `follow_symlinks` anywhere, as with `openat2`).
fn open_without_openat2(
    root_fd: &OwnedFd,
    root: &Path,
    rel: &Path,
    flags: OFlags,
    follow_symlinks: bool,
) -> Result<OwnedFd, OpenError> {
    let fd = rustix::fs::openat(root_fd, rel, flags, Mode::empty()).map_err(classify)?;
    if follow_symlinks {
        Ok(fd)
    } else {
        below_root(fd, root)
    }
}

/// Fallback for an absolute symlink: open it as the kernel resolves it, keep it only if the
/// file it reached lies below the root.
fn open_checked(
    root_fd: &OwnedFd,
    root: &Path,
    rel: &Path,
    flags: OFlags,
) -> Result<OwnedFd, OpenError> {
    let fd = rustix::fs::openat2(
        root_fd,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(classify)?;
    below_root(fd, root)
}

/// `fd` if the file it is open on lies below `root` (as `/proc/self/fd` names it: the file
/// opened, so no later rename or swapped symlink can change the answer), else 403.
fn below_root(fd: OwnedFd, root: &Path) -> Result<OwnedFd, OpenError> {
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let real = std::fs::read_link(link).map_err(OpenError::Other)?;
    if real.starts_with(root) {
        Ok(fd)
    } else {
        Err(OpenError::Forbidden)
    }
}

fn stat(file: Arc<File>) -> Result<Opened, OpenError> {
    let st = rustix::fs::fstat(file.as_fd()).map_err(|e| OpenError::Other(e.into()))?;
    let mtime = SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(st.st_mtime).unwrap_or(0),
            u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        );
    Ok(Opened {
        file,
        kind: FileType::from_raw_mode(st.st_mode),
        len: u64::try_from(st.st_size).unwrap_or(0),
        mtime,
        ino: st.st_ino,
        links: st.st_nlink,
        siblings: None,
        bytes: None,
    })
}

fn classify(e: Errno) -> OpenError {
    match e {
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG | Errno::ILSEQ | Errno::INVAL => {
            OpenError::NotFound
        }
        Errno::ACCESS | Errno::PERM | Errno::XDEV | Errno::LOOP => OpenError::Forbidden,
        other => OpenError::Other(other.into()),
    }
}

/// How long a cached descriptor may stand for its path without a new path lookup (or the
/// `open_file_cache_valid` window if longer, see [`FileCache`]). Writes in place and
/// replacements are seen at once all the same by default (the `fstat` per request); this only
/// bounds how long a path renamed away while still linked, a retargeted symlink, changed
/// permissions or a new precompressed sibling go unseen. 1 s made a working set of 10,000
/// files (issue 12) look every path up again each second: with 2 workers at ~25,000
/// requests/s each, two requests in five paid an `openat2`, an `fstat` and a `close` more;
/// at 10 s it is one in twenty-five (nginx's `open_file_cache_valid` defaults to 60 s).
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// Most cached files per worker, and at most half the descriptor limit
/// ([`FileCache::for_fd_limit`]; the directories of [`FileCache::siblings`] add at most a
/// quarter of that), so the cache leaves connections at least a third of the descriptors.
/// As the tuned nginx of issue 12 (`open_file_cache max=20000`): a working set of 10,000
/// files fits, where 4,096 made most requests of that benchmark a path walk. (A quarter of a
/// 20,000 limit, 5,000 entries, still sent half of them to `openat2`.)
pub const CACHE_ENTRIES: usize = 20_000;

/// Variant-miss entries kept per cached file: each file has up to three precompressed
/// siblings, usually all absent.
const MISSES_PER_ENTRY: usize = 3;

/// Names read from a directory at most, for [`FileCache::siblings`]' filter; a larger
/// directory is not read (its files are probed one by one).
const DIR_NAMES_MOST: usize = 100_000;

/// A directory's answer for [`FileCache::siblings`]: does any name end in a sibling suffix.
#[derive(Debug)]
struct DirNames {
    dir: Arc<File>,
    /// When its path was looked up.
    at: Instant,
    /// Inode and mtime when the names were read.
    version: (u64, SystemTime),
    any: bool,
}

/// A cache key: the relative path's bytes.
fn key(rel: &Path) -> &[u8] {
    rel.as_os_str().as_encoded_bytes()
}

/// One cached descriptor.
#[derive(Debug)]
struct Entry {
    file: Arc<File>,
    /// When the path was looked up (the entry stands for it until [`FileCache::path_ttl`]
    /// later).
    at: Instant,
    /// Size, mtime and inode from the last `fstat`, and when it was taken: trusted without
    /// another until [`FileCache::valid`] later (never, with the default zero).
    len: u64,
    mtime: SystemTime,
    ino: u64,
    checked: Instant,
    /// Which precompressed siblings exist (bit `i` for suffix `i` of the caller's list), found
    /// once per entry by [`FileCache::siblings`]; `None` until asked.
    siblings: Option<u8>,
    /// The file's bytes as `len`, `mtime` and `ino` describe them, when held (see
    /// [`FileCache`]).
    body: Option<Body>,
}

/// A small file's bytes held in memory by its [`Entry`].
#[derive(Debug)]
struct Body {
    bytes: Bytes,
    /// Which fill this is: the [`Files::ring`] item that names it carries the same number, so
    /// an item left behind by an entry since dropped or refilled is recognized as stale.
    fill: u64,
    /// Served since the clock hand last passed it: it is passed over once more before its
    /// bytes are let go.
    used: bool,
}

/// Files up to this size (bytes) have their contents held in memory by the cache while the
/// validity window trusts them (see [`FileCache`]). 16 KiB: the usual page asset, where the
/// `pread` was a third of a keep-alive request's syscalls; larger files cost more to copy
/// than the syscall saves and go out with `pread` or `sendfile` as before.
pub const HELD_FILE_MOST: u64 = 16 * 1024;

/// Bytes held in memory at most per worker, all files together (see [`FileCache`]): 512
/// files of the largest held size, or 8,192 of 1 KiB.
pub const HELD_BYTES: usize = 8 * 1024 * 1024;

/// What the cache's lock guards: the entries, and the account of the bytes they hold.
#[derive(Debug, Default)]
struct Files {
    map: HashMap<Box<[u8]>, Entry>,
    /// Entries holding bytes, oldest fill first, each with its [`Body::fill`]: the clock
    /// that chooses whose bytes go when a fill needs room. Items of entries since dropped
    /// stay until the hand reaches them or the ring is compacted.
    ring: VecDeque<(Box<[u8]>, u64)>,
    /// Bytes held, all bodies together; at most the cache's budget.
    held: usize,
    /// Entries holding bytes (the live items of `ring`).
    holders: usize,
    /// The next [`Body::fill`] number.
    fills: u64,
}

impl Files {
    /// Drops the entry at `k`, and the account of its bytes.
    fn remove(&mut self, k: &[u8]) {
        self.drop_body(k);
        self.map.remove(k);
    }

    /// Lets go of the bytes held by the entry at `k` (it stays cached, served from its
    /// descriptor).
    fn drop_body(&mut self, k: &[u8]) {
        if let Some(b) = self.map.get_mut(k).and_then(|e| e.body.take()) {
            self.held -= b.bytes.len();
            self.holders -= 1;
        }
    }

    /// Makes room for `len` more bytes within `budget`, letting go of the bytes of entries
    /// not served since the clock hand last passed them (a CLOCK, the usual cheap
    /// approximation of least-recently-used: each step is O(1), and a served entry is passed
    /// over once). False when `len` cannot fit at all.
    fn make_room(&mut self, len: usize, budget: usize) -> bool {
        if len > budget {
            return false;
        }
        while self.held + len > budget {
            let Some((k, fill)) = self.ring.pop_front() else {
                // Nothing left to let go of: the account and the ring disagree, which the
                // code above never lets happen; hold nothing rather than overrun.
                return false;
            };
            let Some(b) = self
                .map
                .get_mut(&k)
                .and_then(|e| e.body.as_mut())
                .filter(|b| b.fill == fill)
            else {
                continue; // stale: that entry was dropped or refilled since
            };
            if std::mem::take(&mut b.used) {
                self.ring.push_back((k, fill));
            } else {
                self.drop_body(&k);
            }
        }
        // Items of dropped entries pile up while the budget has room; past twice the live
        // ones, sweep them out (amortized O(1) per fill).
        if self.ring.len() > 2 * self.holders + 64 {
            let map = &self.map;
            self.ring.retain(|(k, fill)| {
                map.get(k)
                    .and_then(|e| e.body.as_ref())
                    .is_some_and(|b| b.fill == *fill)
            });
        }
        true
    }
}

/// A per-worker cache of open regular files, like nginx's `open_file_cache`, so a hot file costs
/// one `fstat` instead of a path walk, an open and a close.
///
/// Revalidation is that `fstat` on the cached descriptor: an in-place write shows as a new
/// size or mtime (new ETag, new length) at once, and an unlink or rename-over shows as zero
/// links, which drops the entry and looks the path up again. What only a path lookup would
/// notice (the file renamed away while still linked, a symlink retargeted, permissions
/// changed) is seen within [`CACHE_TTL`]. Directories are never cached, and misses only for
/// [`FileCache::open_variant`] (a precompressed sibling that appears is seen within the TTL).
///
/// With a validity (`--open-file-cache-valid`, nginx's `open_file_cache_valid`) the `fstat`
/// is skipped too: an entry's size and mtime are trusted for that long after they were
/// taken, and its path is looked up again after the longer of the validity and
/// [`CACHE_TTL`]. Within the window a file renamed over or deleted is still served from the
/// old descriptor, and a file written in place is served as it was when last checked:
///
/// - A file of at most [`HELD_FILE_MOST`] bytes has its bytes read into memory when its
///   size and mtime are taken (when it is opened, and when the window ends and the next
///   request checks it again), and is served from them, head and body in one `write` without
///   a `pread`: within the window a write in place is not seen at all (old bytes, old length,
///   old ETag, consistently), and after it the next request sees the new bytes with the new
///   ETag. The bytes are kept only if an `fstat` after reading them still shows the size,
///   mtime and inode they were read under, so they are what the ETag describes (as far as
///   an mtime-based tag can tell: two writes of the same size within one tick of the
///   filesystem's clock look alike, to this as to any server that tags by mtime). At most
///   [`HELD_BYTES`] are held per worker, all files together; a fill that needs room lets go
///   of the bytes of files not served for longest (a CLOCK), and a file that does not fit is
///   served from its descriptor.
/// - A larger file (or a small one whose bytes are not held) is read from the descriptor:
///   its old length and ETag, and the file's current bytes up to that length. A file that
///   turns out shorter than the trusted length is never padded or overrun: the response
///   writer reads at most the promised length and answers again or closes short (see
///   [`super::response::OnShort`]), and the caller then calls [`FileCache::distrust`] so the
///   next request starts from a fresh `fstat` rather than falling short again.
///
/// Without a validity (the default) no bytes are held: the `fstat` per request makes a
/// write in place visible to the next response, which held bytes could not promise.
#[derive(Debug, Default)]
pub struct FileCache {
    /// The entries and their held bytes. The worker's runtime is single-threaded, so the
    /// lock is never contended; it is a Mutex (not a RefCell) only because spawned connection
    /// futures must be `Send`. Keyed by the relative path's bytes: paths arrive normalized,
    /// and hashing a `Path` walks its components (a visible cost in the many-files profile).
    files: Mutex<Files>,
    /// Variant paths found missing, and when: every request for a file asks for its three
    /// precompressed siblings, which are usually absent, and three failed path walks per
    /// request would cost more than the request. Same lock reasoning as `files`.
    misses: Mutex<HashMap<Box<[u8]>, Instant>>,
    /// Directories of cached files: whether any name in them ends in a sibling suffix, so
    /// that a file whose directory has none needs no sibling probes (see
    /// [`FileCache::siblings`]). At most a quarter of `capacity` entries, each holding a
    /// directory descriptor. Same lock reasoning as `files`.
    dirs: Mutex<HashMap<Box<[u8]>, DirNames>>,
    /// Entries kept at most; 0 turns the cache off.
    capacity: usize,
    /// How long an entry's `fstat` is trusted; zero takes one per request.
    valid: Duration,
    /// Bytes held in memory at most, all files together: [`HELD_BYTES`] with a validity,
    /// else 0 (none held).
    held_budget: usize,
}

impl FileCache {
    /// A cache of up to `capacity` descriptors, trusting an `fstat` for `valid` (zero: an
    /// `fstat` per request).
    /// With a validity, up to [`HELD_BYTES`] of small files' bytes are held too.
    pub fn new(capacity: usize, valid: Duration) -> FileCache {
        FileCache {
            files: Mutex::default(),
            misses: Mutex::default(),
            dirs: Mutex::default(),
            capacity,
            valid,
            held_budget: if valid.is_zero() { 0 } else { HELD_BYTES },
        }
    }

    /// Holds at most `budget` bytes of small files in memory instead of [`HELD_BYTES`]
    /// (none without a validity, whatever the budget: see [`FileCache`]).
    pub fn with_held_budget(mut self, budget: usize) -> FileCache {
        if !self.valid.is_zero() {
            self.held_budget = budget;
        }
        self
    }

    /// Bytes held in memory now, all files together (at most the budget).
    pub fn held_bytes(&self) -> usize {
        self.lock().held
    }

    /// Sized from this process's `RLIMIT_NOFILE`: half of it, at most [`CACHE_ENTRIES`];
    /// `valid` as for [`FileCache::new`].
    pub fn for_fd_limit(valid: Duration) -> FileCache {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        FileCache::new(
            usize::try_from(limit / 2).map_or(CACHE_ENTRIES, |n| n.min(CACHE_ENTRIES)),
            valid,
        )
    }

    /// How long an entry stands for its path: [`CACHE_TTL`], or the validity if longer (a
    /// path lookup is a revalidation too, so it comes no sooner than nginx's would).
    fn path_ttl(&self) -> Duration {
        CACHE_TTL.max(self.valid)
    }

    /// Forgets every entry holding `file`, so that the next request for its path opens and
    /// `fstat`s it afresh. Called when a response found the file shorter than the length it
    /// was served with (a write in place within the validity window); a scan of the map, but
    /// only on that rare event. Nothing to do without a validity: the next request's `fstat`
    /// sees the file as it is.
    pub fn distrust(&self, file: &Arc<File>) {
        if !self.valid.is_zero() {
            let mut files = self.lock();
            let gone: Vec<Box<[u8]>> = files
                .map
                .iter()
                .filter(|(_, e)| Arc::ptr_eq(&e.file, file))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                files.remove(&k);
            }
        }
    }

    /// Reads the bytes of the entry at `k` into memory, if it is a small file, the budget
    /// has (or can make) room, and the file still has the size, mtime and inode the entry
    /// says after they are read (an `fstat` after the read: a write in place between the
    /// entry's `fstat` and the read would otherwise pair new bytes with the old ETag).
    /// Called right after the entry's metadata was taken. Returns the bytes held.
    fn fill(&self, files: &mut Files, k: &[u8]) -> Option<Bytes> {
        let e = files.map.get(k)?;
        if e.body.is_some() || e.len > HELD_FILE_MOST || self.held_budget == 0 {
            return e.body.as_ref().map(|b| b.bytes.clone());
        }
        let len = usize::try_from(e.len).ok()?;
        if !files.make_room(len, self.held_budget) {
            return None;
        }
        let e = files.map.get_mut(k)?;
        let mut bytes = vec![0u8; len];
        let got = super::response::read_at_full(&e.file, &mut bytes, 0).ok()?;
        let now_is = stat(Arc::clone(&e.file)).ok()?;
        if got != len || (now_is.len, now_is.mtime, now_is.ino) != (e.len, e.mtime, e.ino) {
            return None;
        }
        let bytes = Bytes::from(bytes);
        let fill = files.fills;
        e.body = Some(Body {
            bytes: bytes.clone(),
            fill,
            used: false,
        });
        files.fills += 1;
        files.held += len;
        files.holders += 1;
        files.ring.push_back((k.into(), fill));
        Some(bytes)
    }

    /// [`open`], served from the cache while the entry is fresh and still linked.
    ///
    /// # Errors
    /// As [`open`].
    pub fn open(
        &self,
        root_fd: &OwnedFd,
        root: &Path,
        rel: &Path,
        follow_symlinks: bool,
    ) -> Result<Opened, OpenError> {
        self.open_at(root_fd, root, rel, follow_symlinks, Instant::now())
    }

    /// [`FileCache::open`] at `now`, an instant the caller read a moment ago (the start of
    /// the request: a clock read is ~0.3% of a kept-alive request's CPU). It stands for the
    /// present in every freshness check, and is when a new entry's metadata counts as taken.
    ///
    /// # Errors
    /// As [`open`].
    pub fn open_at(
        &self,
        root_fd: &OwnedFd,
        root: &Path,
        rel: &Path,
        follow_symlinks: bool,
        now: Instant,
    ) -> Result<Opened, OpenError> {
        let k = key(rel);
        let mut files = self.lock();
        if let Some(e) = files.map.get_mut(k) {
            if now.duration_since(e.at) < self.path_ttl() {
                if !self.valid.is_zero() && now.duration_since(e.checked) < self.valid {
                    // Trusted: no syscall at all. Only regular files with links are cached.
                    let bytes = e.body.as_mut().map(|b| {
                        b.used = true;
                        b.bytes.clone()
                    });
                    return Ok(Opened {
                        file: Arc::clone(&e.file),
                        kind: FileType::RegularFile,
                        len: e.len,
                        mtime: e.mtime,
                        ino: e.ino,
                        links: 1,
                        siblings: e.siblings,
                        bytes,
                    });
                }
                if let Ok(mut o) = stat(Arc::clone(&e.file))
                    && o.kind == FileType::RegularFile
                    && o.links > 0
                {
                    let same = (e.len, e.mtime, e.ino) == (o.len, o.mtime, o.ino);
                    (e.len, e.mtime, e.ino, e.checked) = (o.len, o.mtime, o.ino, now);
                    o.siblings = e.siblings;
                    // Unchanged, the bytes held are still the file's; changed, they go, and
                    // the new ones are read.
                    if !same {
                        files.drop_body(k);
                    }
                    o.bytes = self.fill(&mut files, k);
                    return Ok(o);
                }
            }
            files.remove(k);
        }
        drop(files);
        let mut opened = open(root_fd, root, rel, follow_symlinks)?;
        if opened.kind == FileType::RegularFile && self.capacity > 0 {
            let mut files = self.lock();
            if files.map.len() >= self.capacity {
                // Evict one arbitrary entry (HashMap order is effectively random): O(1), and
                // under a working set larger than the cache it keeps a steady hit rate where
                // clearing everything would thrash.
                if let Some(old) = files.map.keys().next().cloned() {
                    files.remove(&old);
                }
            }
            // Nothing else runs while the open is in progress (it is synchronous on the
            // worker's one thread), so no entry for `k` can be there; if one were, it goes
            // with the account of its bytes rather than being overwritten in the map.
            files.remove(k);
            files.map.insert(
                k.into(),
                Entry {
                    file: Arc::clone(&opened.file),
                    at: now,
                    len: opened.len,
                    mtime: opened.mtime,
                    ino: opened.ino,
                    checked: now,
                    siblings: None,
                    body: None,
                },
            );
            opened.bytes = self.fill(&mut files, k);
        }
        Ok(opened)
    }

    /// Which of `rel`'s precompressed siblings (`rel` + each of `suffixes`, at most 8) exist:
    /// bit `i` set for `suffixes[i]`. Found with [`FileCache::open_variant`] once per cached
    /// entry of `rel` (so at most once per [`CACHE_TTL`] while `rel` stays cached) and then
    /// answered from the entry, which [`FileCache::open`] hands on in [`Opened::siblings`]:
    /// the usual file without siblings costs no lookup beyond its own, instead of building and
    /// looking up three sibling paths. A sibling that appears
    /// is seen when the entry is next looked up (within the TTL, as a remembered miss was);
    /// one that disappears is still checked by the caller's `open_variant`. Uncached files
    /// (the cache off or full of newer entries) are probed every time.
    pub fn siblings(
        &self,
        root_fd: &OwnedFd,
        root: &Path,
        rel: &Path,
        follow_symlinks: bool,
        suffixes: &[&str],
    ) -> u8 {
        if let Some(mask) = self.lock().map.get(key(rel)).and_then(|e| e.siblings) {
            return mask;
        }
        let mut mask = 0u8;
        if !self.dir_may_have(root_fd, root, rel, follow_symlinks, suffixes) {
            if let Some(e) = self.lock().map.get_mut(key(rel)) {
                e.siblings = Some(0);
            }
            return 0;
        }
        let mut sibling = rel.as_os_str().to_owned();
        let base = sibling.len();
        for (i, suffix) in suffixes.iter().enumerate().take(8) {
            // Back to `rel`, then this suffix (one allocation for all of them).
            let mut bytes = std::mem::take(&mut sibling).into_encoded_bytes();
            bytes.truncate(base);
            bytes.extend_from_slice(suffix.as_bytes());
            // SAFETY: `rel`'s bytes (from `into_encoded_bytes`) followed by UTF-8.
            sibling = unsafe { std::ffi::OsString::from_encoded_bytes_unchecked(bytes) };
            if self
                .open_variant(root_fd, root, Path::new(&sibling), follow_symlinks)
                .is_some()
            {
                mask |= 1 << i;
            }
        }
        if let Some(e) = self.lock().map.get_mut(key(rel)) {
            e.siblings = Some(mask);
        }
        mask
    }

    /// False only when `rel`'s directory, as it is now, holds no name ending in one of
    /// `suffixes`: then no sibling can exist and none is probed. The directory's names are
    /// read once and kept with its descriptor; each later question costs one `fstat` of it
    /// (any entry added, removed or renamed changes the directory's mtime, which rereads
    /// them), and its path is looked up again after [`CACHE_TTL`] like a file's. True (probe
    /// as usual) whenever this cannot be known: the directory cannot be opened or read, or
    /// holds more than [`DIR_NAMES_MOST`] names.
    fn dir_may_have(
        &self,
        root_fd: &OwnedFd,
        root: &Path,
        rel: &Path,
        follow_symlinks: bool,
        suffixes: &[&str],
    ) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let parent = match rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let now = Instant::now();
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = dirs.get(key(parent))
            && now.duration_since(d.at) < CACHE_TTL
            && let Ok(now_is) = stat(Arc::clone(&d.dir))
            && (now_is.ino, now_is.mtime) == d.version
        {
            return d.any;
        }
        dirs.remove(key(parent));
        let Ok(opened) = open(root_fd, root, parent, follow_symlinks) else {
            return true;
        };
        if opened.kind != FileType::Directory {
            return true;
        }
        // The version is the one `open` took before reading: a change during the read shows
        // next time.
        let version = (opened.ino, opened.mtime);
        let Ok(names) = rustix::fs::Dir::read_from(opened.file.as_fd()) else {
            return true;
        };
        let mut any = false;
        for (n, item) in names.enumerate() {
            let Ok(item) = item else { return true };
            if n >= DIR_NAMES_MOST {
                return true;
            }
            let name = item.file_name().to_bytes();
            if suffixes.iter().any(|s| name.ends_with(s.as_bytes())) {
                any = true;
                break;
            }
        }
        // A quarter of the file entries: directories are few next to files, and their
        // descriptors come out of the same share of the descriptor limit.
        if dirs.len() >= self.capacity.div_ceil(4)
            && let Some(k) = dirs.keys().next().cloned()
        {
            dirs.remove(&k);
        }
        dirs.insert(
            key(parent).into(),
            DirNames {
                dir: opened.file,
                at: now,
                version,
                any,
            },
        );
        any
    }

    /// A precompressed variant (`app.js.gz`): the regular file at `rel`, or `None` when there
    /// is none (or it cannot be opened). A miss is remembered for [`CACHE_TTL`].
    pub fn open_variant(
        &self,
        root_fd: &OwnedFd,
        root: &Path,
        rel: &Path,
        follow_symlinks: bool,
    ) -> Option<Opened> {
        self.open_variant_at(root_fd, root, rel, follow_symlinks, Instant::now())
    }

    /// [`FileCache::open_variant`] at `now`, as for [`FileCache::open_at`].
    pub fn open_variant_at(
        &self,
        root_fd: &OwnedFd,
        root: &Path,
        rel: &Path,
        follow_symlinks: bool,
        now: Instant,
    ) -> Option<Opened> {
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses
            .get(key(rel))
            .is_some_and(|at| now.duration_since(*at) < CACHE_TTL)
        {
            return None;
        }
        match self.open_at(root_fd, root, rel, follow_symlinks, now) {
            Ok(o) if o.kind == FileType::RegularFile => {
                misses.remove(key(rel));
                Some(o)
            }
            _ => {
                if self.capacity > 0 {
                    if misses.len() >= self.capacity * MISSES_PER_ENTRY {
                        // As for `map`: one arbitrary entry goes.
                        if let Some(k) = misses.keys().next().cloned() {
                            misses.remove(&k);
                        }
                    }
                    misses.insert(key(rel).into(), now);
                }
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Files> {
        // A panic while holding the lock can at worst leave the account of held bytes off
        // (a fill that panicked half-way), which bounds memory a little differently but
        // serves nothing wrong, so a poisoned lock is used as it is.
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A temp directory (removed when the first value drops), its canonical path and its
    /// root descriptor, as the service opens one.
    fn temp_root() -> (tempfile::TempDir, PathBuf, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let root_fd = open_root(&root).unwrap();
        (dir, root, root_fd)
    }

    #[test]
    fn hex_as_format_writes_it() {
        for n in [
            0u128,
            1,
            0xf,
            0x10,
            0xdead_beef,
            u128::from(u64::MAX),
            u128::MAX,
        ] {
            let mut s = String::new();
            push_hex(&mut s, n);
            assert_eq!(s, format!("{n:x}"));
        }
    }

    #[test]
    fn the_cache_sees_writes_at_once_and_replacements_by_link_count() {
        let (_dir, root, root_fd) = temp_root();
        std::fs::write(root.join("f"), "one").unwrap();
        let cache = FileCache::new(8, Duration::ZERO);
        let a = cache.open(&root_fd, &root, Path::new("f"), false).unwrap();
        assert_eq!(a.len, 3);
        // Written in place: same descriptor, fresh size.
        std::fs::write(root.join("f"), "three").unwrap();
        let b = cache.open(&root_fd, &root, Path::new("f"), false).unwrap();
        assert_eq!((b.ino, b.len), (a.ino, 5));
        assert!(Arc::ptr_eq(&a.file, &b.file));
        // Renamed over: the old inode has no links left, so the path is looked up again.
        std::fs::write(root.join("g"), "replacement").unwrap();
        std::fs::rename(root.join("g"), root.join("f")).unwrap();
        let c = cache.open(&root_fd, &root, Path::new("f"), false).unwrap();
        assert_eq!(c.len, 11);
        assert_ne!(c.ino, a.ino);
        // Deleted: not found, nothing stale served.
        std::fs::remove_file(root.join("f")).unwrap();
        assert!(matches!(
            cache.open(&root_fd, &root, Path::new("f"), false),
            Err(OpenError::NotFound)
        ));
    }

    #[test]
    fn with_a_validity_the_size_is_trusted_until_it_ends_or_is_distrusted() {
        let (_dir, root, root_fd) = temp_root();
        std::fs::write(root.join("f"), "one").unwrap();
        let valid = Duration::from_millis(300);
        let cache = FileCache::new(8, valid);
        let f = Path::new("f");
        let started = Instant::now();
        let a = cache.open(&root_fd, &root, f, false).unwrap();
        std::fs::write(root.join("f"), "three").unwrap();
        let b = cache.open(&root_fd, &root, f, false).unwrap();
        if started.elapsed() < valid {
            // Trusted: the old length, from the same descriptor.
            assert_eq!(b.len, 3);
            assert!(Arc::ptr_eq(&a.file, &b.file));
        }
        // A response that fell short distrusts it: the next open takes a fresh fstat.
        cache.distrust(&a.file);
        assert_eq!(cache.open(&root_fd, &root, f, false).unwrap().len, 5);
        // And after the window, a write is seen without being told.
        std::fs::write(root.join("f"), "seven!!").unwrap();
        std::thread::sleep(valid);
        assert_eq!(cache.open(&root_fd, &root, f, false).unwrap().len, 7);
    }

    /// Bytes are held only with a validity: without one, the `fstat` per request must make a
    /// write in place visible at once.
    #[test]
    fn bytes_are_held_only_with_a_validity() {
        let (_dir, root, root_fd) = temp_root();
        std::fs::write(root.join("f"), "one").unwrap();
        let f = Path::new("f");
        let off = FileCache::new(8, Duration::ZERO).with_held_budget(1 << 20);
        assert!(off.open(&root_fd, &root, f, false).unwrap().bytes.is_none());
        assert!(off.open(&root_fd, &root, f, false).unwrap().bytes.is_none());
        assert_eq!(off.held_bytes(), 0);
        let on = FileCache::new(8, Duration::from_secs(60));
        let first = on.open(&root_fd, &root, f, false).unwrap();
        assert_eq!(first.bytes.as_deref(), Some(&b"one"[..]));
        let again = on.open(&root_fd, &root, f, false).unwrap();
        assert_eq!(again.bytes.as_deref(), Some(&b"one"[..]));
        assert_eq!(on.held_bytes(), 3);
    }

    /// Within the window a file written in place is the file as it was: old bytes, old
    /// length, old ETag together. After it, the new bytes with the new ETag.
    #[test]
    fn held_bytes_are_the_old_file_within_the_window_and_the_new_after_it() {
        let (_dir, root, root_fd) = temp_root();
        std::fs::write(root.join("f"), "one").unwrap();
        let valid = Duration::from_millis(300);
        let cache = FileCache::new(8, valid);
        let f = Path::new("f");
        let started = Instant::now();
        let a = cache.open(&root_fd, &root, f, false).unwrap();
        std::fs::write(root.join("f"), "three").unwrap();
        let b = cache.open(&root_fd, &root, f, false).unwrap();
        if started.elapsed() < valid {
            assert_eq!(b.bytes.as_deref(), Some(&b"one"[..]));
            assert_eq!((b.len, b.etag()), (3, a.etag()));
        }
        std::thread::sleep(valid);
        let c = cache.open(&root_fd, &root, f, false).unwrap();
        assert_eq!(c.bytes.as_deref(), Some(&b"three"[..]));
        assert_eq!(c.len, 5);
        assert_ne!(c.etag(), a.etag());
        assert_eq!(cache.held_bytes(), 5);
    }

    /// A file past [`HELD_FILE_MOST`] is served from its descriptor, not held.
    #[test]
    fn a_file_past_the_size_limit_is_not_held() {
        let (_dir, root, root_fd) = temp_root();
        let most = usize::try_from(HELD_FILE_MOST).unwrap();
        std::fs::write(root.join("most"), vec![b'a'; most]).unwrap();
        std::fs::write(root.join("more"), vec![b'a'; most + 1]).unwrap();
        let cache = FileCache::new(8, Duration::from_secs(60));
        for _ in 0..2 {
            let o = cache
                .open(&root_fd, &root, Path::new("more"), false)
                .unwrap();
            assert!(o.bytes.is_none());
        }
        let o = cache
            .open(&root_fd, &root, Path::new("most"), false)
            .unwrap();
        assert_eq!(o.bytes.map(|b| b.len()), Some(most));
        assert_eq!(cache.held_bytes(), most);
    }

    /// The budget bounds the bytes held, whatever is opened; a fill that needs room lets go
    /// of files not served since the clock last passed them, so a file served all along keeps
    /// its bytes while a scan of others goes through; entries dropped from the cache take
    /// their bytes off the account.
    #[test]
    fn the_budget_bounds_the_bytes_held_and_keeps_the_served_ones() {
        let (_dir, root, root_fd) = temp_root();
        for i in 0..50 {
            std::fs::write(root.join(format!("{i}")), vec![b'x'; 1000]).unwrap();
        }
        let cache = FileCache::new(20, Duration::from_secs(60)).with_held_budget(4500);
        let hot = Path::new("0");
        assert!(
            cache
                .open(&root_fd, &root, hot, false)
                .unwrap()
                .bytes
                .is_some()
        );
        for i in 1..50 {
            let name = format!("{i}");
            let o = cache
                .open(&root_fd, &root, Path::new(&name), false)
                .unwrap();
            // Each newcomer gets room, and the budget holds.
            assert!(o.bytes.is_some(), "{i}");
            assert!(
                cache.held_bytes() <= 4500,
                "{} after {i}",
                cache.held_bytes()
            );
            let h = cache.open(&root_fd, &root, hot, false).unwrap();
            if i < 19 {
                // Still cached (20 entries at most, evicted at random past that): served
                // from memory all along.
                assert!(h.bytes.is_some(), "hot lost its bytes after {i}");
            }
        }
        // The account matches what the entries hold, and the ring stays bounded.
        let files = cache.lock();
        let held: usize = files
            .map
            .values()
            .filter_map(|e| e.body.as_ref())
            .map(|b| b.bytes.len())
            .sum();
        assert_eq!(held, files.held);
        assert!(files.ring.len() <= 2 * files.holders + 64);
        drop(files);
        // Distrusting an entry drops its bytes from the account too.
        let o = cache.open(&root_fd, &root, Path::new("49"), false).unwrap();
        let before = cache.held_bytes();
        cache.distrust(&o.file);
        assert_eq!(cache.held_bytes(), before - 1000);
    }

    #[test]
    fn a_directory_without_sibling_names_needs_no_probes_until_it_changes() {
        let (_dir, root, root_fd) = temp_root();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/a.js"), "js").unwrap();
        let cache = FileCache::new(8, Duration::ZERO);
        let sfx = [".br", ".zst", ".gz"];
        let rel = Path::new("d/a.js");
        assert!(!cache.dir_may_have(&root_fd, &root, rel, false, &sfx));
        assert!(!cache.dir_may_have(&root_fd, &root, Path::new("top.js"), false, &sfx));
        // A new name changes the directory's mtime: seen at the next question.
        std::fs::write(root.join("d/a.js.gz"), "z").unwrap();
        assert!(cache.dir_may_have(&root_fd, &root, rel, false, &sfx));
        cache.open(&root_fd, &root, rel, false).unwrap();
        assert_eq!(cache.siblings(&root_fd, &root, rel, false, &sfx), 0b100);
    }

    /// The sibling mask, once found, comes with every later open of the entry (trusted or
    /// revalidated with `fstat`), so a request asks the cache once; an open that did not come
    /// from the cache does not claim to know.
    #[test]
    fn a_cached_open_hands_on_the_sibling_mask() {
        let (_dir, root, root_fd) = temp_root();
        std::fs::write(root.join("a.js"), "js").unwrap();
        std::fs::write(root.join("a.js.gz"), "z").unwrap();
        let sfx = [".br", ".zst", ".gz"];
        let rel = Path::new("a.js");
        for valid in [Duration::ZERO, Duration::from_secs(60)] {
            let cache = FileCache::new(8, valid);
            assert_eq!(
                cache.open(&root_fd, &root, rel, false).unwrap().siblings,
                None
            );
            assert_eq!(cache.siblings(&root_fd, &root, rel, false, &sfx), 0b100);
            let again = cache.open(&root_fd, &root, rel, false).unwrap();
            assert_eq!(again.siblings, Some(0b100), "valid {valid:?}");
        }
        // Uncached (capacity 0): never known, always asked.
        let off = FileCache::new(0, Duration::ZERO);
        off.siblings(&root_fd, &root, rel, false, &sfx);
        assert_eq!(
            off.open(&root_fd, &root, rel, false).unwrap().siblings,
            None
        );
    }

    #[test]
    fn variant_misses_are_remembered_for_the_ttl() {
        let (_dir, root, root_fd) = temp_root();
        let cache = FileCache::new(8, Duration::ZERO);
        let gz = Path::new("a.gz");
        assert!(cache.open_variant(&root_fd, &root, gz, false).is_none());
        std::fs::write(root.join("a.gz"), "z").unwrap();
        // Within the TTL the miss stands; after it the new file is found.
        assert!(cache.open_variant(&root_fd, &root, gz, false).is_none());
        cache.misses.lock().unwrap().clear();
        assert_eq!(
            cache.open_variant(&root_fd, &root, gz, false).unwrap().len,
            1
        );
    }
}
