//! Lines for the line services (`chat`, `quote`): LF or CRLF, any bytes, a length cap.
//!
//! Why not tokio-util's `LinesCodec`: it refuses lines that are not UTF-8 (chat must show
//! them with replacement characters instead), and after a too-long line `FramedRead` yields
//! the error and then `None` once (tokio-util's `codec/framed_impl.rs`), so the usual
//! `while let Some(line) = lines.next().await` loop ends on the first oversize line. Here a
//! too-long line is an ordinary item, [`Line::TooLong`], so the reader never leaves its loop,
//! and the rest of that line is discarded up to its newline without ever being buffered:
//! memory stays bounded by the cap, and a reader waiting for its client holds no buffer at all
//! ([`LineReader::next`]).
//!
//! # Telnet
//!
//! [`LineReader::telnet`] takes telnet commands out of a line service's input (RFC 854, 855),
//! for services meant for telnet users (chat) that nc users share.
//!
//! **Which connections speak telnet.** A client that negotiates options (PuTTY, telnet
//! clients on port 23) opens the connection with `IAC WILL/WONT/DO/DONT option` or
//! `IAC SB`. Such a connection is a telnet connection for good: the whole command grammar is
//! taken out of the stream — two-byte commands (`IAC NOP`, `IAC IP`, `IAC AYT`…) are dropped,
//! `IAC IAC` is one 0xFF data byte, subnegotiations (`IAC SB … IAC SE`, of any length) are
//! skipped without being buffered, and options are answered as a line-mode server that does
//! none: `WILL x` gets `DONT x` and `DO x` gets `WONT x` ([`Line::Negotiation`]), except
//! `DO TIMING-MARK`, which gets `WILL TIMING-MARK` ([`Line::TimingMark`]). `WONT` and `DONT`
//! ask for what is already the case (every option is off) and get no answer (RFC 854: a
//! request to enter a mode already in is not acknowledged, which also rules out loops). An
//! `IAC` followed by a byte that is not a command (below 240) is no command RFC 854 defines:
//! both bytes are kept as data rather than guessed at.
//!
//! **Every other connection** (nc, or netkit telnet on a non-telnet port, which negotiates
//! nothing) is raw: its bytes are its user's, 0xFF included (text never contains 0xFF, as it
//! is not valid UTF-8, so the service shows it as U+FFFD). Only what telnet sends mid-line
//! without negotiating is taken out: `IAC` and one byte of NOP, DM, BRK, IP, AO, AYT, EC, EL
//! or GA, dropped, and `IAC DO TIMING-MARK`, which telnet sends after IP when its user presses
//! Ctrl-C and which is answered.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::Decoder;

/// One item from the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Line {
    /// A line, without its LF or CRLF.
    Text(Bytes),
    /// A line longer than the cap, already discarded (reported once, at its end).
    TooLong,
    /// The client asked `IAC DO TIMING-MARK` (a telnet user pressed Ctrl-C): answer
    /// [`TIMING_MARK_REPLY`], or the client discards everything it is sent until it gets it.
    /// Only from a reader made with [`LineReader::telnet`].
    TimingMark,
    /// Telnet option negotiation to send back to the client as it is, in order with what
    /// else it is sent (refusals of the options it offered or asked for). Only from a reader
    /// made with [`LineReader::telnet`], on a telnet connection (see the module header).
    Negotiation(Bytes),
}

/// The answer to `IAC DO TIMING-MARK` (RFC 860): `IAC WILL TIMING-MARK`.
pub const TIMING_MARK_REPLY: &[u8] = &[IAC, WILL, TM];

/// Interpret As Command (RFC 854): starts every telnet command.
const IAC: u8 = 0xff;
const DONT: u8 = 0xfe;
const DO: u8 = 0xfd;
const WONT: u8 = 0xfc;
const WILL: u8 = 0xfb;
/// Subnegotiation begins (RFC 855).
const SB: u8 = 0xfa;
/// Subnegotiation ends (RFC 855).
const SE: u8 = 0xf0;
/// TIMING-MARK (RFC 860).
const TM: u8 = 0x06;

