//! Handing a live connection of a line service (chat, echo, quote) to another worker, and
//! taking one over: the parcel (what the session was doing), the conversation between the two
//! workers, and the socket itself, passed with `SCM_RIGHTS`.
//!
//! This module owns the wire between two workers and the connection's side of a retirement
//! ([`Retire`], in every [`super::ConnContext`]). It does not find the other worker, listen, or
//! decide when a worker retires: that is the worker's ([`crate::worker::handoff`]), which hands
//! this module the addresses to try ([`Targets`]) and the connections that arrive.
//!
//! # The conversation (one Unix stream connection per handed connection)
//!
//! ```text
//! old worker                                   new worker
//! ── Offer { service, parcel } + the fd ──────▶ checks it can serve it (service by name,
//!                                               a free connection slot, not retiring);
//!                                               chat: moves the name on the bus (the cut)
//! ◀──────────────────────────── Taken | Refused
//! chat: writes what was ordered before the
//! cut, then stops writing
//! ── Flushed ─────────────────────────────────▶ starts writing to the client
//! closes its copy of the socket
//! ```
//!
//! Between the two, the client's socket is never closed, so its local port stays; bytes it
//! sends meanwhile wait in the kernel for the new worker (the old one stopped reading before
//! the offer and passes on what it had read but not used, in the parcel). A `Refused`, or a
//! new worker that cannot be reached, leaves the connection with the old worker, which then
//! does what it did before hand-overs existed (see each service).
//!
//! Frames are a 4-byte big-endian length and a postcard body (as the bus's); the descriptor
//! travels with the first byte of the offer's length.
//!
//! **Across a binary upgrade** the two workers may be different builds. postcard has no field
//! tags, so the layout of [`Parcel`] and of the messages is the compatibility contract: a new
//! worker that cannot decode an offer drops the conversation, and the old worker keeps the
//! connection (the old behaviour), which is safe but not seamless. Add variants at the end;
//! change a variant's fields only knowing that the first upgrade across the change falls back.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lines::ReaderState;
use crate::net::Stream;

/// The largest message either side accepts: a parcel carries at most a line reader's buffer,
/// bounded by `--max-line` ([`crate::config::MAX_MAX_LINE`]), plus a name.
pub const MAX_MESSAGE: usize = 2 * crate::config::MAX_MAX_LINE + 4096;

/// How long an old worker waits for one answer from a new worker before trying the next:
/// longer than the new worker may wait for the bus ([`crate::bus::REQUEST_TIMEOUT`]), so a
/// new worker that moved a name always answers before the old one gives up on it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

/// What a session was doing, for the worker that carries it on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Parcel {
    /// Echo keeps nothing between reads: it hands over only between a write and the next read.
    Echo,
    /// Quote: what its line reader had read and not yet answered.
    Quote {
        /// The reader's place.
        reader: ReaderState,
    },
    /// Chat: the reader's place and, for a member with a name, who it is.
    Chat {
        /// The reader's place (and the telnet parser's).
        reader: ReaderState,
        /// `None` for a connection still choosing its name.
        member: Option<Member>,
    },
}

/// A chat member in flight between workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Its name, as shown.
    pub name: String,
    /// Its reservation key on the bus.
    pub key: String,
    /// The pid of the worker that held it (the bus knows the holder by it).
    pub worker: u32,
    /// Its holder id in that worker.
    pub holder: u64,
}

/// One message between the two workers.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    /// Old → new, with the socket: take this connection of the service named `service`.
    Offer { service: String, parcel: Parcel },
    /// New → old: carried on; the old worker must not read from the socket again.
    Taken,
    /// New → old: not taken (the reason, for the old worker's log); the old worker keeps it.
    Refused { why: String },
    /// Old → new (chat): everything the old worker owed the client is written.
    Flushed,
}

/// Where a retiring worker may send its connections, as its worker found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Still looking.
    Searching,
    /// These workers' hand-over sockets, best first.
    Workers(Vec<PathBuf>),
    /// Nobody to hand to (and the worker stopped looking): the old behaviour applies.
    Nobody,
}

