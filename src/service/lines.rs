//! Lines for the line services (`chat`, `quote`): LF or CRLF, any bytes, a length cap.
//!
//! Why not tokio-util's `LinesCodec`: it refuses lines that are not UTF-8 (chat must show
//! them with replacement characters instead), and after a too-long line `FramedRead` yields
//! the error and then `None` once (tokio-util's `codec/framed_impl.rs`), so the usual
//! `while let Some(line) = lines.next().await` loop ends on the first oversize line. Here a too-long line is an ordinary
//! item, [`Line::TooLong`], so the reader never leaves its loop, and the rest of that line is
//! discarded up to its newline without ever being buffered: memory stays bounded by the cap.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// One item from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line, without its LF or CRLF.
    Text(Bytes),
    /// A line longer than the cap, already discarded (reported once, at its end).
    TooLong,
    /// The client asked `IAC DO TIMING-MARK` (a telnet user pressed Ctrl-C): answer
    /// [`TIMING_MARK_REPLY`], or the client discards everything it is sent until it gets it.
    /// Only from a reader made with [`LineReader::telnet`].
    TimingMark,
}

/// The answer to `IAC DO TIMING-MARK` (RFC 860): `IAC WILL TIMING-MARK`.
pub const TIMING_MARK_REPLY: &[u8] = &[IAC, WILL, TM];

const IAC: u8 = 0xff;
const WILL: u8 = 0xfb;
const DO: u8 = 0xfd;
const TM: u8 = 0x06;

/// The telnet commands a client sends in the middle of a line (RFC 854): `IAC` and one byte
/// (NOP, DM, BRK, IP, AO, AYT, EC, EL, GA), which are dropped, and `IAC DO TIMING-MARK`, which
/// telnet sends after IP when its user presses Ctrl-C and which must be answered. Any other
/// byte, 0xFF included, passes through as data: nc users' bytes are theirs, and invalid UTF-8
/// is the service's business (chat shows it as U+FFFD).
#[derive(Debug, Default)]
struct TelnetFilter {
    /// Bytes of a command begun at the end of the last read: none, `IAC`, or `IAC DO`.
    held: Vec<u8>,
    /// Timing marks asked for and not yet reported.
    marks: usize,
}

impl TelnetFilter {
    /// Filters `data` (just read) into `out`.
    fn filter(&mut self, data: &[u8], out: &mut BytesMut) {
        for &b in data {
            match (self.held.as_slice(), b) {
                ([], IAC) | ([IAC], DO) => self.held.push(b),
                ([], _) => out.extend_from_slice(&[b]),
                ([IAC], 0xf1..=0xf9) => self.held.clear(),
                ([IAC, DO], TM) => {
                    self.held.clear();
                    self.marks += 1;
                }
                _ => {
                    // Not a command we know: what was held is data, and `b` starts afresh.
                    out.extend_from_slice(&self.held);
                    self.held.clear();
                    if b == IAC {
                        self.held.push(b);
                    } else {
                        out.extend_from_slice(&[b]);
                    }
                }
            }
        }
    }
}

/// The decoder. `decode_eof` also returns a last line that has no newline, which is what `nc`
/// sends when its input ends without one.
#[derive(Debug)]
pub struct LineCodec {
    max: usize,
    /// Inside a too-long line: drop bytes up to the next LF.
    discarding: bool,
    /// How far the buffer was already searched for an LF.
    scanned: usize,
}

impl LineCodec {
    /// Lines of at most `max` bytes (not counting the terminator).
    pub fn new(max: usize) -> LineCodec {
        LineCodec {
            max,
            discarding: false,
            scanned: 0,
        }
    }
}

