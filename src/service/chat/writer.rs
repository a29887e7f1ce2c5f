//! A member's writer: sends what the room has for it ([`Room::gather`]), one batch per write,
//! and a final notice when the member is kicked. The only code that writes to a member's
//! socket.
//!
//! It waits without a waiter of its own: while nothing is due, the room keeps the task's waker
//! and wakes it (a line, a reply, a kick, the end); while a write waits for the socket, tokio's
//! registration of the socket keeps it, and the room too, for a kick. So an idle member's
//! writer holds its socket half, an empty buffer and a few words (issue 13), not a `Notify`
//! and a cancellation token with their waiters.
//!
//! A batch is gathered into the worker's one batch buffer ([`BATCH`]) and written at once;
//! only what the socket does not take (a slow reader's) is copied into a buffer of the
//! writer's own, until it is written. So a writer that wakes allocates nothing, and a burst
//! that wakes thousands of members does not leave thousands of batch buffers' worth of freed
//! heap behind in the worker (issue 13).

use std::cell::RefCell;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};

use super::room::{BATCH_BYTES, Closed, Due, KickReason, Room, Seat};
use crate::net::Stream;

thread_local! {
    /// The batch being written, shared by every writer of this thread (a worker has one): it
    /// is filled from the room and written in the same poll, so no two writers use it at once.
    static BATCH: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(2 * BATCH_BYTES));
}

/// How long the final notice to a dropped member may take to write: it is sent only if its
/// socket has room ("if it can be written").
const NOTICE_TIMEOUT: Duration = Duration::from_millis(100);

/// How a writer's loop ended.
enum End {
    /// Everything due is sent and the member left: shut the socket's write side.
    Leaving,
    /// Stop, leaving the socket as it is: handed to another worker, out of the room, or the
    /// socket failed.
    Stop,
    /// Dropped by the room: a final notice, if the socket takes it.
    Kicked(KickReason),
}

/// Sends the seat's member what is due for it ([`Room::gather`]), one batch per write, until it is
/// closed and everything due is sent (then the socket's write side is shut) or it is kicked (a
/// final notice, if the socket takes it).
pub(super) async fn write_loop(wr: &mut WriteHalf<Stream>, seat: &Seat) {
    let room: &Room = seat.room();
    let id = seat.id();
    // What the socket did not take of the last batch; empty (no allocation) most of the time,
    // and always when the member is up to date (issue 13).
    let mut buf = BytesMut::new();
    // How much of `buf` is written.
    let mut sent = 0;
    // Whether the last byte written ended a line: the final notice must start on its own.
    let mut at_line_start = true;
    let end = std::future::poll_fn(|cx| {
        loop {
            if sent < buf.len() {
                // A member that stops reading is kicked while its write waits: the room wakes
                // this task for it.
                if let Some(reason) = room.kicked(id, cx.waker()) {
                    return Poll::Ready(End::Kicked(reason));
                }
                match Pin::new(&mut *wr).poll_write(cx, &buf[sent..]) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(n)) if n > 0 => {
                        sent += n;
                        at_line_start = buf[..sent].ends_with(b"\n");
                        continue;
                    }
                    Poll::Ready(_) => return Poll::Ready(End::Stop),
                }
            }
            if buf.capacity() > 0 {
                buf = BytesMut::new();
                room.set_unsent(id, false);
            }
            sent = 0;
            let due = BATCH.with_borrow_mut(|batch| {
                batch.clear();
                let due = room.gather(id, batch, cx.waker());
                if due != Due::Bytes {
                    return Some(due);
                }
                let n = match Pin::new(&mut *wr).poll_write(cx, batch) {
                    Poll::Pending => 0,
                    Poll::Ready(Ok(n)) if n > 0 => n,
                    Poll::Ready(_) => return None,
                };
                if n > 0 {
                    at_line_start = batch[..n].ends_with(b"\n");
                }
                if n < batch.len() {
                    // The socket is full: the rest waits in the writer's own buffer, and the
                    // socket's registration wakes the task when it has room. The member is not
                    // up to date until it is written (it must not park meanwhile).
                    buf = BytesMut::from(&batch[n..]);
                    room.set_unsent(id, true);
                }
                Some(Due::Bytes)
            });
            match due {
                Some(Due::Bytes) => {}
                None => return Poll::Ready(End::Stop),
                Some(Due::Nothing) => return Poll::Pending,
                Some(Due::Done(Closed::Leaving)) => return Poll::Ready(End::Leaving),
                // The next worker writes to the socket from here on.
                Some(Due::Done(Closed::HandedOff) | Due::Gone) => {
                    return Poll::Ready(End::Stop);
                }
                Some(Due::Kicked(reason)) => return Poll::Ready(End::Kicked(reason)),
            }
        }
    })
    .await;
    drop(buf);
    match end {
        End::Leaving => {
            let _ = wr.shutdown().await;
        }
        End::Stop => {}
        // Boxed: the timer and the writes live on the heap only for a kicked member, not in
        // every idle member's future.
        End::Kicked(reason) => Box::pin(last_notice(wr, reason, at_line_start)).await,
    }
}

/// Tells a kicked member why, if its socket takes it within [`NOTICE_TIMEOUT`], and shuts the
/// socket's write side.
async fn last_notice(wr: &mut WriteHalf<Stream>, reason: KickReason, at_line_start: bool) {
    let notice: &[u8] = match reason {
        KickReason::Lost => {
            b"* your name was taken while the server recovered; please reconnect\r\n"
        }
        KickReason::Overflow => b"* you are not reading fast enough: disconnected\r\n",
    };
    let _ = tokio::time::timeout(NOTICE_TIMEOUT, async {
        if !at_line_start {
            wr.write_all(b"\r\n").await?;
        }
        wr.write_all(notice).await?;
        wr.shutdown().await
    })
    .await;
}
