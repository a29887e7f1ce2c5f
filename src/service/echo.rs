//! `echo`: bytes in, the same bytes out.
//!
//! An idle connection holds no buffer (issue 13): the task waits for the socket to be
//! readable, reads into the worker's scratch buffer ([`lines::with_scratch`]) and writes what
//! came straight back from there. Only what the socket would not take at once is copied into a
//! buffer of the connection's own, written out before the next read and then dropped.
//!
//! Memory is bounded by one read per connection: the next read waits until the previous chunk
//! is written, so a client that sends but never reads fills its own socket buffers and is then
//! simply not read from (TCP back-pressure) until the idle timeout closes it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::handoff::{Parcel, stream_fd};
use super::park::Spot;
use super::{ConnContext, lines};
use crate::net::Stream;

/// The most bytes read (and then written) at a time, per connection: the worker's scratch
/// buffer, shared by all its connections ([`lines::SCRATCH_BYTES`]).
pub const ECHO_BUFFER: usize = lines::SCRATCH_BYTES;

/// Echoes until the client half-closes or goes silent for the idle timeout. The client's
/// half-close is passed on (our write side is shut after the last byte), as `nc -N` expects.
///
/// # Errors
/// I/O errors and the idle timeout; both end this connection only.
///
/// Not an `async fn`: the future is [`run`]'s own, without a wrapper's copy of the stream.
pub fn serve(stream: Stream, ctx: &ConnContext) -> impl Future<Output = io::Result<()>> + '_ {
    run(stream, ctx, Spot::none(), None)
}

/// [`serve`], parking the connection at `spot` while it is idle ([`super::park`]); a parked
/// connection's task ends here, and it carries on in [`run`] again with `start`, the idle
/// deadline it parked with.
///
/// # Errors
/// As [`serve`].
pub async fn run(
    mut stream: Stream,
    ctx: &ConnContext,
    spot: Spot<'_>,
    start: Option<Instant>,
) -> io::Result<()> {
    // One timer for the connection's whole life, reset before each wait, for both the idle
    // deadline and the moment to park: `service::idle` around each wait would hold a timer
    // and a copy of the wait (issue 13: every idle connection in a task holds this future).
    let mut timer = std::pin::pin!(tokio::time::sleep_until(far()));
    // Set once the connection was offered to a newer worker and stayed here.
    let mut kept = false;
    let mut idle_at = start.or_else(|| ctx.idle_timeout.map(|d| Instant::now() + d));
    loop {
        // The timer ends the wait to park first, if the connection may (then at the idle
        // deadline), else at the idle deadline.
        let park_at = spot.park_at(Instant::now(), idle_at);
        let mut parking = park_at.is_some();
        timer
            .as_mut()
            .reset(park_at.or(idle_at).unwrap_or_else(far));
        // A step either echoes what it read or consumes nothing: dropping it for a hand-over
        // (between a write and the next read) loses no byte, and nothing is buffered when the
        // connection parks.
        let step = loop {
            let step = tokio::select! {
                biased;
                () = ctx.retire.requested(), if !kept => {
                    if Box::pin(hand_over(&stream, ctx)).await {
                        return Ok(());
                    }
                    kept = true;
                    continue;
                }
                r = std::future::poll_fn(|cx| match poll_echo(&mut stream, cx) {
                    Poll::Pending => timer.as_mut().poll(cx).map(|()| Ok(Echoed::Timer)),
                    done => done,
                }) => r?,
            };
            if !matches!(step, Echoed::Timer) {
                break step;
            }
            if !std::mem::take(&mut parking) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
            }
            match spot.park(stream, idle_at, false) {
                Ok(_) => return Ok(()),
                // Not now (the worker is full or stopping): wait on in this task.
                Err(s) => stream = s,
            }
            timer.as_mut().reset(idle_at.unwrap_or_else(far));
        };
        let (n, rest) = match step {
            Echoed::Eof => return stream.shutdown().await,
            Echoed::All(n) => (n, Vec::new()),
            Echoed::Partly(n, rest) => (n, rest),
            Echoed::Timer => unreachable!("handled in the wait"),
        };
        // Back-pressure: nothing more is read until the client has taken the tail.
        timer
            .as_mut()
            .reset(ctx.idle_timeout.map_or_else(far, |d| Instant::now() + d));
        let mut written = 0;
        std::future::poll_fn(|cx| {
            while written < rest.len() {
                match Pin::new(&mut stream).poll_write(cx, &rest[written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(k)) => written += k,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        return timer.as_mut().poll(cx).map(|()| {
                            Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"))
                        });
                    }
                }
            }
            Poll::Ready(Ok(()))
        })
        .await?;
        ctx.metrics.bytes_out(n as u64);
        idle_at = ctx.idle_timeout.map(|d| Instant::now() + d);
    }
}