fn strip_cr(mut line: BytesMut) -> BytesMut {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

impl Decoder for LineCodec {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, Self::Error> {
        match buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                self.scanned = 0;
                if self.discarding {
                    buf.advance(end + 1);
                    self.discarding = false;
                    return Ok(Some(Line::TooLong));
                }
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                let line = strip_cr(line);
                if line.len() > self.max {
                    return Ok(Some(Line::TooLong));
                }
                Ok(Some(Line::Text(line.freeze())))
            }
            None => {
                // `max + 1`: the line may still end in a CR that is not part of it.
                if self.discarding || buf.len() > self.max + 1 {
                    self.discarding = true;
                    buf.clear();
                    self.scanned = 0;
                } else {
                    self.scanned = buf.len();
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, Self::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        self.scanned = 0;
        if self.discarding {
            self.discarding = false;
            return Ok(Some(Line::TooLong));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let line = strip_cr(buf.split());
        if line.len() > self.max {
            return Ok(Some(Line::TooLong));
        }
        Ok(Some(Line::Text(line.freeze())))
    }
}

/// Reads [`Line`]s from a byte stream, with the buffer bounded by the cap.
pub struct LineReader<R> {
    io: R,
    codec: LineCodec,
    buf: BytesMut,
    eof: bool,
    /// For services meant for telnet users (chat): see [`TelnetFilter`].
    telnet: Option<TelnetFilter>,
}

impl<R: tokio::io::AsyncRead + Unpin> LineReader<R> {
    /// Lines of at most `max` bytes from `io`.
    pub fn new(io: R, max: usize) -> LineReader<R> {
        LineReader {
            io,
            codec: LineCodec::new(max),
            buf: BytesMut::new(),
            eof: false,
            telnet: None,
        }
    }

    /// As [`LineReader::new`], and the telnet commands a client sends mid-line are taken out
    /// of the stream ([`Line::TimingMark`] reports the one that needs an answer).
    pub fn telnet(io: R, max: usize) -> LineReader<R> {
        LineReader {
            telnet: Some(TelnetFilter::default()),
            ..LineReader::new(io, max)
        }
    }

    /// The next line; `None` at the end of the stream (after the unterminated last line, if
    /// any). Cancel-safe: bytes read are kept in the buffer.
    ///
    /// # Errors
    /// What the stream returns.
    pub async fn next(&mut self) -> std::io::Result<Option<Line>> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(t) = &mut self.telnet
                && t.marks > 0
            {
                t.marks -= 1;
                return Ok(Some(Line::TimingMark));
            }
            if self.eof {
                return self.codec.decode_eof(&mut self.buf);
            }
            if let Some(line) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(line));
            }
            self.buf.reserve(4096);
            let start = self.buf.len();
            if self.io.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
                if let Some(t) = &mut self.telnet {
                    // A command cut off by the end of the stream was data after all.
                    self.buf.extend_from_slice(&t.held);
                    t.held.clear();
                }
            } else if let Some(t) = &mut self.telnet
                && (!t.held.is_empty() || self.buf[start..].contains(&IAC))
            {
                let read = self.buf.split_off(start);
                t.filter(&read, &mut self.buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(max: usize, chunks: &[&[u8]]) -> Vec<Line> {
        let mut c = LineCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(l) = c.decode(&mut buf).unwrap() {
                out.push(l);
            }
        }
        while let Some(l) = c.decode_eof(&mut buf).unwrap() {
            out.push(l);
        }
        out
    }

    fn text(s: &[u8]) -> Line {
        Line::Text(Bytes::copy_from_slice(s))
    }

    #[test]
    fn lf_crlf_and_an_unterminated_last_line() {
        assert_eq!(
            all(10, &[b"a\nb\r\n", b"\r\nc"]),
            vec![text(b"a"), text(b"b"), text(b""), text(b"c")]
        );
        assert_eq!(all(10, &[b"x\r"]), vec![text(b"x")]);
        assert_eq!(all(10, &[b""]), vec![]);
    }

    #[test]
    fn split_anywhere_gives_the_same_lines() {
        let data = b"hello\r\nworld\n\xff\xfe bytes\nlast";
        let whole = all(64, &[data]);
        for cut in 0..data.len() {
            assert_eq!(
                all(64, &[&data[..cut], &data[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
    }

    /// What a telnet reader makes of `chunks`, read one after another.
    fn telnet(chunks: &[&[u8]]) -> Vec<Line> {
        let (mut client, server) = tokio::io::duplex(64);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        rt.block_on(async move {
            use tokio::io::AsyncWriteExt;
            let mut reader = LineReader::telnet(server, 64);
            let writer = tokio::spawn(async move {
                for c in chunks {
                    client.write_all(&c).await.unwrap();
                    // One read per chunk, so commands are cut where the test cuts them.
                    tokio::task::yield_now().await;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            });
            let mut out = Vec::new();
            while let Some(l) = reader.next().await.unwrap() {
                out.push(l);
            }
            writer.await.unwrap();
            out
        })
    }

    #[test]
    fn telnet_ctrl_c_is_taken_out_of_the_line_and_its_timing_mark_reported() {
        // What netkit telnet sends when its user presses Ctrl-C, then types on.
        assert_eq!(
            telnet(&[b"\xff\xf4\xff\xfd\x06", b"still here\r\n"]),
            vec![Line::TimingMark, text(b"still here")]
        );
        // Cut inside the command.
        assert_eq!(
            telnet(&[b"a\xff", b"\xfd", b"\x06b\xff", b"\xf4c\n"]),
            vec![Line::TimingMark, text(b"abc")]
        );
    }

    #[test]
    fn telnet_leaves_every_other_byte_alone() {
        // DONT, a lone IAC, IAC IAC, DO of another option, and one cut off by the end.
        assert_eq!(
            telnet(&[
                b"bad \xff\xfe ok\n",
                b"\xff\xffx\xff",
                b"\xfd\x01\n\xff\xfd"
            ]),
            vec![
                text(b"bad \xff\xfe ok"),
                text(b"\xff\xffx\xff\xfd\x01"),
                text(b"\xff\xfd")
            ]
        );
    }

    #[test]
    fn too_long_lines_are_reported_once_and_do_not_desync() {
        let long = vec![b'x'; 100];
        let mut input = long.clone();
        input.extend_from_slice(b"\nok\n");
        assert_eq!(all(10, &[&input]), vec![Line::TooLong, text(b"ok")]);
        // Arriving in small pieces, the buffer never holds more than the cap.
        let mut c = LineCodec::new(10);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in input.chunks(3) {
            buf.extend_from_slice(b);
            while let Some(l) = c.decode(&mut buf).unwrap() {
                out.push(l);
            }
            assert!(buf.len() <= 14, "buffer grew to {}", buf.len());
        }
        assert_eq!(out, vec![Line::TooLong, text(b"ok")]);
        // Exactly at the cap is fine, with LF or CRLF; one more byte is not.
        assert_eq!(
            all(3, &[b"abc\nabc\r\nabcd\n"]),
            vec![text(b"abc"), text(b"abc"), Line::TooLong]
        );
        // A too-long unterminated last line.
        assert_eq!(all(3, &[b"abcdefgh"]), vec![Line::TooLong]);
        assert_eq!(all(3, &[b"abcd"]), vec![Line::TooLong]);
    }
}
