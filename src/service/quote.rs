//! `quote`: each line a client sends is answered with the current quote, then becomes the
//! current quote. One quote for the whole server: it lives on the [`Bus`] (in the hub), and
//! the exchange is one atomic swap there, so two clients on two workers never both get the
//! same old quote.
//!
//! Lines end in LF or CRLF; an unterminated last line before the client half-closes counts.
//! Replies end in CRLF. A line longer than `--max-line` gets an error line and the connection
//! is closed rather than resynchronised: a client that sends such a line is not speaking the
//! protocol, and skipping to the next newline would answer whatever half-line follows.
//!
//! When its worker retires with hand-over, a quote connection is offered to a newer worker
//! between two lines, with what its reader had read beyond the last one
//! ([`super::handoff`]); if no worker takes it, it closes as before hand-overs existed.

use std::fmt;
use std::io;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::echo::far;
use super::handoff::{Parcel, stream_fd};
use super::lines::{Line, LineReader, ReaderState};
use super::park::Spot;
use super::{ConnContext, idle};
use crate::bus::{Bus, BusError};
use crate::net::Stream;

/// The bus key of the quote.
pub const KEY: &str = "quote";

/// The quote service of one worker.
pub struct Quote {
    bus: Bus,
    max_line: usize,
}

impl fmt::Debug for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quote")
            .field("max_line", &self.max_line)
            .finish_non_exhaustive()
    }
}

impl Quote {
    /// The service for one worker. `initial` is the quote served until a client sends one:
    /// every worker offers it to the bus, which keeps the first and never lets it replace a
    /// quote a client sent ([`Bus::set_if_absent`]).
    pub fn new(bus: Bus, max_line: usize, initial: &str) -> Quote {
        bus.set_if_absent(KEY, bytes::Bytes::copy_from_slice(initial.as_bytes()));
        Quote { bus, max_line }
    }

    /// Serves one connection: a swap per line, until the client closes or goes idle.
    ///
    /// # Errors
    /// I/O errors and the idle timeout; both end this connection only.
    ///
    /// Not an `async fn`: the connection is set up synchronously and the future returned is
    /// its run alone; an async wrapper would keep room for the reader and the write half it
    /// moved into the run, in every idle client's future (issue 13).
    pub fn serve<'a>(
        &'a self,
        stream: Stream,
        ctx: &'a ConnContext,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        self.serve_at(stream, ctx, Spot::none(), None)
    }

    /// [`Quote::serve`], parking the connection at `spot` between lines while it is idle
    /// ([`super::park`]); a parked connection's task ends here, and it carries on here again
    /// with `start`, the idle deadline it parked with.
    ///
    /// # Errors
    /// As [`Quote::serve`].
    pub fn serve_at<'a>(
        &'a self,
        stream: Stream,
        ctx: &'a ConnContext,
        spot: Spot<'a>,
        start: Option<Instant>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        if start.is_none() {
            tracing::debug!(peer = %ctx.peer, "quote connection");
        }
        let fd = stream_fd(&stream);
        let (rd, wr) = tokio::io::split(stream);
        let lines = LineReader::new(rd, self.max_line);
        self.run(fd, lines, wr, ctx, spot, start)
    }

    /// Carries on a connection another worker handed over, from its reader's `state`.
    ///
    /// # Errors
    /// As [`Quote::serve`].
    pub async fn carry_on(
        &self,
        stream: Stream,
        state: ReaderState,
        ctx: &ConnContext,
        spot: Spot<'_>,
    ) -> io::Result<()> {
        tracing::debug!(peer = %ctx.peer, "quote connection taken over");
        let fd = stream_fd(&stream);
        let (rd, wr) = tokio::io::split(stream);
        let lines = LineReader::resume(rd, self.max_line, state);
        self.run(fd, lines, wr, ctx, spot, None).await
    }

    async fn run(
        &self,
        fd: std::os::fd::RawFd,
        mut lines: LineReader<tokio::io::ReadHalf<Stream>>,
        mut wr: tokio::io::WriteHalf<Stream>,
        ctx: &ConnContext,
        spot: Spot<'_>,
        start: Option<Instant>,
    ) -> io::Result<()> {
        let mut kept = false;
        // One timer for the idle deadline and the moment to park, reset before each wait: as
        // `service::idle`, without the copy of the read future an async wrapper keeps (this
        // select is what every idle client in a task holds).
        let mut timer = std::pin::pin!(tokio::time::sleep_until(far()));
        let mut idle_at = start.or_else(|| ctx.idle_timeout.map(|d| Instant::now() + d));
        loop {
            // The timer ends the wait to park first, if the connection may (then at the idle
            // deadline), else at the idle deadline.
            let park_at = spot.park_at(Instant::now(), idle_at);
            let mut parking = park_at.is_some();
            timer
                .as_mut()
                .reset(park_at.or(idle_at).unwrap_or_else(far));
            let line = loop {
                let line = tokio::select! {
                    biased;
                    () = ctx.retire.requested(), if !kept => {
                        // Boxed: the offer's state is not part of every idle client's future.
                        match Box::pin(ctx.retire.offer(fd, &Parcel::Quote { reader: lines.state() })).await {
                            // Another worker reads and writes from here on: this one lets go
                            // without shutting anything.
                            Ok(_) => return Ok(()),
                            Err(err) => {
                                tracing::debug!(peer = %ctx.peer, cause = %err, "quote connection stays");
                                kept = true;
                                continue;
                            }
                        }
                    }
                    l = lines.next() => l?,
                    () = &mut timer => {
                        if !std::mem::take(&mut parking) {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                        }
                        timer.as_mut().reset(idle_at.unwrap_or_else(far));
                        if !lines.between_lines() {
                            continue;
                        }
                        // Whole again, with nothing read and not answered: park it.
                        let stream = lines.into_inner().unsplit(wr);
                        match spot.park(stream, idle_at, false) {
                            Ok(_) => return Ok(()),
                            // Not now (the worker is full or stopping): wait on in this task.
                            Err(stream) => {
                                let (rd, w) = tokio::io::split(stream);
                                lines = LineReader::new(rd, self.max_line);
                                wr = w;
                                continue;
                            }
                        }
                    }
                    () = ctx.stop.cancelled() => None,
                };
                break line;
            };
            match line {
                None => break,
                // Only telnet readers report these; quote's takes bytes as they come.
                Some(Line::TimingMark | Line::Negotiation(_)) => continue,
                Some(Line::TooLong) => {
                    let msg = format!(
                        "* line too long (more than {} bytes): closing\r\n",
                        self.max_line
                    );
                    idle(ctx.idle_timeout, wr.write_all(msg.as_bytes())).await?;
                    break;
                }
                Some(Line::Text(new)) => {
                    // Boxed: the bus request is a large future, and inline it would make
                    // every idle client's future as large (issue 13).
                    Box::pin(self.answer(new, &mut wr, ctx)).await?;
                }
            }
            idle_at = ctx.idle_timeout.map(|d| Instant::now() + d);
        }
        wr.shutdown().await
    }

    /// Swaps `new` in and writes the old quote (or why there is none) to the client.
    async fn answer(
        &self,
        new: bytes::Bytes,
        wr: &mut tokio::io::WriteHalf<Stream>,
        ctx: &ConnContext,
    ) -> io::Result<()> {
        let reply = match self.bus.swap(KEY, new).await {
            Ok(old) => {
                let mut out = Vec::with_capacity(old.len() + 2);
                out.extend_from_slice(&old);
                out.extend_from_slice(b"\r\n");
                out
            }
            Err(BusError::Unavailable) => {
                b"* the quote is unavailable right now; try again\r\n".to_vec()
            }
        };
        idle(ctx.idle_timeout, wr.write_all(&reply)).await
    }
}