/// The worker's side of [`Retire`]: tells every connection that the worker retires, and where
/// to hand it.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    shared: Arc<Shared>,
}

/// What a worker's connections share about its retirement: one per worker, so a connection
/// holds one pointer to it, not copies (issue 13: an idle connection's cost).
#[derive(Debug)]
struct Shared {
    requested: CancellationToken,
    found: watch::Sender<Found>,
    stats: Stats,
    /// Which target the next offer tries first, so connections spread over the new workers.
    next: AtomicUsize,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            requested: CancellationToken::new(),
            found: watch::Sender::new(Found::Searching),
            stats: Stats::default(),
            next: AtomicUsize::new(std::process::id() as usize),
        }
    }
}

/// Counts for the worker's summary log line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections another worker took.
    pub handed: AtomicUsize,
    /// Connections no worker took: they got the old behaviour.
    pub kept: AtomicUsize,
}

impl Targets {
    /// The handle each connection gets.
    pub fn retire(&self) -> Retire {
        Retire {
            shared: Arc::clone(&self.shared),
            service: None,
        }
    }

    /// The worker retires with hand-over: every line connection offers itself (call before
    /// the stop token is cancelled, so services see this first).
    pub fn request(&self) {
        self.shared.requested.cancel();
    }

    /// Whether [`Targets::request`] was called.
    pub fn requested(&self) -> bool {
        self.shared.requested.is_cancelled()
    }

    /// Where connections go (or that they stay).
    pub fn found(&self, found: Found) {
        self.shared.found.send_replace(found);
    }

    /// The counts so far.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

/// A connection's side of a retirement: whether its worker retires with hand-over, and the
/// way to the worker that carries it on. A connection a worker does not know (a service run
/// alone) gets [`Retire::default`], which is never requested.
#[derive(Debug, Clone)]
pub struct Retire {
    /// The worker's retirement, shared by all its connections.
    shared: Arc<Shared>,
    /// The name of the connection's service in the configuration: the new worker serves it
    /// with its service of that name. `None` for a connection of no named service.
    service: Option<Arc<str>>,
}

impl Default for Retire {
    fn default() -> Self {
        Targets::default().retire()
    }
}

/// Why a connection stays with its worker.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// No worker to hand to.
    #[error("no ready worker to take the connection")]
    Nobody,
    /// Every worker tried refused or failed; the last reason.
    #[error("no worker took the connection: {0}")]
    Refused(String),
}

impl Retire {
    /// The same, for a connection of the service named `service`.
    pub fn for_service(mut self, service: Arc<str>) -> Retire {
        self.service = Some(service);
        self
    }

    /// Resolves once the worker retires with hand-over. Services wait on it beside their
    /// reads, and take it before their stop token (a `biased` select).
    pub async fn requested(&self) {
        self.shared.requested.cancelled().await
    }

    /// Whether the worker retires with hand-over.
    pub fn is_requested(&self) -> bool {
        self.shared.requested.is_cancelled()
    }