/// Where the telnet parser is in the command grammar of RFC 854/855.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum State {
    /// Data bytes.
    #[default]
    Data,
    /// After an `IAC`.
    Iac,
    /// After `IAC WILL`, `WONT`, `DO` or `DONT`: the option byte comes next.
    Verb(u8),
    /// Inside `IAC SB … IAC SE`: skipped.
    Sub,
    /// After an `IAC` inside a subnegotiation.
    SubIac,
}

/// Whether a connection speaks telnet, decided by its first bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Mode {
    /// Nothing read yet, or only a first `IAC`.
    #[default]
    Undecided,
    /// It opened with negotiation: the whole grammar applies.
    Telnet,
    /// Anything else (nc, or a telnet client that does not negotiate): bytes are data.
    Raw,
}

/// Takes telnet commands out of a line service's input (RFC 854, 855), for services meant for
/// telnet users (chat) that nc users share.
///
/// **Which connections speak telnet.** A client that negotiates options (PuTTY, telnet
/// clients on port 23) opens the connection with `IAC WILL/WONT/DO/DONT option` or
/// `IAC SB`. Such a connection is a telnet connection for good: the whole command grammar is
/// taken out of the stream — two-byte commands (`IAC NOP`, `IAC IP`, `IAC AYT`…) are dropped,
/// `IAC IAC` is one 0xFF data byte, subnegotiations (`IAC SB … IAC SE`, of any length) are
/// skipped without being buffered, and options are answered as a line-mode server that does
/// none: `WILL x` gets `DONT x` and `DO x` gets `WONT x` ([`Line::Negotiation`]), except
/// `DO TIMING-MARK`, which gets `WILL TIMING-MARK` ([`Line::TimingMark`]). `WONT` and `DONT`
/// ask for what is already the case (every option is off) and get no answer (RFC 854: a
/// request to enter a mode already in is not acknowledged, which also rules out loops). An
/// `IAC` followed by a byte that is not a command (below 240) is no command RFC 854 defines:
/// both bytes are kept as data rather than guessed at.
///
/// **Every other connection** (nc, or netkit telnet on a non-telnet port, which negotiates
/// nothing) is raw: its bytes are its user's, 0xFF included (text never contains 0xFF, as it
/// is not valid UTF-8, so the service shows it as U+FFFD). Only what telnet sends mid-line
/// without negotiating is taken out: `IAC` and one byte of NOP, DM, BRK, IP, AO, AYT, EC, EL
/// or GA, dropped, and `IAC DO TIMING-MARK`, which telnet sends after IP when its user presses
/// Ctrl-C and which is answered.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Telnet {
    mode: Mode,
    state: State,
    /// Raw mode: bytes of a command begun at the end of the last read: none, `IAC`, or
    /// `IAC DO`.
    held: Vec<u8>,
    /// Answers and timing marks not yet reported, in order.
    answers: VecDeque<Line>,
}

impl Telnet {
    /// Between commands, with nothing held or to answer: only its mode is state.
    fn at_rest(&self) -> bool {
        self.state == State::Data && self.held.is_empty() && self.answers.is_empty()
    }

    /// Filters `data` (just read) into `out`.
    fn filter(&mut self, data: &[u8], out: &mut BytesMut) {
        if self.mode == Mode::Undecided {
            match (self.held.as_slice(), data) {
                (_, []) => return,
                ([], [IAC]) => {
                    // Decided by the next byte.
                    self.held.push(IAC);
                    return;
                }
                ([], [IAC, b, ..]) | ([IAC], [b, ..]) if matches!(*b, WILL..=DONT | SB) => {
                    self.mode = Mode::Telnet;
                    if !self.held.is_empty() {
                        self.held.clear();
                        self.state = State::Iac;
                    }
                }
                _ => self.mode = Mode::Raw,
            }
        }
        if self.mode == Mode::Raw {
            return self.filter_raw(data, out);
        }
        for &b in data {
            self.state = match (self.state, b) {
                (State::Data, IAC) => State::Iac,
                (State::Data, _) => {
                    out.extend_from_slice(&[b]);
                    State::Data
                }
                (State::Iac, IAC) => {
                    out.extend_from_slice(&[IAC]);
                    State::Data
                }
                (State::Iac, WILL..=DONT) => State::Verb(b),
                (State::Iac, SB) => State::Sub,
                // SE outside a subnegotiation, NOP, DM, BRK, IP, AO, AYT, EC, EL, GA.
                (State::Iac, SE..=0xf9) => State::Data,
                (State::Iac, _) => {
                    out.extend_from_slice(&[IAC, b]);
                    State::Data
                }
                (State::Verb(verb), option) => {
                    self.answer(verb, option);
                    State::Data
                }
                (State::Sub, IAC) => State::SubIac,
                (State::Sub, _) => State::Sub,
                (State::SubIac, SE) => State::Data,
                // `IAC IAC` is a 0xFF of the subnegotiation's data; anything else is not
                // allowed there and is skipped with it.
                (State::SubIac, _) => State::Sub,
            };
        }
    }

