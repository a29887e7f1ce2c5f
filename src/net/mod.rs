//! Addresses, listeners and streams shared by the arbiter (which binds) and the workers (which
//! accept).
//!
//! A [`BindAddr`] is what the user typed after `--bind`; a [`listener::Listener`] is a bound
//! socket, made by the arbiter before any fork and inherited by every worker; a [`Stream`] is
//! one accepted connection, TCP or Unix, handed to a service. This module knows nothing of
//! processes: it imports neither the arbiter nor the worker.

pub mod listener;

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Longest path a `sockaddr_un` holds on Linux, without the trailing NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// One `--bind` value: `HOST:PORT`, `[IPV6]:PORT`, `unix:PATH`, `fd://N` or `systemd:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindAddr {
    /// A TCP address; host names are resolved when the option is parsed.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// An already-listening socket inherited from the parent (systemd, a supervisor).
    Fd(RawFd),
    /// A socket passed by systemd's socket activation, by its name (`LISTEN_FDNAMES`: the
    /// socket unit's `FileDescriptorName=`, by default the unit's name).
    Systemd(String),
}

/// Why a `--bind` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindAddrError {
    /// The value is empty.
    #[error("empty address: expected HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N")]
    Empty,
    /// `unix:` with no path.
    #[error("`{0}` has no path after `unix:`")]
    EmptyUnixPath(String),
    /// A Unix path longer than `sockaddr_un` allows.
    #[error("unix socket path `{0}` is too long ({1} bytes, at most {MAX_UNIX_PATH})")]
    UnixPathTooLong(String, usize),
    /// `fd://` with something that is not a descriptor number.
    #[error("`{0}` is not a file descriptor: expected fd://N with N a number such as 3")]
    BadFd(String),
    /// `systemd:` with no name.
    #[error("`{0}` has no name after `systemd:` (the socket unit's FileDescriptorName=)")]
    EmptySystemdName(String),
    /// No `:PORT` at the end.
    #[error("`{0}` has no port: write HOST:PORT, such as 127.0.0.1:8000 or [::1]:8000")]
    NoPort(String),
    /// A port alone, as `8000`: which interface is meant is ambiguous.
    #[error(
        "`{0}` is a bare port: write 127.0.0.1:{0} (this machine only) or :{0} (all interfaces)"
    )]
    BarePort(String),
    /// A URL (`http://127.0.0.1:8000`) where an address belongs.
    #[error("`{0}` is a URL: drop the scheme and write {1}")]
    Url(String, String),
    /// The port is not a number from 0 to 65535.
    #[error("`{0}` has an invalid port (0-65535)")]
    BadPort(String),
    /// An IPv6 address written without brackets.
    #[error("`{0}` looks like an IPv6 address: write it in brackets, as [::1]:8000")]
    Ipv6NeedsBrackets(String),
    /// Several addresses in one value (`127.0.0.1:1,127.0.0.1:2`, or a space between them,
    /// as an `OXICORN_BIND` list would be written): one value is one address.
    #[error(
        "`{0}` holds several addresses: give each its own --bind (OXICORN_BIND takes one; a \
         config file takes a list, bind = [\"127.0.0.1:8000\", \"unix:/run/app.sock\"])"
    )]
    Several(String),
    /// The host name did not resolve.
    #[error("cannot resolve host in `{0}`: {1}")]
    Resolve(String, String),
}

