//! Binding listeners, in the arbiter, before any worker exists; a worker takes its inherited
//! copies over (`worker::accept`).
//!
//! Every listener is bound once and inherited by each forked worker, so all workers accept from
//! one kernel queue (gunicorn's and nginx's default): a busy worker simply accepts less, and a
//! worker at its connection limit leaves clients waiting in the backlog for a free one.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::net::BindAddr;

/// The transport of a listener, which decides the stream type workers accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// A Unix stream socket.
    Unix,
}

/// How long, in seconds, the kernel holds a TCP client that has connected but sent nothing on
/// a listener with deferred accepting ([`Listener::set_deferred_accept`]) before queuing it for
/// `accept` anyway. The kernel counts it in SYN-ACK retransmissions (1 s: one, after its
/// initial 1 s timeout), so the client is queued after about a second, with its next ACK. 1 is
/// what nginx's `listen ... deferred` sets too ("there is no way to find out how long a
/// connection was in queue", its source says); a longer hold would only hide a silent client
/// from the header timeout for longer.
pub const DEFER_ACCEPT_SECS: u32 = 1;

/// A bound, listening socket.
///
/// Dropping it closes this process's descriptor only; the socket file of a Unix listener is
/// removed by [`Listener::remove_socket_file`], never on drop, because forked workers drop
/// their copies too and must not delete the arbiter's path.
#[derive(Debug)]
pub struct Listener {
    /// The address as configured (port 0 stays 0 here).
    pub addr: BindAddr,
    /// The address as bound: the real port when 0 was asked. A reload whose config names
    /// this address keeps the listener.
    pub bound: BindAddr,
    /// The address as bound, for logs.
    pub local: String,
    /// TCP or Unix.
    pub kind: ListenerKind,
    /// The socket. Owned here; each worker owns its inherited copy after fork.
    pub fd: OwnedFd,
    /// For a Unix socket created by us: the path and the inode we created, so that exit removes
    /// our file and not one a newer server put there since.
    created_file: Option<(PathBuf, u64, u64)>,
}

/// Why a listener could not be set up. Each names the address and suggests a fix.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `EADDRINUSE`.
    #[error("failed to bind {addr}: address in use — is another server running?")]
    InUse {
        /// The address.
        addr: BindAddr,
    },
    /// `EACCES` on a privileged port or a directory we may not write.
    #[error(
        "failed to bind {addr}: permission denied — ports below 1024 need root or \
         CAP_NET_BIND_SERVICE; a unix socket needs a writable directory"
    )]
    Denied {
        /// The address.
        addr: BindAddr,
    },
    /// `EADDRNOTAVAIL`.
    #[error("failed to bind {addr}: address not available — is it an address of this machine?")]
    NotAvailable {
        /// The address.
        addr: BindAddr,
    },
    /// Anything else from `socket`/`bind`/`listen`.
    #[error("failed to bind {addr}: {cause}")]
    Other {
        /// The address.
        addr: BindAddr,
        /// What the OS said.
        cause: io::Error,
    },
    /// A live server answers on this Unix socket.
    #[error("failed to bind unix:{}: a server is already listening there", path.display())]
    UnixInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The Unix path exists and is something else.
    #[error(
        "failed to bind unix:{}: the path exists and is not a socket — refusing to replace it",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// `systemd:NAME` names no socket systemd passed.
    #[error("cannot use systemd:{name}: {why}")]
    Activation {
        /// The name.
        name: String,
        /// What is wrong, and which names were passed.
        why: String,
    },
    /// `fd://N` is not an open, listening stream socket.
    #[error("cannot use fd://{fd}: {why}")]
    BadFd {
        /// The descriptor.
        fd: i32,
        /// What is wrong with it.
        why: String,
    },
}