    /// Answers `IAC verb option` as a server that does no option but TIMING-MARK.
    fn answer(&mut self, verb: u8, option: u8) {
        let refusal = match (verb, option) {
            (DO, TM) => return self.answers.push_back(Line::TimingMark),
            (DO, _) => WONT,
            (WILL, _) => DONT,
            _ => return, // WONT, DONT: already so.
        };
        // Consecutive refusals (PuTTY offers and asks for several options at once) go out
        // together.
        if let Some(Line::Negotiation(last)) = self.answers.back_mut() {
            let mut more = BytesMut::from(&last[..]);
            more.extend_from_slice(&[IAC, refusal, option]);
            *last = more.freeze();
        } else {
            self.answers
                .push_back(Line::Negotiation(Bytes::copy_from_slice(&[
                    IAC, refusal, option,
                ])));
        }
    }

    /// The raw-mode filter (see [`Telnet`]).
    fn filter_raw(&mut self, data: &[u8], out: &mut BytesMut) {
        for &b in data {
            match (self.held.as_slice(), b) {
                ([], IAC) | ([IAC], DO) => self.held.push(b),
                ([], _) => out.extend_from_slice(&[b]),
                ([IAC], 0xf1..=0xf9) => self.held.clear(),
                ([IAC, DO], TM) => {
                    self.held.clear();
                    self.answers.push_back(Line::TimingMark);
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

    /// The stream ended: a raw command cut off there was data after all (a telnet
    /// connection's is dropped, as the command it began).
    fn end(&mut self, out: &mut BytesMut) {
        if self.mode != Mode::Telnet {
            out.extend_from_slice(&self.held);
        }
        self.held.clear();
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
        match memchr::memchr(b'\n', &buf[self.scanned..]) {
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

/// What a [`LineReader`] holds that its stream no longer does: the bytes read and not yet
/// taken as lines, and the parser's place. A connection handed to another worker carries it,
/// so the other worker reads on where this one stopped ([`LineReader::resume`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReaderState {
    /// Read from the stream (after telnet filtering), not yet a line.
    buf: Bytes,
    /// Inside a too-long line.
    discarding: bool,
    /// The telnet parser, for a reader made with [`LineReader::telnet`].
    telnet: Option<Telnet>,
}

/// A [`ReaderState`] at rest ([`LineReader::at_rest`]) in one byte: its telnet mode, all such a
/// reader holds. For a connection that waits long with its reader at rest (a parked chat
/// member, issue 13), where a whole [`ReaderState`] is 104 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestState(Option<Mode>);

impl From<RestState> for ReaderState {
    fn from(r: RestState) -> ReaderState {
        ReaderState {
            buf: Bytes::new(),
            discarding: false,
            telnet: r.0.map(|mode| Telnet {
                mode,
                ..Telnet::default()
            }),
        }
    }
}

/// Reads [`Line`]s from a byte stream, with the buffer bounded by the cap.
pub struct LineReader<R> {
    io: R,
    codec: LineCodec,
    buf: BytesMut,
    eof: bool,
    /// For services meant for telnet users (chat): see [`Telnet`].
    telnet: Option<Telnet>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
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

    /// As [`LineReader::new`], and telnet commands are taken out of the stream, as the module
    /// header describes; [`Line::TimingMark`] and [`Line::Negotiation`] report what needs an answer.
    pub fn telnet(io: R, max: usize) -> LineReader<R> {
        LineReader {
            telnet: Some(Telnet::default()),
            ..LineReader::new(io, max)
        }
    }

    /// A reader of `io` that carries on from `state`, which another reader of the same
    /// connection left ([`LineReader::state`]), with the cap `max`.
    pub fn resume(io: R, max: usize, state: ReaderState) -> LineReader<R> {
        let mut codec = LineCodec::new(max);
        codec.discarding = state.discarding;
        LineReader {
            io,
            codec,
            buf: BytesMut::from(&state.buf[..]),
            eof: false,
            telnet: state.telnet,
        }
    }

    /// What this reader holds beyond its stream (see [`ReaderState`]); call it between
    /// lines, when [`LineReader::next`] is not running.
    pub fn state(&self) -> ReaderState {
        ReaderState {
            buf: Bytes::copy_from_slice(&self.buf),
            discarding: self.codec.discarding,
            telnet: self.telnet.clone(),
        }
    }

    /// Whether this reader holds nothing its stream does not: no partial line, not inside a
    /// too-long one, not at the end, and no telnet parser (whose place a new reader would
    /// lose). A reader in this state may be dropped ([`LineReader::into_inner`]) and a new one
    /// made on the same stream later without losing a byte: how a quote connection parks
    /// ([`super::park`]).
    pub fn between_lines(&self) -> bool {
        self.buf.is_empty() && !self.codec.discarding && !self.eof && self.telnet.is_none()
    }

    /// Whether this reader holds nothing but its telnet parser's mode (raw, telnet or not yet
    /// known): no partial line, not inside a too-long one, not at the end, no telnet command
    /// half read and no answer pending. A reader in this state may be dropped and made again
    /// with [`LineReader::resume`] from its [`LineReader::state`] (which then allocates
    /// nothing) without losing a byte: how a chat member parks ([`super::park`]).
    pub fn at_rest(&self) -> bool {
        self.buf.is_empty()
            && !self.codec.discarding
            && !self.eof
            && self.telnet.as_ref().is_none_or(Telnet::at_rest)
    }

    /// What this reader holds, in one byte, when it is [at rest](LineReader::at_rest); `None`
    /// otherwise. [`LineReader::resume`] carries on from it as from [`LineReader::state`].
    pub fn rest_state(&self) -> Option<RestState> {
        self.at_rest()
            .then(|| RestState(self.telnet.as_ref().map(|t| t.mode)))
    }

    /// The stream, without what this reader holds (see [`LineReader::between_lines`]).
    pub fn into_inner(self) -> R {
        self.io
    }

    /// The next line; `None` at the end of the stream (after the unterminated last line, if
    /// any). Cancel-safe: bytes read are kept in the buffer.
    ///
    /// While it waits for the client, the reader holds no buffer, only what a partial line
    /// needs (nothing, most of the time): a read goes into this thread's scratch buffer
    /// ([`SCRATCH_BYTES`]) and what it brought is copied out at once (issue 13: an idle chat
    /// member, or quote client, costs no read buffer).
    ///
    /// # Errors
    /// What the stream returns.
    pub async fn next(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            if let Some(answer) = self.telnet.as_mut().and_then(|t| t.answers.pop_front()) {
                return Ok(Some(answer));
            }
            if self.eof {
                return self.codec.decode_eof(&mut self.buf);
            }
            if let Some(line) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(line));
            }
            if self.buf.is_empty() && self.buf.capacity() > 0 {
                // Lines already returned may share this allocation: let them own it alone.
                self.buf = BytesMut::new();
            }
            if self.read().await? == 0 {
                self.eof = true;
                if let Some(t) = &mut self.telnet {
                    t.end(&mut self.buf);
                }
            }
        }
    }

    /// Waits for the stream to be readable, reads into the scratch buffer and appends what
    /// came (through the telnet filter, if any) to `buf`. Returns how many bytes were read.
    async fn read(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            with_scratch(|scratch| {
                let mut read = ReadBuf::new(scratch);
                std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
                let data = read.filled();
                match &mut self.telnet {
                    Some(t)
                        if t.state != State::Data
                            || !t.held.is_empty()
                            || t.mode == Mode::Undecided
                            || data.contains(&IAC) =>
                    {
                        t.filter(data, &mut self.buf)
                    }
                    _ => self.buf.extend_from_slice(data),
                }
                Poll::Ready(Ok(data.len()))
            })
        })
        .await
    }
}

/// The size of each thread's read buffer for the stream services (echo, quote, chat): one per
/// worker, shared by all its connections (each read is copied out, or written back, before the
/// next one starts).
pub const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// Runs `f` with this thread's scratch buffer ([`SCRATCH_BYTES`]), for a read that is dealt
/// with before `f` returns: the way a connection reads without holding a buffer of its own
/// while it waits (issue 13). Allocated on a thread's first use and kept for its life.
///
/// # Panics
/// If `f` itself calls `with_scratch` (the buffer is borrowed for the whole call).
pub fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH.with_borrow_mut(|scratch| f(scratch))
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