impl FromStr for BindAddr {
    type Err = BindAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(BindAddrError::Empty);
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            // gunicorn accepts both `unix:PATH` and `unix://PATH`.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(BindAddrError::EmptyUnixPath(s.to_string()));
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(BindAddrError::UnixPathTooLong(path.to_string(), path.len()));
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        if let Some(name) = s.strip_prefix("systemd:") {
            if name.is_empty() {
                return Err(BindAddrError::EmptySystemdName(s.to_string()));
            }
            return Ok(BindAddr::Systemd(name.to_string()));
        }
        if let Some(rest) = s.strip_prefix("fd://") {
            return match rest.parse::<RawFd>() {
                Ok(fd) if fd >= 0 => Ok(BindAddr::Fd(fd)),
                _ => Err(BindAddrError::BadFd(s.to_string())),
            };
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(BindAddr::Tcp(addr));
        }
        // No address, host name or port holds a comma or a space: a list was given.
        if s.contains(|c: char| c == ',' || c.is_whitespace()) {
            return Err(BindAddrError::Several(s.to_string()));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BindAddrError::BarePort(s.to_string()));
        }
        if let Some((scheme, rest)) = s.split_once("://")
            && !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+')
        {
            let rest = rest.split('/').next().unwrap_or(rest);
            return Err(BindAddrError::Url(s.to_string(), rest.to_string()));
        }
        // `[::1]` or `[::1]:`: brackets without a port.
        if s.starts_with('[') && (s.ends_with(']') || s.ends_with("]:")) {
            return Err(BindAddrError::NoPort(s.trim_end_matches(':').to_string()));
        }
        // Not a literal address: split HOST:PORT ourselves so the error can say which half is wrong.
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(BindAddrError::NoPort(s.to_string()));
        };
        if host.contains(':') && !host.starts_with('[') {
            return Err(BindAddrError::Ipv6NeedsBrackets(s.to_string()));
        }
        if port.is_empty() {
            return Err(BindAddrError::NoPort(s.to_string()));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| BindAddrError::BadPort(s.to_string()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        let mut addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| BindAddrError::Resolve(s.to_string(), e.to_string()))?;
        addrs
            .next()
            .map(BindAddr::Tcp)
            .ok_or_else(|| BindAddrError::Resolve(s.to_string(), "no addresses".into()))
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "{addr}"),
            BindAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            BindAddr::Fd(fd) => write!(f, "fd://{fd}"),
            BindAddr::Systemd(name) => write!(f, "systemd:{name}"),
        }
    }
}

/// Who is on the other end of a [`Stream`].
#[derive(Debug, Clone)]
pub enum Peer {
    /// A TCP client; IPv4-mapped IPv6 addresses are shown as IPv4.
    Tcp(SocketAddr),
    /// A Unix-socket client (usually unnamed).
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// An accepted connection: the one stream type every service reads and writes.
#[derive(Debug)]
pub enum Stream {
    /// From a TCP listener.
    Tcp(TcpStream),
    /// From a Unix listener.
    Unix(UnixStream),
}

impl Stream {
    /// Waits until the stream has data (or EOF) to read, without reading it: lets a service
    /// allocate its buffer only once a client actually sends something.
    ///
    /// # Errors
    /// What the socket returns.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }

    /// Polls for read readiness without reading (data or EOF waiting). Keeps the waker in the
    /// socket's own slot, so a future built on it stays small: what every idle kept-alive
    /// connection holds.
    ///
    /// Readiness can be stale (set by an earlier read); the caller then reads and gets
    /// `Pending`, which clears it.
    ///
    /// # Errors
    /// What the socket returns.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    /// Sends up to `len` bytes of `file` from `*offset` with `sendfile(2)` once the socket is
    /// writable, advancing `*offset` by what was sent. Returns the bytes sent: 0 only when the
    /// file ends at `*offset`.
    ///
    /// A stream that cannot splice from a file (a future TLS stream) would read and write here
    /// instead; callers do not know the difference.
    ///
    /// # Errors
    /// What `sendfile` returns other than `EAGAIN` (which waits for writability again).
    pub async fn sendfile(&self, file: &File, offset: &mut u64, len: usize) -> io::Result<usize> {
        // The closure runs when tokio believes the socket writable; EAGAIN (mapped to
        // WouldBlock) clears the readiness and waits again.
        match self {
            Stream::Tcp(s) => {
                s.async_io(Interest::WRITABLE, || {
                    Ok(rustix::fs::sendfile(s, file, Some(&mut *offset), len)?)
                })
                .await
            }
            Stream::Unix(s) => {
                s.async_io(Interest::WRITABLE, || {
                    Ok(rustix::fs::sendfile(s, file, Some(&mut *offset), len)?)
                })
                .await
            }
        }
    }

