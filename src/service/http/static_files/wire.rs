//! What the HTTP path reads from and writes to: a [`Stream`] registered with the worker's
//! runtime, or a [`Fresh`] connection, one just accepted and not registered yet.
//!
//! Registering a socket with the runtime costs an `epoll_ctl` when it is registered and another
//! when it is dropped (tokio deregisters it before closing; nginx just closes, and the kernel
//! drops a closed descriptor from epoll by itself), and the first wait for its request costs a
//! trip through `epoll_wait`. Under load most short connections (`Connection: close`, one
//! request each) have sent their request by the time they are accepted, so none of that is
//! needed: a [`Fresh`] connection tries every read and write on the descriptor itself, and
//! only one that would block registers it, after which it behaves as the [`Stream`] it has
//! become (issue 12). [`super::conn`] serves both through the same code, generic over
//! [`Wire`]: limits, timeouts, the access log and the counters do not know the difference.
//!
//! This module owns the choice between the two and the raw calls; it decides nothing about
//! HTTP.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::Stream;

/// A connection the HTTP path can serve: bytes in and out, and files out with `sendfile(2)`.
pub trait Wire: AsyncRead + AsyncWrite + Unpin + Send {
    /// As [`Stream::sendfile`]: sends up to `len` bytes of `file` from `*offset`, advancing it;
    /// 0 only when the file ends at `*offset`.
    ///
    /// # Errors
    /// What `sendfile` returns other than `EAGAIN` (which waits for writability).
    fn sendfile(
        &mut self,
        file: &File,
        offset: &mut u64,
        len: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// The socket's descriptor, for a non-blocking look at what the client sent
    /// (`MSG_PEEK`), which no runtime readiness can answer.
    fn fd(&self) -> RawFd;

    /// Writes the last bytes of a response after which the connection closes (or shuts down
    /// for a lingering close) at once. On TCP they go with `MSG_MORE`: the kernel holds them,
    /// and the close (or shutdown) that follows sends them in one segment with the FIN, as
    /// nginx's corked response and close do, where a plain write sends a data segment and then
    /// a FIN segment of its own. One packet fewer per short connection, each of which the
    /// loopback also receives (softirq) in the sender's time: the worker's share of a
    /// `Connection: close` request's kernel time was the largest difference against nginx
    /// (issue 12). Nothing is held longer than until that close: callers close or shut down
    /// right after this returns.
    ///
    /// # Errors
    /// What `send` returns other than `EAGAIN` (which waits for writability); `WriteZero`.
    fn write_all_before_close(
        &mut self,
        bytes: &[u8],
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// The flags of the last `send` before a close: `MSG_MORE` (which nix does not name; the flag
/// is Linux's own), and no `SIGPIPE`.
fn more_flags() -> nix::sys::socket::MsgFlags {
    use nix::sys::socket::MsgFlags;
    MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL
}

impl Wire for Stream {
    fn sendfile(
        &mut self,
        file: &File,
        offset: &mut u64,
        len: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send {
        Stream::sendfile(self, file, offset, len)
    }

    fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    async fn write_all_before_close(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let Stream::Tcp(tcp) = self else {
            return self.write_all(bytes).await;
        };
        let fd = tcp.as_raw_fd();
        while !bytes.is_empty() {
            // `async_io` runs the send when tokio believes the socket writable; EAGAIN (as
            // WouldBlock) clears that and waits again.
            let n = tcp
                .async_io(tokio::io::Interest::WRITABLE, || {
                    nix::sys::socket::send(fd, bytes, more_flags()).map_err(io::Error::from)
                })
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

/// A TCP connection just accepted (non-blocking), registered with the runtime only once an
/// operation on it would block. Dropped unregistered, it is simply closed.
#[derive(Debug)]
pub struct Fresh(State);

#[derive(Debug)]
enum State {
    /// Not registered: every call goes to the descriptor.
    Raw(std::net::TcpStream),
    /// Registered: every call goes to the stream, as for any other connection.
    Registered(Stream),
    /// Registration failed (the socket is closed); every call fails.
    Failed,
}

impl Fresh {
    /// Takes over a connection just accepted. The socket must be non-blocking (accepted with
    /// `SOCK_NONBLOCK`), or a read with nothing to read would block the worker.
    pub fn new(sock: std::net::TcpStream) -> Fresh {
        Fresh(State::Raw(sock))
    }

    /// The connection as a [`Stream`], registering it now if it is not yet.
    ///
    /// # Errors
    /// If the runtime cannot register it (then the socket is closed).
    pub fn into_stream(mut self) -> io::Result<Stream> {
        self.register()?;
        match self.0 {
            State::Registered(s) => Ok(s),
            _ => unreachable!("registered just above"),
        }
    }

    /// True while the runtime has never seen the connection.
    pub fn is_raw(&self) -> bool {
        matches!(self.0, State::Raw(_))
    }

    /// Registers the connection (once) and returns it as a stream.
    fn register(&mut self) -> io::Result<&mut Stream> {
        if let State::Raw(_) = self.0 {
            let State::Raw(sock) = std::mem::replace(&mut self.0, State::Failed) else {
                unreachable!("matched just above")
            };
            self.0 = State::Registered(Stream::Tcp(tokio::net::TcpStream::from_std(sock)?));
        }
        match &mut self.0 {
            State::Registered(s) => Ok(s),
            _ => Err(io::Error::other("the connection could not be registered")),
        }
    }

    /// The stream to poll once the raw call would block: registered now, and polled with `cx`
    /// so the runtime wakes the task when the socket is ready.
    fn stream_for(&mut self) -> io::Result<Pin<&mut Stream>> {
        self.register().map(Pin::new)
    }
}

/// One `recv` into the unfilled part of `buf`; `WouldBlock` when nothing is there.
///
/// # Errors
/// What `recv` returns (`EINTR` is retried).
pub fn recv(sock: &std::net::TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: the bytes handed to `recv` are only written, never read, and only the `n` it
    // reports written are then marked initialized and filled.
    let dst = unsafe { buf.unfilled_mut() };
    loop {
        // SAFETY: `dst` is valid for writes of `dst.len()` bytes for the whole call.
        let n = unsafe { nix::libc::recv(sock.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len(), 0) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: `recv` wrote the first `n` bytes of the unfilled part.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads into the spare room of `buf` (which the caller reserved) with one `recv`.
///
/// # Errors
/// As [`recv`].
pub fn recv_buf(sock: &std::net::TcpStream, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let mut rb = ReadBuf::uninit(spare);
    let n = recv(sock, &mut rb)?;
    // SAFETY: `recv` initialized the first `n` spare bytes.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

impl AsyncRead for Fresh {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Raw(sock) = &this.0 {
            match recv(sock, buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match this.stream_for() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Fresh {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let State::Raw(sock) = &this.0 {
            // std's `write` on a socket is `send` with MSG_NOSIGNAL, as the runtime's is.
            match (&*sock).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
        match this.stream_for() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let State::Raw(sock) = &this.0 {
            match (&*sock).write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
        match this.stream_for() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            State::Raw(_) | State::Failed => Poll::Ready(Ok(())),
            State::Registered(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            State::Raw(sock) => Poll::Ready(sock.shutdown(std::net::Shutdown::Write)),
            State::Registered(s) => Pin::new(s).poll_shutdown(cx),
            State::Failed => Poll::Ready(Err(io::Error::other(
                "the connection could not be registered",
            ))),
        }
    }
}

impl Wire for Fresh {
    async fn sendfile(&mut self, file: &File, offset: &mut u64, len: usize) -> io::Result<usize> {
        if let State::Raw(sock) = &self.0 {
            loop {
                match rustix::fs::sendfile(sock, file, Some(&mut *offset), len) {
                    Ok(n) => return Ok(n),
                    Err(rustix::io::Errno::INTR) => {}
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.register()?.sendfile(file, offset, len).await
    }

    fn fd(&self) -> RawFd {
        match &self.0 {
            State::Raw(s) => s.as_raw_fd(),
            State::Registered(s) => Wire::fd(s),
            State::Failed => -1,
        }
    }

    async fn write_all_before_close(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if let State::Raw(sock) = &self.0 {
            while !bytes.is_empty() {
                match nix::sys::socket::send(sock.as_raw_fd(), bytes, more_flags()) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => bytes = &bytes[n..],
                    Err(nix::errno::Errno::EINTR) => {}
                    // The rest waits for writability, registered.
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            if bytes.is_empty() {
                return Ok(());
            }
        }
        self.register()?.write_all_before_close(bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fresh server end (non-blocking, as `accept4` gives it) and its client.
    fn fresh_pair() -> (Fresh, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (Fresh::new(server), client)
    }

    /// What is there is read and written on the descriptor; the runtime sees the connection
    /// only once a read would block, and then wakes the reader when bytes come.
    #[test]
    fn a_fresh_connection_registers_only_when_it_would_block() {
        crate::service::test_support::runtime().block_on(async {
            let (mut fresh, mut client) = fresh_pair();
            // Loopback queues the bytes at the server before `write` returns.
            std::io::Write::write_all(&mut client, b"ping").unwrap();
            let mut buf = [0u8; 16];
            let got = fresh.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..got], b"ping");
            assert!(fresh.is_raw());
            fresh.write_all(b"pong").await.unwrap();
            assert!(fresh.is_raw());
            let mut four = [0u8; 4];
            std::io::Read::read_exact(&mut client, &mut four).unwrap();
            assert_eq!(&four, b"pong");
            // Nothing to read: this read registers and waits for the client.
            let writer = std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                std::io::Write::write_all(&mut client, b"late").unwrap();
                client
            });
            let mut late = [0u8; 4];
            fresh.read_exact(&mut late).await.unwrap();
            assert_eq!(&late, b"late");
            assert!(!fresh.is_raw());
            drop(writer.join().unwrap());
        });
    }
}