    /// Issue 13: a reader at rest keeps its telnet mode in one byte, and one resumed from it
    /// reads on as the first would have.
    #[test]
    fn a_reader_at_rest_fits_in_a_byte_and_resumes_in_its_mode() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            assert_eq!(std::mem::size_of::<RestState>(), 1);
            let (mut client, server) = tokio::io::duplex(64);
            let mut reader = LineReader::telnet(server, 64);
            // A telnet client: it negotiates first.
            client.write_all(b"\xff\xfd\x03hi\r\n").await.unwrap();
            assert!(matches!(
                reader.next().await.unwrap(),
                Some(Line::Negotiation(_))
            ));
            assert_eq!(reader.next().await.unwrap(), Some(text(b"hi")));
            let rest = reader.rest_state().expect("at rest between lines");
            let mut reader = LineReader::resume(reader.into_inner(), 64, rest.into());
            assert_eq!(reader.rest_state(), Some(rest));
            // Still in telnet mode: a command is taken out of the line.
            client.write_all(b"a\xff\xf4\xff\xfd\x06b\n").await.unwrap();
            assert_eq!(reader.next().await.unwrap(), Some(Line::TimingMark));
            assert_eq!(reader.next().await.unwrap(), Some(text(b"ab")));
            // Half a line read: not at rest.
            client.write_all(b"half").await.unwrap();
            let (mut client2, server2) = tokio::io::duplex(64);
            client2.write_all(b"x").await.unwrap();
            let mut partial = LineReader::new(server2, 64);
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(20), partial.next()).await;
            assert_eq!(partial.rest_state(), None);
        });
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

    fn negotiation(bytes: &[u8]) -> Line {
        Line::Negotiation(Bytes::copy_from_slice(bytes))
    }

    /// What PuTTY sends first on a telnet connection: WILL NAWS, WILL TSPEED, WILL TTYPE,
    /// WILL NEW-ENVIRON, DO ECHO, WILL SGA, DO SGA.
    const PUTTY_OPENING: &[u8] =
        b"\xff\xfb\x1f\xff\xfb\x20\xff\xfb\x18\xff\xfb\x27\xff\xfd\x01\xff\xfb\x03\xff\xfd\x03";

    #[test]
    fn a_client_opening_with_negotiation_is_refused_every_option_and_its_lines_are_kept() {
        let mut first = PUTTY_OPENING.to_vec();
        first.extend_from_slice(b"alice\r\n");
        assert_eq!(
            telnet(&[&first]),
            vec![
                // DONT NAWS, DONT TSPEED, DONT TTYPE, DONT NEW-ENVIRON, WONT ECHO, DONT SGA,
                // WONT SGA: a line-mode server with no options.
                negotiation(
                    b"\xff\xfe\x1f\xff\xfe\x20\xff\xfe\x18\xff\xfe\x27\xff\xfc\x01\xff\xfe\x03\xff\xfc\x03"
                ),
                text(b"alice"),
            ]
        );
        // Cut anywhere, the same.
        for cut in 1..first.len() {
            let got = telnet(&[&first[..cut], &first[cut..]]);
            let answers: Vec<u8> = got
                .iter()
                .filter_map(|l| match l {
                    Line::Negotiation(b) => Some(b.to_vec()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(answers.len(), 21, "cut at {cut}: {got:?}");
            assert_eq!(got.last(), Some(&text(b"alice")), "cut at {cut}");
        }
    }

    #[test]
    fn on_a_telnet_connection_the_whole_command_grammar_is_taken_out() {
        assert_eq!(
            telnet(&[
                // Opens with WONT ECHO (no answer), then: a subnegotiation with an escaped
                // 0xFF inside, IAC IAC as a data byte, NOP and AYT, WONT/DONT (no answer),
                // DO TIMING-MARK (answered as before), and an IAC before a non-command byte
                // (kept as data).
                b"\xff\xfc\x01a\xff\xfa\x18\x00x\xff\xffy\xff\xf0b",
                b"\xff\xffc\xff\xf1\xff\xf6d\xff\xfc\x05\xff\xfe\x05",
                b"\xff\xfd\x06e\xff",
                b"\x41\r\n",
            ]),
            vec![Line::TimingMark, text(b"ab\xffcde\xffA")]
        );
        // A command cut off by the end of a telnet stream is dropped with it.
        assert_eq!(
            telnet(&[b"\xff\xfd\x01x\n", b"y\xff"]),
            vec![negotiation(b"\xff\xfc\x01"), text(b"x"), text(b"y")]
        );
    }

    #[test]
    fn nc_bytes_stay_data_even_when_they_look_like_commands() {
        // A connection that opened with text is raw for good: IAC DONT and IAC IAC are bytes.
        assert_eq!(
            telnet(&[b"hi\n", b"\xff\xfe\n\xff\xff\xfb\x01\n"]),
            vec![text(b"hi"), text(b"\xff\xfe"), text(b"\xff\xff\xfb\x01")]
        );
        // So is one opening with a command that is no negotiation (telnet's Ctrl-C).
        assert_eq!(
            telnet(&[b"\xff\xf4\xff\xfd\x06", b"\xff\xfb\x01\n"]),
            vec![Line::TimingMark, text(b"\xff\xfb\x01")]
        );
        // And one opening with a lone 0xFF then data.
        assert_eq!(telnet(&[b"\xff", b"a\n"]), vec![text(b"\xffa")]);
    }

    /// Issue 13: a reader waiting for its client's next bytes holds no buffer, only what a
    /// partial line needs.
    #[test]
    fn a_waiting_reader_holds_no_buffer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::AsyncWriteExt;
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let mut reader = LineReader::telnet(server, 64 * 1024);
            let wait = std::time::Duration::from_millis(20);
            client.write_all(&[b'x'; 20_000]).await.unwrap();
            client.write_all(b"\nsecond\n").await.unwrap();
            assert_eq!(reader.next().await.unwrap(), Some(text(&[b'x'; 20_000])));
            assert_eq!(reader.next().await.unwrap(), Some(text(b"second")));
            assert!(tokio::time::timeout(wait, reader.next()).await.is_err());
            assert_eq!(reader.buf.capacity(), 0, "an idle reader keeps a buffer");
            // A partial line is kept, and only that.
            client.write_all(b"par").await.unwrap();
            assert!(tokio::time::timeout(wait, reader.next()).await.is_err());
            assert_eq!(&reader.buf[..], b"par");
            assert!(reader.buf.capacity() < 64, "{}", reader.buf.capacity());
            client.write_all(b"tial\n").await.unwrap();
            assert_eq!(reader.next().await.unwrap(), Some(text(b"partial")));
        });
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

/// Test support for issue 13's "count allocations": the heap bytes the current thread holds,
/// counted by a global allocator around the system's (for the whole unit-test binary). A
/// connection served on a current-thread runtime allocates on the test's own thread, so
/// other tests running in parallel do not disturb the count.
#[cfg(test)]
pub(crate) mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        /// Allocated minus freed on this thread, in bytes. Const-initialised and without a
        /// destructor, so the allocator may touch it at any time.
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    fn add(bytes: isize) {
        let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
    }

    /// The system allocator, counting.
    struct Counting;

    // SAFETY: every call is passed to `System` as it came; the counter only adds.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(ptr, layout) };
            add(-(layout.size() as isize));
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(new_size as isize - layout.size() as isize);
            }
            p
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Heap bytes allocated and not yet freed by this thread since it started.
    pub(crate) fn live() -> isize {
        LIVE.with(Cell::get)
    }
}