/// A `systemd:NAME` bind: the descriptor systemd passed under that name (`LISTEN_FDS`,
/// `LISTEN_PID`, `LISTEN_FDNAMES`, read with the `sd-notify` crate; `LISTEN_PID` must be this
/// process, as sd_listen_fds(3) requires).
fn adopt_activated(addr: &BindAddr, name: &str) -> Result<Listener, ListenError> {
    let bad = |why: String| ListenError::Activation {
        name: name.to_string(),
        why,
    };
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names()
        .map_err(|e| bad(format!("cannot read LISTEN_FDS: {e}")))?
        .collect();
    let Some((fd, _)) = fds.iter().find(|(_, n)| n == name) else {
        let names: Vec<&str> = fds.iter().map(|(_, n)| n.as_str()).collect();
        return Err(bad(if names.is_empty() {
            "no socket was passed (LISTEN_FDS and LISTEN_PID are not set for this process): \
             start it from a systemd socket unit"
                .to_string()
        } else {
            format!("systemd passed {}", names.join(", "))
        }));
    };
    adopt_fd(addr, *fd).map_err(|e| bad(e.to_string()))
}

fn bind_error(addr: &BindAddr, source: io::Error) -> ListenError {
    let addr = addr.clone();
    match source.raw_os_error() {
        Some(nix::libc::EADDRINUSE) => ListenError::InUse { addr },
        Some(nix::libc::EACCES) | Some(nix::libc::EPERM) => ListenError::Denied { addr },
        Some(nix::libc::EADDRNOTAVAIL) => ListenError::NotAvailable { addr },
        _ => ListenError::Other {
            addr,
            cause: source,
        },
    }
}

impl Listener {
    /// Binds and listens on `addr` with this backlog.
    ///
    /// A Unix path holding a stale socket (nobody answers a `connect`) is replaced; a live one
    /// or a non-socket is refused.
    ///
    /// # Errors
    /// A [`ListenError`] naming the address.
    pub fn bind(addr: &BindAddr, backlog: u32) -> Result<Listener, ListenError> {
        let backlog = backlog.min(i32::MAX as u32) as i32;
        match addr {
            BindAddr::Tcp(sa) => {
                let err = |e| bind_error(addr, e);
                let sock = Socket::new(Domain::for_address(*sa), Type::STREAM, Some(Protocol::TCP))
                    .map_err(err)?;
                // Restarting on a port with connections in TIME_WAIT must work at once.
                sock.set_reuse_address(true).map_err(err)?;
                if sa.is_ipv6() {
                    // Explicit, not net.ipv6.bindv6only: [::]:80 means IPv6 only; bind
                    // 0.0.0.0:80 as well for IPv4.
                    sock.set_only_v6(true).map_err(err)?;
                }
                sock.bind(&(*sa).into()).map_err(err)?;
                // Passed on to every client the kernel queues (the workers rely on it, see
                // worker::accept): set before `listen`, so even the first client has it.
                sock.set_tcp_nodelay(true).map_err(err)?;
                sock.listen(backlog).map_err(err)?;
                let bound = sock
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(*sa);
                Ok(Listener {
                    addr: addr.clone(),
                    bound: BindAddr::Tcp(bound),
                    local: bound.to_string(),
                    kind: ListenerKind::Tcp,
                    fd: sock.into(),
                    created_file: None,
                })
            }
            BindAddr::Unix(path) => bind_unix(addr, path, backlog),
            BindAddr::Fd(fd) => adopt_fd(addr, *fd),
            BindAddr::Systemd(name) => adopt_activated(addr, name),
        }
    }