    /// Offers the connection whose socket is `fd` to a newer worker, with `parcel`, for its
    /// service ([`Retire::for_service`]); tries
    /// every worker found, starting with the next in turn. The caller must have stopped
    /// reading the socket, and keeps it open until this returns (the new worker gets its own
    /// descriptor). On success the new worker serves the client; the caller must not read from
    /// the socket again, and (chat) tells it [`Courier::flushed`] once it wrote its last bytes.
    ///
    /// # Errors
    /// [`OfferError`] when no worker took it: the caller keeps the connection.
    pub async fn offer(&self, fd: RawFd, parcel: &Parcel) -> Result<Courier, OfferError> {
        let service = self.service.as_deref().unwrap_or("");
        let mut found = self.shared.found.subscribe();
        let workers = match found.wait_for(|f| *f != Found::Searching).await {
            Ok(f) => match &*f {
                Found::Workers(w) if !w.is_empty() => w.clone(),
                _ => return Err(self.kept(OfferError::Nobody)),
            },
            Err(_) => return Err(self.kept(OfferError::Nobody)),
        };
        let first = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..workers.len() {
            let addr = &workers[(first + i) % workers.len()];
            match tokio::time::timeout(ANSWER_TIMEOUT, offer_to(addr, fd, service, parcel)).await {
                Ok(Ok(courier)) => {
                    self.shared.stats.handed.fetch_add(1, Ordering::Relaxed);
                    return Ok(courier);
                }
                Ok(Err(err)) => last = err.to_string(),
                Err(_) => last = "no answer in time".to_string(),
            }
            tracing::debug!(to = %crate::bus::show_address(addr), why = %last, "hand-over refused");
        }
        Err(self.kept(OfferError::Refused(last)))
    }

    fn kept(&self, err: OfferError) -> OfferError {
        self.shared.stats.kept.fetch_add(1, Ordering::Relaxed);
        err
    }
}

async fn offer_to(
    addr: &PathBuf,
    fd: RawFd,
    service: &str,
    parcel: &Parcel,
) -> io::Result<Courier> {
    let mut stream = UnixStream::connect(addr).await?;
    let offer = Message::Offer {
        service: service.to_string(),
        parcel: parcel.clone(),
    };
    send(&mut stream, &offer, Some(fd)).await?;
    match recv(&mut stream).await?.0 {
        Message::Taken => Ok(Courier { stream }),
        Message::Refused { why } => Err(io::Error::other(why)),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected hand-over answer {other:?}"),
        )),
    }
}

/// The old worker's end once a connection was taken.
#[derive(Debug)]
pub struct Courier {
    stream: UnixStream,
}

impl Courier {
    /// Tells the new worker that everything owed to the client is written: it may write.
    pub async fn flushed(mut self) {
        if let Err(err) = send(&mut self.stream, &Message::Flushed, None).await {
            tracing::debug!(cause = %err, "cannot tell the new worker the hand-over is flushed");
        }
    }
}

/// An offer received by a new worker: the connection, what to carry on, and the way to answer.
#[derive(Debug)]
pub struct Offer {
    /// The name of the service (in the configuration) that served it.
    pub service: String,
    /// What the session was doing.
    pub parcel: Parcel,
    /// The client's socket (this worker's own descriptor of it).
    pub fd: OwnedFd,
    /// Where the answer goes.
    pub receipt: Receipt,
}

/// The new worker's end of the conversation.
#[derive(Debug)]
pub struct Receipt {
    stream: UnixStream,
}

impl Receipt {
    /// Refuses the connection (the old worker keeps it); `why` goes to its log.
    pub async fn refuse(mut self, why: &str) {
        let _ = send(
            &mut self.stream,
            &Message::Refused {
                why: why.to_string(),
            },
            None,
        )
        .await;
    }

    /// Takes the connection; resolves with the way to learn that the old worker is done
    /// writing.
    ///
    /// # Errors
    /// If the old worker cannot be told (it is gone): it will not write again either way.
    pub async fn take(mut self) -> io::Result<Flushed> {
        send(&mut self.stream, &Message::Taken, None).await?;
        Ok(Flushed {
            stream: self.stream,
        })
    }
}

/// Resolves when the old worker is done writing to a taken connection.
#[derive(Debug)]
pub struct Flushed {
    stream: UnixStream,
}

impl Flushed {
    /// Waits for the old worker's `Flushed`, or for it to close the conversation (it wrote
    /// nothing more in either case), at most `limit`. False if the limit passed first.
    pub async fn wait(mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, recv(&mut self.stream))
            .await
            .is_ok()
    }
}

