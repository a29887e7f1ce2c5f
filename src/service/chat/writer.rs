//! A member's writer: sends what the room has for it ([`Room::gather`]), one batch per write,
//! and a final notice when the member is kicked. The only code that writes to a member's
//! socket.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, WriteHalf};

use super::room::{Closed, KickReason, Room, Seat};
use crate::net::Stream;

/// How long the final notice to a dropped member may take to write: it is sent only if its
/// socket has room ("if it can be written").
const NOTICE_TIMEOUT: Duration = Duration::from_millis(100);

/// What a writer that wakes takes for its batch; it grows from there up to
/// [`super::room::BATCH_BYTES`] when more is due.
const FIRST_BATCH: usize = 4096;

/// Sends the seat's member what is due for it ([`Room::gather`]), one batch per write, until it is
/// closed and everything due is sent (then the socket's write side is shut) or it is kicked (a
/// final notice, if the socket takes it).
pub(super) async fn write_loop(mut wr: WriteHalf<Stream>, seat: &Seat) {
    let room: &Room = seat.room();
    let id = seat.id();
    let kick = &seat.kick;
    let ready = &seat.ready;
    // Given back whenever the member is up to date (below), so a member waiting for the room
    // costs no buffer (issue 13); taken again at [`FIRST_BATCH`] when it wakes, one allocation
    // rather than a doubling per line gathered. Under load the writer rarely finds nothing
    // due, and an allocation is cheap beside the write it goes with.
    let mut buf = BytesMut::new();
    // Whether the last byte written ended a line: the final notice must start on its own.
    let mut at_line_start = true;
    loop {
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve(FIRST_BATCH);
        }
        let Some(closed) = room.gather(id, &mut buf) else {
            return;
        };
        if buf.is_empty() {
            match closed {
                Closed::No => {}
                Closed::Leaving => {
                    let _ = wr.shutdown().await;
                    return;
                }
                // The next worker writes to the socket from here on.
                Closed::HandedOff => return,
            }
            if buf.capacity() > 0 {
                buf = BytesMut::new();
            }
            tokio::select! {
                biased;
                () = kick.token.cancelled() => break,
                () = ready.notified() => continue,
            }
        }
        let written = tokio::select! {
            biased;
            () = kick.token.cancelled() => {
                // The batch may have gone out in part: assume it did not end a line.
                at_line_start = false;
                break;
            }
            r = wr.write_all(&buf) => r,
        };
        if written.is_err() {
            return;
        }
        at_line_start = buf.ends_with(b"\n");
    }
    let notice: &[u8] = match kick.reason() {
        Some(KickReason::Lost) => {
            b"* your name was taken while the server recovered; please reconnect\r\n"
        }
        _ => b"* you are not reading fast enough: disconnected\r\n",
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