    /// Sets whether the kernel hands a TCP client to `accept` only once the client's first
    /// bytes have arrived (`TCP_DEFER_ACCEPT`, for services whose clients speak first: HTTP),
    /// or as soon as its handshake completes (`on` false, for services that greet the client:
    /// chat, quote). Deferred, a short connection's request is there when it is accepted, so
    /// the worker can answer it at once, on the descriptor, without registering the socket
    /// with its runtime (issue 12). nginx's `listen ... deferred` sets the same option.
    ///
    /// A client that connects and sends nothing waits in the kernel (not counted by any
    /// worker, costing no worker memory) for [`DEFER_ACCEPT_SECS`], after which the kernel
    /// queues it anyway; from its accept on, the service's own deadlines run as for any
    /// connection (static: `header_timeout`). So such a client is closed at most about
    /// `DEFER_ACCEPT_SECS` later than without the option. A client sending one byte at a time
    /// is accepted with its first byte, and the header deadline bounds it as before.
    ///
    /// The option lives on the socket, so workers (which inherit it), binary upgrades (which
    /// pass the socket on) and reloads keep it; the arbiter sets it again from the service
    /// kind whenever a configuration is applied. A Unix listener is left as it is.
    ///
    /// # Errors
    /// What `setsockopt(2)` returns.
    pub fn set_deferred_accept(&self, on: bool) -> io::Result<()> {
        if self.kind != ListenerKind::Tcp {
            return Ok(());
        }
        let secs: nix::libc::c_int = if on { DEFER_ACCEPT_SECS as _ } else { 0 };
        // SAFETY: `fd` is an open socket owned by this listener; the option value is a c_int
        // that lives for the whole call, and its size is passed with it.
        let r = unsafe {
            nix::libc::setsockopt(
                self.fd.as_raw_fd(),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_DEFER_ACCEPT,
                (&secs as *const nix::libc::c_int).cast(),
                std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Whether the kernel holds TCP clients until their first bytes arrive
    /// ([`Listener::set_deferred_accept`]); false for a Unix listener.
    ///
    /// # Errors
    /// What `getsockopt(2)` returns.
    pub fn deferred_accept(&self) -> io::Result<bool> {
        if self.kind != ListenerKind::Tcp {
            return Ok(false);
        }
        let mut secs: nix::libc::c_int = 0;
        let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
        // SAFETY: `fd` is an open socket owned by this listener; `secs` and `len` are valid
        // for writes for the whole call, and `len` holds `secs`'s size.
        let r = unsafe {
            nix::libc::getsockopt(
                self.fd.as_raw_fd(),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_DEFER_ACCEPT,
                (&mut secs as *mut nix::libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 {
            Ok(secs > 0)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Whether this listener is the one `addr` asks for (as configured, or as bound).
    pub fn serves(&self, addr: &BindAddr) -> bool {
        &self.addr == addr || &self.bound == addr
    }

    /// The Unix socket file this listener created, as (path, device, inode): what a binary
    /// upgrade hands over with the descriptor so the new image still removes it on exit.
    pub fn created_file(&self) -> Option<&(PathBuf, u64, u64)> {
        self.created_file.as_ref()
    }

    /// Rebuilds a listener handed over across `execve` by a binary upgrade: the descriptor is
    /// already bound and listening, the rest is what [`Listener`]'s fields said before.
    pub fn from_parts(
        addr: BindAddr,
        bound: BindAddr,
        local: String,
        kind: ListenerKind,
        fd: OwnedFd,
        created_file: Option<(PathBuf, u64, u64)>,
    ) -> Listener {
        Listener {
            addr,
            bound,
            local,
            kind,
            fd,
            created_file,
        }
    }

    /// Removes the socket file this listener created, if it is still the one we created.
    pub fn remove_socket_file(&self) {
        if let Some((path, dev, ino)) = &self.created_file
            && let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.dev() == *dev
            && meta.ino() == *ino
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn bind_unix(addr: &BindAddr, path: &Path, backlog: i32) -> Result<Listener, ListenError> {
    let err = |e| bind_error(addr, e);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ListenError::UnixInUse { path: path.into() }),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // Left by a server that died without cleaning up: nobody listens.
                    tracing::info!("removing stale socket file {}", path.display());
                    std::fs::remove_file(path).map_err(err)?;
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(_) => return Err(ListenError::NotASocket { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
    sock.bind(&SockAddr::unix(path).map_err(err)?)
        .map_err(err)?;
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    let created = Some((path.to_path_buf(), meta.dev(), meta.ino()));
    if let Err(e) = sock.listen(backlog) {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(Listener {
        addr: addr.clone(),
        bound: addr.clone(),
        local: addr.to_string(),
        kind: ListenerKind::Unix,
        fd: sock.into(),
        created_file: created,
    })
}

fn adopt_fd(addr: &BindAddr, fd: i32) -> Result<Listener, ListenError> {
    let bad = |why: String| ListenError::BadFd { fd, why };
    if fd <= 2 {
        return Err(bad("0, 1 and 2 are stdin, stdout and stderr".into()));
    }
    // SAFETY: F_GETFD only asks whether the number is an open descriptor; it changes nothing.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|e| bad(format!("not an open file descriptor ({e})")))?;
    let sock = socket2::SockRef::from(&borrowed);
    match sock.r#type() {
        Ok(Type::STREAM) => {}
        Ok(_) => return Err(bad("not a stream socket".into())),
        Err(e) => return Err(bad(format!("not a socket ({e})"))),
    }
    if !sock.is_listener().unwrap_or(false) {
        return Err(bad("the socket is not listening".into()));
    }
    let local = sock.local_addr().map_err(|e| bad(e.to_string()))?;
    let (kind, shown) = match local.as_socket() {
        Some(sa) => (ListenerKind::Tcp, sa.to_string()),
        None => (
            ListenerKind::Unix,
            local
                .as_pathname()
                .map_or("unix:(unnamed)".to_string(), |p| {
                    format!("unix:{}", p.display())
                }),
        ),
    };
    let raw = borrowed.as_raw_fd();
    // SAFETY: the descriptor was inherited for us to use (that is what fd://N says) and is
    // open (checked above); from here on this Listener is its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(Listener {
        addr: addr.clone(),
        bound: addr.clone(),
        local: format!("{shown} ({addr})"),
        kind,
        fd,
        created_file: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn loopback() -> (Listener, std::net::SocketAddr) {
        let addr = BindAddr::Tcp("127.0.0.1:0".parse().unwrap());
        let l = Listener::bind(&addr, 16).unwrap();
        let BindAddr::Tcp(bound) = l.bound else {
            unreachable!("a TCP listener is bound to a TCP address")
        };
        (l, bound)
    }

    /// True once a client is queued for `accept` within `wait`.
    fn queued_within(l: &Listener, wait: Duration) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(wait.as_millis() as i32).unwrap();
        poll(&mut fds, ms).unwrap() > 0
    }

    #[test]
    fn deferred_accepting_is_set_and_cleared_on_tcp_and_left_alone_on_unix() {
        let (l, _) = loopback();
        assert!(!l.deferred_accept().unwrap());
        l.set_deferred_accept(true).unwrap();
        assert!(l.deferred_accept().unwrap());
        l.set_deferred_accept(false).unwrap();
        assert!(!l.deferred_accept().unwrap());

        let dir = tempfile::tempdir().unwrap();
        let unix = Listener::bind(&BindAddr::Unix(dir.path().join("s.sock")), 16).unwrap();
        unix.set_deferred_accept(true).unwrap();
        assert!(!unix.deferred_accept().unwrap());
    }

    /// Deferred, a client is queued with its first bytes; one that stays silent is queued
    /// anyway after about [`DEFER_ACCEPT_SECS`] (the kernel's next SYN-ACK and its ACK), so
    /// the service's own deadlines still reach it.
    #[test]
    fn a_deferred_listener_queues_a_client_with_its_first_bytes_or_after_the_hold() {
        let (l, addr) = loopback();
        l.set_deferred_accept(true).unwrap();
        let mut speaks = std::net::TcpStream::connect(addr).unwrap();
        assert!(!queued_within(&l, Duration::from_millis(200)));
        speaks.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(queued_within(&l, Duration::from_secs(2)));
        let (first, _) = socket2::SockRef::from(&l.fd).accept().unwrap();
        let first = std::net::TcpStream::from(first);
        assert!(first.peek(&mut [0u8; 64]).unwrap() > 0);

        let started = Instant::now();
        let _silent = std::net::TcpStream::connect(addr).unwrap();
        assert!(queued_within(&l, Duration::from_secs(10)));
        let held = started.elapsed();
        assert!(
            held >= Duration::from_millis(500) && held < Duration::from_secs(8),
            "{held:?}"
        );
    }
}