/// A deadline that never comes in practice (a year away): the timer's place when there is
/// neither an idle deadline nor a moment to park.
pub(crate) fn far() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// What one read brought and what became of it.
#[derive(Debug)]
enum Echoed {
    /// The client half-closed.
    Eof,
    /// This many bytes were read and written back.
    All(usize),
    /// This many were read; the socket did not take the tail, copied here to write next.
    Partly(usize, Vec<u8>),
    /// Nothing came before the timer: the idle deadline, or the moment to park.
    Timer,
}

/// Waits for readability, reads into the scratch buffer and writes back as much as the socket
/// takes at once, copying out only what it does not.
fn poll_echo(stream: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<Echoed>> {
    lines::with_scratch(|scratch| {
        let mut read = ReadBuf::new(scratch);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        let data = read.filled();
        if data.is_empty() {
            return Poll::Ready(Ok(Echoed::Eof));
        }
        let mut written = 0;
        while written < data.len() {
            match Pin::new(&mut *stream).poll_write(cx, &data[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The waker registered here may fire later for nothing: harmless.
                Poll::Pending => {
                    return Poll::Ready(Ok(Echoed::Partly(data.len(), data[written..].to_vec())));
                }
            }
        }
        Poll::Ready(Ok(Echoed::All(data.len())))
    })
}

/// Offers the connection to a newer worker; true if one took it (this worker must then drop
/// it without touching it: its own descriptor closes, the connection lives on there).
async fn hand_over(stream: &Stream, ctx: &ConnContext) -> bool {
    match ctx.retire.offer(stream_fd(stream), &Parcel::Echo).await {
        Ok(_) => true,
        Err(err) => {
            tracing::debug!(peer = %ctx.peer, cause = %err, "echo connection stays");
            false
        }
    }
}

#[cfg(test)]
mod memory {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::service::ConnContext;
    use crate::service::lines::heap;

    use crate::service::test_support::{pair, runtime};

    /// Every idle echo connection holds one `serve` future (issue 13: 100,000 of them on 2
    /// workers under 150 MB): no buffer in it, the read goes to the worker's scratch buffer.
    #[test]
    fn an_idle_connection_future_stays_small() {
        runtime().block_on(async {
            let (stream, _client) = pair().await;
            let ctx = ConnContext::detached(crate::net::Peer::Unix, Default::default());
            let f = super::serve(stream, &ctx);
            let size = std::mem::size_of_val(&f);
            // 472 bytes on rustc 1.95: the stream, one timer (a tokio Sleep, reset before each
            // wait, for the idle deadline and the moment to park), the idle deadline, where to
            // park, the tail a slow client has not taken yet, and the wait for a hand-over to a
            // newer worker (issue 10). 392 before parking, 312 before hand-overs; 176 plus a
            // 16 KiB buffer on the heap from the first byte on before issue 13. An idle
            // connection holds it only until it parks (`service::park::PARK_AFTER`).
            assert!(size <= 480, "serve future is {size} bytes");
        });
    }

    /// After traffic, including writes the client is too slow to take at once, a connection
    /// that goes quiet again holds no more heap than before its first byte.
    #[test]
    fn buffers_are_released_when_the_connection_goes_idle() {
        runtime().block_on(async {
            let (stream, client) = pair().await;
            let ctx = ConnContext::detached(crate::net::Peer::Unix, Default::default());
            // The scratch buffer is the worker's, allocated once: not this connection's.
            super::lines::with_scratch(|_| ());
            let (mut rd, mut wr) = client.into_split();
            // The client's reader and its buffer exist before the first count and live on
            // after the last, so only the server's allocations move the count.
            const TOTAL: usize = 8 << 20;
            let (got_tx, got_rx) = tokio::sync::oneshot::channel();
            let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0;
                while total < TOTAL {
                    // Slow at first: the server's writes back find the socket full.
                    if total < TOTAL / 2 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let n = rd.read(&mut buf).await.unwrap();
                    assert!(n > 0, "echo closed early");
                    total += n;
                }
                got_tx.send(total).unwrap();
                let _ = end_rx.await;
                drop(buf);
            });
            let chunk = vec![b'e'; 64 * 1024];
            let server = tokio::spawn(async move { super::serve(stream, &ctx).await });
            // Let the server task reach its first wait.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let before = heap::live();
            for _ in 0..TOTAL / chunk.len() {
                wr.write_all(&chunk).await.unwrap();
            }
            assert_eq!(got_rx.await.unwrap(), TOTAL);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let after = heap::live();
            assert!(
                after - before <= 256,
                "an idle echo connection kept {} bytes of heap",
                after - before
            );
            drop(wr);
            server.await.unwrap().unwrap();
            end_tx.send(()).unwrap();
            reader.await.unwrap();
        });
    }
}