#[cfg(test)]
mod memory {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use crate::bus::Bus;
    use crate::service::ConnContext;
    use crate::service::lines::{heap, with_scratch};

    use crate::service::test_support::{pair, runtime};

    /// Every idle quote client holds one `serve` future while it waits for its next line: no
    /// buffer in it (the line reader reads into the worker's scratch buffer), and the bus
    /// request a line makes is boxed, not part of what an idle client holds.
    #[test]
    fn an_idle_connection_future_stays_small() {
        runtime().block_on(async {
            let (stream, _client) = pair().await;
            let ctx = ConnContext::detached(crate::net::Peer::Unix, Default::default());
            // No hub listens for this pid: the bus client retries in the background.
            let bus = Bus::embedded(std::process::id());
            let quote = super::Quote::new(bus, crate::config::DEFAULT_MAX_LINE, "q");
            let f = quote.serve(stream, &ctx);
            let size = std::mem::size_of_val(&f);
            // 848 bytes on rustc 1.95: the line reader (no buffer), its read, one timer (a
            // tokio Sleep for the idle deadline and the moment to park), the idle deadline,
            // where to park, the stop signal, the write half, the wait for a hand-over (issue
            // 10) and the socket's fd. 776 before parking, 544 before hand-overs; 1,240 with
            // the bus request inline. Held only until the connection parks
            // (`service::park::PARK_AFTER`).
            assert!(size <= 856, "serve future is {size} bytes");
        });
    }

    /// After long lines (each one read in pieces and buffered until its newline, then swapped
    /// through a real hub), a client that goes quiet holds no more heap than before its first
    /// byte: the partial line's buffer and the reply are gone.
    #[test]
    fn buffers_are_released_when_the_connection_goes_idle() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let address = dir.path().join("hub");
            crate::bus::hub::serve_in_process(&address).unwrap();
            // Every quote the same length: replacing one in the hub and in the client's cache
            // then costs nothing, and only the connection's own allocations move the count.
            const LEN: usize = 40_000;
            let quote_of = |b: u8| vec![b; LEN];
            let initial = String::from_utf8(quote_of(b'i')).unwrap();
            let bus = Bus::embedded_at(address);
            let quote = super::Quote::new(bus.clone(), 64 * 1024, &initial);
            bus.sync().await.unwrap();
            let (stream, client) = pair().await;
            let ctx = ConnContext::detached(crate::net::Peer::Unix, Default::default());
            with_scratch(|_| ());
            let (rd, mut wr) = client.into_split();
            let mut rd = BufReader::with_capacity(2 * LEN, rd);
            let mut reply = Vec::with_capacity(2 * LEN);
            let lines: Vec<Vec<u8>> = (b'a'..b'f').map(quote_of).collect();
            let server = tokio::spawn(async move { quote.serve(stream, &ctx).await });
            let mut exchange = async |line: &[u8]| {
                wr.write_all(line).await.unwrap();
                wr.write_all(b"\n").await.unwrap();
                reply.clear();
                rd.read_until(b'\n', &mut reply).await.unwrap();
                assert_eq!(reply.len(), LEN + 2);
            };
            // One exchange first, so that everything the bus keeps for good exists (its
            // queues' first blocks, its pending-request table).
            exchange(&lines[0]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let before = heap::live();
            for line in &lines[1..] {
                exchange(line).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let after = heap::live();
            assert!(
                after - before <= 512,
                "an idle quote connection kept {} bytes of heap",
                after - before
            );
            assert!(!server.is_finished());
        });
    }
}
