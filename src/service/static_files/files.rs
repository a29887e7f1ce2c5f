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

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, SystemTime};

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
    /// The open file or directory.
    pub file: File,
    /// Regular file, directory or other.
    pub kind: FileType,
    /// Length in bytes when opened; the most that is ever sent.
    pub len: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Inode number, for the ETag.
    pub ino: u64,
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
    rel: &str,
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
    stat(File::from(fd))
}

/// Fallback for an absolute symlink: open it as the kernel resolves it, keep it only if the
/// file it reached lies below the root.
fn open_checked(
    root_fd: &OwnedFd,
    root: &Path,
    rel: &str,
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

fn stat(file: File) -> Result<Opened, OpenError> {
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
