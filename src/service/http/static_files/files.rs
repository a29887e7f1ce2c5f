//! Opening files below the root, so that no path and no symlink can lead out of it.
//!
//! Every open is `openat2(root_fd, relative, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` (Linux
//! 5.6+): the kernel refuses, with `EXDEV`, any resolution that would leave the root, whether by
//! `..`, an absolute symlink or a relative one that climbs out, and it checks each component at
//! open time, so there is no window between a check and the open for a swapped symlink.
//! `RESOLVE_BENEATH` also refuses absolute symlinks that point back *inside* the root; for
//! those (rare) cases we open normally and accept the file if `/proc/self/fd` shows it below the
//! root. Opens are blocking syscalls on the worker's thread, as in nginx without aio: on a warm
//! page cache they take microseconds, less than a hop to a thread pool.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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
        format!("\"{:x}-{:x}-{:x}\"", self.ino, self.len, ns)
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
        Err(e) => return Err(classify(e)),
    };
    stat(Arc::new(File::from(fd)))
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

/// How long a cached descriptor may stand for its path without a new path lookup.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// Most cached descriptors per worker, and at most a quarter of the descriptor limit, so the
/// cache never starves connections of descriptors ([`FileCache::for_fd_limit`]).
pub const CACHE_ENTRIES: usize = 4096;

/// A per-worker cache of open regular files, like nginx's `open_file_cache`, so a hot file costs
/// one `fstat` instead of a path walk, an open and a close.
///
/// Revalidation is that `fstat` on the cached descriptor: an in-place write shows as a new
/// size or mtime (new ETag, new length) at once, and an unlink or rename-over shows as zero
/// links, which drops the entry and looks the path up again. What only a path lookup would
/// notice (the file renamed away while still linked, a symlink retargeted, permissions
/// changed) is seen within [`CACHE_TTL`]. Directories are never cached, and misses only for
/// [`FileCache::open_variant`] (a precompressed sibling that appears is seen within the TTL).
#[derive(Debug, Default)]
pub struct FileCache {
    /// The worker's runtime is single-threaded, so the lock is never contended; it is a Mutex
    /// (not a RefCell) only because spawned connection futures must be `Send`.
    map: Mutex<HashMap<PathBuf, (Arc<File>, Instant)>>,
    /// Variant paths found missing, and when: every request for a file asks for its three
    /// precompressed siblings, which are usually absent, and three failed path walks per
    /// request would cost more than the request. Same lock reasoning as `map`.
    misses: Mutex<HashMap<PathBuf, Instant>>,
    /// Entries kept at most; 0 turns the cache off.
    capacity: usize,
}

impl FileCache {
    /// A cache of up to `capacity` descriptors.
    pub fn new(capacity: usize) -> FileCache {
        FileCache {
            map: Mutex::default(),
            misses: Mutex::default(),
            capacity,
        }
    }

    /// Sized from this process's `RLIMIT_NOFILE`: a quarter of it, at most [`CACHE_ENTRIES`].
    pub fn for_fd_limit() -> FileCache {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        FileCache::new(usize::try_from(limit / 4).map_or(CACHE_ENTRIES, |n| n.min(CACHE_ENTRIES)))
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
        let now = Instant::now();
        let cached = self.lock().get(rel).cloned();
        if let Some((file, at)) = cached {
            if now.duration_since(at) < CACHE_TTL
                && let Ok(o) = stat(file)
                && o.kind == FileType::RegularFile
                && o.links > 0
            {
                return Ok(o);
            }
            self.lock().remove(rel);
        }
        let opened = open(root_fd, root, rel, follow_symlinks)?;
        if opened.kind == FileType::RegularFile && self.capacity > 0 {
            let mut map = self.lock();
            if map.len() >= self.capacity {
                // Evict one arbitrary entry (HashMap order is effectively random): O(1), and
                // under a working set larger than the cache it keeps a steady hit rate where
                // clearing everything would thrash.
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
            map.insert(rel.to_path_buf(), (Arc::clone(&opened.file), now));
        }
        Ok(opened)
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
        let now = Instant::now();
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses
            .get(rel)
            .is_some_and(|at| now.duration_since(*at) < CACHE_TTL)
        {
            return None;
        }
        match self.open(root_fd, root, rel, follow_symlinks) {
            Ok(o) if o.kind == FileType::RegularFile => {
                misses.remove(rel);
                Some(o)
            }
            _ => {
                if self.capacity > 0 {
                    if misses.len() >= self.capacity {
                        // As for `map`: one arbitrary entry goes.
                        if let Some(k) = misses.keys().next().cloned() {
                            misses.remove(&k);
                        }
                    }
                    misses.insert(rel.to_path_buf(), now);
                }
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Arc<File>, Instant)>> {
        // A panic while holding the lock cannot leave the map inconsistent (each operation is
        // one HashMap call), so a poisoned lock is used as it is.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_sees_writes_at_once_and_replacements_by_link_count() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let root_fd = open_root(&root).unwrap();
        std::fs::write(root.join("f"), "one").unwrap();
        let cache = FileCache::new(8);
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
    fn variant_misses_are_remembered_for_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let root_fd = open_root(&root).unwrap();
        let cache = FileCache::new(8);
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