/// Reads an offer from a connection to this worker's hand-over socket.
///
/// # Errors
/// If the peer sends anything but an offer with a descriptor.
pub async fn receive(mut stream: UnixStream) -> io::Result<Offer> {
    let (msg, fd) = recv(&mut stream).await?;
    let Message::Offer { service, parcel } = msg else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a hand-over must start with an offer",
        ));
    };
    let fd =
        fd.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "an offer without a socket"))?;
    Ok(Offer {
        service,
        parcel,
        fd,
        receipt: Receipt { stream },
    })
}

/// The socket descriptor of a connection, to pass with an offer (valid while `stream` lives).
pub fn stream_fd(stream: &Stream) -> RawFd {
    match stream {
        Stream::Tcp(s) => s.as_raw_fd(),
        Stream::Unix(s) => s.as_raw_fd(),
    }
}

/// A [`Stream`] on a socket taken over from another worker (TCP or Unix, told by its address
/// family), registered with this worker's runtime, and its peer.
///
/// # Errors
/// If the descriptor is not a stream socket this worker can use.
pub fn adopt_stream(fd: OwnedFd) -> io::Result<(Stream, crate::net::Peer)> {
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname};
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(io::Error::from)?;
    match addr.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            let std = std::net::TcpStream::from(fd);
            std.set_nonblocking(true)?;
            let s = tokio::net::TcpStream::from_std(std)?;
            let _ = s.set_nodelay(true);
            let peer = s.peer_addr()?;
            let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
            Ok((Stream::Tcp(s), crate::net::Peer::Tcp(peer)))
        }
        Some(AddressFamily::Unix) => {
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true)?;
            Ok((
                Stream::Unix(tokio::net::UnixStream::from_std(std)?),
                crate::net::Peer::Unix,
            ))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a TCP or Unix socket",
        )),
    }
}

/// Sends one message, with `fd` attached to its first byte.
async fn send(stream: &mut UnixStream, msg: &Message, fd: Option<RawFd>) -> io::Result<()> {
    let body = postcard::to_allocvec(msg).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let mut sent = 0;
    if let Some(fd) = fd {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        sent = stream
            .async_io(Interest::WRITABLE, || {
                let fds = [fd];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                let iov = [io::IoSlice::new(&frame)];
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await?;
    }
    stream.write_all(&frame[sent..]).await
}

/// Reads one message and the descriptor that came with it, if any.
async fn recv(stream: &mut UnixStream) -> io::Result<(Message, Option<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut len = [0u8; 4];
    let mut got = 0;
    let mut fd = None;
    while got < 4 {
        let (n, received) = stream
            .async_io(Interest::READABLE, || {
                let mut cmsg = nix::cmsg_space!(RawFd);
                let mut iov = [io::IoSliceMut::new(&mut len[got..])];
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut received = None;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just installed `raw` in this process for
                            // us (SCM_RIGHTS); nothing else owns it.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            if received.is_none() {
                                received = Some(owned);
                            }
                        }
                    }
                }
                Ok((msg.bytes, received))
            })
            .await?;
        if received.is_some() {
            fd = received;
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "hand-over message too large",
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    let msg =
        postcard::from_bytes(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((msg, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_offer_carries_the_socket_and_the_parcel() {
        let (a, b) = UnixStream::pair().unwrap();
        let (client, served) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = served.as_raw_fd();
        let parcel = Parcel::Echo;
        let old = async move {
            let mut a = a;
            send(
                &mut a,
                &Message::Offer {
                    service: "echo".into(),
                    parcel,
                },
                Some(fd),
            )
            .await
            .unwrap();
            recv(&mut a).await.unwrap().0
        };
        let new = async move {
            let offer = receive(b).await.unwrap();
            assert_eq!(offer.service, "echo");
            let (stream, _) = adopt_stream(offer.fd).unwrap();
            let _ = offer.receipt.take().await.unwrap();
            stream
        };
        let (answer, mut stream) = tokio::join!(old, new);
        assert!(matches!(answer, Message::Taken));
        drop(served); // the old worker's copy: the connection lives on in the new one
        use std::io::{Read, Write};
        let mut client = client;
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        stream.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }
}