    /// Half-closes or not: shuts the write side down, as `shutdown(SHUT_WR)`.
    ///
    /// # Errors
    /// What the socket returns; `NotConnected` once the peer is gone.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        tokio::io::AsyncWriteExt::shutdown(self).await
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_bind_form() {
        assert_eq!(
            "127.0.0.1:9000".parse(),
            Ok(BindAddr::Tcp("127.0.0.1:9000".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:0".parse(),
            Ok(BindAddr::Tcp("[::1]:0".parse().unwrap()))
        );
        assert_eq!(
            "unix:/tmp/x.sock".parse(),
            Ok(BindAddr::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(
            "unix:///tmp/x.sock".parse(),
            Ok(BindAddr::Unix("/tmp/x.sock".into()))
        );
        assert_eq!("fd://3".parse(), Ok(BindAddr::Fd(3)));
        assert_eq!(
            "systemd:web".parse(),
            Ok(BindAddr::Systemd("web".to_string()))
        );
        assert_eq!(BindAddr::Systemd("web".into()).to_string(), "systemd:web");
        assert_eq!(
            ":8000".parse(),
            Ok(BindAddr::Tcp("0.0.0.0:8000".parse().unwrap()))
        );
        assert!(matches!(
            "localhost:80".parse::<BindAddr>(),
            Ok(BindAddr::Tcp(a)) if a.ip().is_loopback()
        ));
    }

    #[test]
    fn refuses_bad_binds_with_a_reason() {
        let err = |s: &str| s.parse::<BindAddr>().unwrap_err();
        assert_eq!(err(""), BindAddrError::Empty);
        assert!(matches!(err("unix:"), BindAddrError::EmptyUnixPath(_)));
        assert!(matches!(err("fd://x"), BindAddrError::BadFd(_)));
        assert!(matches!(err("fd://-1"), BindAddrError::BadFd(_)));
        assert!(matches!(err("127.0.0.1"), BindAddrError::NoPort(_)));
        assert!(matches!(err("127.0.0.1:"), BindAddrError::NoPort(_)));
        assert!(matches!(err("127.0.0.1:70000"), BindAddrError::BadPort(_)));
        assert!(matches!(err("::1:80"), BindAddrError::Ipv6NeedsBrackets(_)));
        // What users type first (issue 11): each named for what it is.
        assert_eq!(err("8000"), BindAddrError::BarePort("8000".into()));
        assert_eq!(
            err("http://127.0.0.1:8000"),
            BindAddrError::Url("http://127.0.0.1:8000".into(), "127.0.0.1:8000".into())
        );
        assert_eq!(
            err("https://[::1]:8000/x"),
            BindAddrError::Url("https://[::1]:8000/x".into(), "[::1]:8000".into())
        );
        assert_eq!(err("[::1]"), BindAddrError::NoPort("[::1]".into()));
        assert!(err("8000").to_string().contains("127.0.0.1:8000"));
        assert_eq!(
            ":8000".parse::<BindAddr>().unwrap().to_string(),
            "0.0.0.0:8000"
        );
        let long = format!("unix:/{}", "a".repeat(200));
        assert!(matches!(err(&long), BindAddrError::UnixPathTooLong(..)));
    }

    #[test]
    fn a_list_in_one_value_is_named_as_such() {
        for list in [
            "127.0.0.1:1,127.0.0.1:2",
            "127.0.0.1:1 127.0.0.1:2",
            ":1, :2",
        ] {
            let err = list.parse::<BindAddr>().unwrap_err();
            assert_eq!(err, BindAddrError::Several(list.trim().into()));
            assert!(err.to_string().contains("its own --bind"), "{err}");
        }
        // A Unix path may hold both.
        assert!("unix:/tmp/a b,c.sock".parse::<BindAddr>().is_ok());
    }

    #[test]
    fn displays_as_typed() {
        for s in ["127.0.0.1:9000", "[::1]:80", "unix:/tmp/a.sock", "fd://4"] {
            assert_eq!(s.parse::<BindAddr>().unwrap().to_string(), s);
        }
    }
}
