//! The hub's wire format: frames cut by tokio-util's `LengthDelimitedCodec` (a 4-byte length,
//! then the body), each body one message: a tag byte, then its fields. Integers are big-endian;
//! byte strings and text are a `u32` length and the bytes.
//!
//! Hand-written rather than serde + a binary format: eight small messages do not earn a
//! dependency, and a decoder that checks every length cannot panic on a malformed frame (it
//! returns [`ProtoError`], and the hub drops that connection only).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::LengthDelimitedCodec;

use super::MAX_FRAME;

/// The frame codec both ends use, with the shared size cap.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// A name held on the hub: while the holder's connection lives, nobody else gets `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// What is reserved (`chat:alice`, lowercased by the caller for case-insensitivity).
    pub key: String,
    /// Who holds it, unique within one worker (a chat member id).
    pub holder: u64,
    /// What `List` returns for this key (the name as the member typed it).
    pub value: Bytes,
    /// Published on `will.0` if the holder's worker vanishes without releasing (MQTT's "last
    /// will"): the chat's leave notice for members of a worker that crashed.
    pub will: Option<(String, Bytes)>,
}

/// Worker → hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Up {
    /// First frame on every connection: who we are and what we held before a reconnect.
    Hello {
        /// The worker's pid, for logs.
        worker: u32,
        /// Every reservation the worker's members hold, taken again after a hub restart.
        reservations: Vec<Reservation>,
        /// The last value (and its sequence number) the worker saw for each key, so a
        /// restarted hub takes back the newest one.
        values: Vec<(String, u64, Bytes)>,
    },
    /// Take `reservation.key` if free; answered by [`Down::Reserved`].
    Reserve {
        /// Matches the answer to the question.
        req: u64,
        /// The name.
        reservation: Reservation,
    },
    /// Give a name back (only if `holder` holds it).
    Release {
        /// The name.
        key: String,
        /// Who held it.
        holder: u64,
    },
    /// Deliver `payload` to every other worker subscribed to `topic`.
    Publish {
        /// The topic (`chat`).
        topic: String,
        /// Opaque to the hub.
        payload: Bytes,
    },
    /// The values of every reservation whose key starts with `prefix`; answered by
    /// [`Down::Listing`].
    List {
        /// Matches the answer to the question.
        req: u64,
        /// Key prefix (`chat:`).
        prefix: String,
    },
    /// Answered by [`Down::Synced`] once everything sent before it on this connection has
    /// been handled (publications fanned out to the other workers' queues).
    Sync {
        /// Matches the answer to the question.
        req: u64,
    },
    /// Set `key` to `value` and return the previous value, atomically; answered by
    /// [`Down::Swapped`].
    Swap {
        /// Matches the answer to the question.
        req: u64,
        /// The key (`quote`).
        key: String,
        /// The new value.
        value: Bytes,
    },
    /// Set `key` to `value` only if it has no value yet (a seed: the initial quote). Not
    /// answered: it is applied in order with this connection's other frames.
    SetIfAbsent {
        /// The key (`quote`).
        key: String,
        /// The value it gets if it has none.
        value: Bytes,
    },
}

/// Hub → worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// A message published by another worker.
    Deliver {
        /// Its topic.
        topic: String,
        /// As published.
        payload: Bytes,
    },
    /// The answer to [`Up::Reserve`].
    Reserved {
        /// The question's number.
        req: u64,
        /// Whether the name is now ours.
        ok: bool,
    },
    /// The answer to [`Up::List`].
    Listing {
        /// The question's number.
        req: u64,
        /// The values, in no particular order.
        values: Vec<Bytes>,
    },
    /// The answer to [`Up::Swap`].
    Swapped {
        /// The question's number.
        req: u64,
        /// The value before the swap (empty if there was none).
        old: Bytes,
    },
    /// The answer to [`Up::Sync`].
    Synced {
        /// The question's number.
        req: u64,
    },
    /// A key changed (sent to every worker, so each can restore it after a hub restart).
    Changed {
        /// The key.
        key: String,
        /// Increases with every change.
        seq: u64,
        /// The new value.
        value: Bytes,
    },
    /// A reservation the worker re-registered after a hub restart was already taken: its
    /// holder no longer owns the name.
    Lost {
        /// The name.
        key: String,
        /// Its former holder.
        holder: u64,
    },
}

/// A frame that does not decode: the connection that sent it is dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Shorter than its fields say.
    #[error("truncated bus frame")]
    Truncated,
    /// An unknown message tag.
    #[error("unknown bus message tag {0}")]
    Tag(u8),
    /// Text that is not UTF-8.
    #[error("bus frame text is not UTF-8")]
    Utf8,
    /// Bytes left over after the message.
    #[error("trailing bytes in bus frame")]
    Trailing,
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_reservation(out: &mut BytesMut, r: &Reservation) {
    put_bytes(out, r.key.as_bytes());
    out.put_u64(r.holder);
    put_bytes(out, &r.value);
    match &r.will {
        Some((topic, payload)) => {
            out.put_u8(1);
            put_bytes(out, topic.as_bytes());
            put_bytes(out, payload);
        }
        None => out.put_u8(0),
    }
}

/// Reads fields off a frame, checking every length first.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), ProtoError> {
        if self.0.remaining() < n {
            Err(ProtoError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn bytes(&mut self) -> Result<Bytes, ProtoError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn text(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| ProtoError::Utf8)
    }
    /// A count of items each at least `min` bytes long: checked against what is left, so a
    /// forged count cannot make us allocate more than the frame holds.
    fn count(&mut self, min: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        self.need(n.saturating_mul(min))?;
        Ok(n)
    }
    fn reservation(&mut self) -> Result<Reservation, ProtoError> {
        let key = self.text()?;
        let holder = self.u64()?;
        let value = self.bytes()?;
        let will = match self.u8()? {
            0 => None,
            _ => Some((self.text()?, self.bytes()?)),
        };
        Ok(Reservation {
            key,
            holder,
            value,
            will,
        })
    }
    fn end(self) -> Result<(), ProtoError> {
        if self.0.has_remaining() {
            Err(ProtoError::Trailing)
        } else {
            Ok(())
        }
    }
}

impl Up {
    /// The frame body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Up::Hello {
                worker,
                reservations,
                values,
            } => {
                out.put_u8(1);
                out.put_u32(*worker);
                out.put_u32(reservations.len() as u32);
                for r in reservations {
                    put_reservation(&mut out, r);
                }
                out.put_u32(values.len() as u32);
                for (k, seq, v) in values {
                    put_bytes(&mut out, k.as_bytes());
                    out.put_u64(*seq);
                    put_bytes(&mut out, v);
                }
            }
            Up::Reserve { req, reservation } => {
                out.put_u8(2);
                out.put_u64(*req);
                put_reservation(&mut out, reservation);
            }
            Up::Release { key, holder } => {
                out.put_u8(3);
                put_bytes(&mut out, key.as_bytes());
                out.put_u64(*holder);
            }
            Up::Publish { topic, payload } => {
                out.put_u8(4);
                put_bytes(&mut out, topic.as_bytes());
                put_bytes(&mut out, payload);
            }
            Up::List { req, prefix } => {
                out.put_u8(5);
                out.put_u64(*req);
                put_bytes(&mut out, prefix.as_bytes());
            }
            Up::Sync { req } => {
                out.put_u8(7);
                out.put_u64(*req);
            }
            Up::Swap { req, key, value } => {
                out.put_u8(6);
                out.put_u64(*req);
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, value);
            }
            Up::SetIfAbsent { key, value } => {
                out.put_u8(8);
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, value);
            }
        }
        out.freeze()
    }

    /// Parses a frame body.
    ///
    /// # Errors
    /// [`ProtoError`] for anything malformed; never panics.
    pub fn decode(frame: Bytes) -> Result<Up, ProtoError> {
        let mut r = Reader(frame);
        let msg = match r.u8()? {
            1 => {
                let worker = r.u32()?;
                let n = r.count(17)?;
                let mut reservations = Vec::with_capacity(n);
                for _ in 0..n {
                    reservations.push(r.reservation()?);
                }
                let n = r.count(16)?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    values.push((r.text()?, r.u64()?, r.bytes()?));
                }
                Up::Hello {
                    worker,
                    reservations,
                    values,
                }
            }
            2 => Up::Reserve {
                req: r.u64()?,
                reservation: r.reservation()?,
            },
            3 => Up::Release {
                key: r.text()?,
                holder: r.u64()?,
            },
            4 => Up::Publish {
                topic: r.text()?,
                payload: r.bytes()?,
            },
            5 => Up::List {
                req: r.u64()?,
                prefix: r.text()?,
            },
            6 => Up::Swap {
                req: r.u64()?,
                key: r.text()?,
                value: r.bytes()?,
            },
            7 => Up::Sync { req: r.u64()? },
            8 => Up::SetIfAbsent {
                key: r.text()?,
                value: r.bytes()?,
            },
            t => return Err(ProtoError::Tag(t)),
        };
        r.end()?;
        Ok(msg)
    }
}

impl Down {
    /// The frame body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Down::Deliver { topic, payload } => {
                out.put_u8(1);
                put_bytes(&mut out, topic.as_bytes());
                put_bytes(&mut out, payload);
            }
            Down::Reserved { req, ok } => {
                out.put_u8(2);
                out.put_u64(*req);
                out.put_u8(u8::from(*ok));
            }
            Down::Listing { req, values } => {
                out.put_u8(3);
                out.put_u64(*req);
                out.put_u32(values.len() as u32);
                for v in values {
                    put_bytes(&mut out, v);
                }
            }
            Down::Swapped { req, old } => {
                out.put_u8(4);
                out.put_u64(*req);
                put_bytes(&mut out, old);
            }
            Down::Changed { key, seq, value } => {
                out.put_u8(5);
                put_bytes(&mut out, key.as_bytes());
                out.put_u64(*seq);
                put_bytes(&mut out, value);
            }
            Down::Synced { req } => {
                out.put_u8(7);
                out.put_u64(*req);
            }
            Down::Lost { key, holder } => {
                out.put_u8(6);
                put_bytes(&mut out, key.as_bytes());
                out.put_u64(*holder);
            }
        }
        out.freeze()
    }

    /// Parses a frame body.
    ///
    /// # Errors
    /// [`ProtoError`] for anything malformed; never panics.
    pub fn decode(frame: Bytes) -> Result<Down, ProtoError> {
        let mut r = Reader(frame);
        let msg = match r.u8()? {
            1 => Down::Deliver {
                topic: r.text()?,
                payload: r.bytes()?,
            },
            2 => Down::Reserved {
                req: r.u64()?,
                ok: r.u8()? != 0,
            },
            3 => {
                let req = r.u64()?;
                let n = r.count(4)?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    values.push(r.bytes()?);
                }
                Down::Listing { req, values }
            }
            4 => Down::Swapped {
                req: r.u64()?,
                old: r.bytes()?,
            },
            5 => Down::Changed {
                key: r.text()?,
                seq: r.u64()?,
                value: r.bytes()?,
            },
            6 => Down::Lost {
                key: r.text()?,
                holder: r.u64()?,
            },
            7 => Down::Synced { req: r.u64()? },
            t => return Err(ProtoError::Tag(t)),
        };
        r.end()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reservation() -> Reservation {
        Reservation {
            key: "chat:bob".into(),
            holder: 7,
            value: Bytes::from_static(b"Bob"),
            will: Some(("chat".into(), Bytes::from_static(b"* Bob left\r\n"))),
        }
    }

    #[test]
    fn every_message_round_trips() {
        let ups = [
            Up::Hello {
                worker: 42,
                reservations: vec![
                    reservation(),
                    Reservation {
                        will: None,
                        ..reservation()
                    },
                ],
                values: vec![("quote".into(), 3, Bytes::from_static(b"q"))],
            },
            Up::Reserve {
                req: 1,
                reservation: reservation(),
            },
            Up::Release {
                key: "chat:bob".into(),
                holder: 7,
            },
            Up::Publish {
                topic: "chat".into(),
                payload: Bytes::from_static(b"\xff\x00x"),
            },
            Up::List {
                req: 2,
                prefix: "chat:".into(),
            },
            Up::Swap {
                req: 3,
                key: "quote".into(),
                value: Bytes::new(),
            },
            Up::Sync { req: 4 },
            Up::SetIfAbsent {
                key: "quote".into(),
                value: Bytes::from_static(b"seed"),
            },
        ];
        for m in ups {
            assert_eq!(Up::decode(m.encode()), Ok(m.clone()));
        }
        let downs = [
            Down::Deliver {
                topic: "chat".into(),
                payload: Bytes::from_static(b"hi"),
            },
            Down::Reserved { req: 1, ok: true },
            Down::Listing {
                req: 2,
                values: vec![Bytes::from_static(b"a"), Bytes::new()],
            },
            Down::Swapped {
                req: 3,
                old: Bytes::from_static(b"old"),
            },
            Down::Changed {
                key: "quote".into(),
                seq: 9,
                value: Bytes::from_static(b"v"),
            },
            Down::Lost {
                key: "chat:bob".into(),
                holder: 7,
            },
            Down::Synced { req: 5 },
        ];
        for m in downs {
            assert_eq!(Down::decode(m.encode()), Ok(m.clone()));
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let good = Up::Hello {
            worker: 1,
            reservations: vec![reservation()],
            values: vec![],
        }
        .encode();
        // Every truncation of a valid frame is refused.
        for n in 0..good.len() {
            assert!(Up::decode(good.slice(..n)).is_err(), "prefix {n}");
        }
        assert_eq!(
            Up::decode(Bytes::from_static(&[99])),
            Err(ProtoError::Tag(99))
        );
        // A forged count far beyond the frame allocates nothing.
        let forged = Bytes::from_static(&[1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Up::decode(forged), Err(ProtoError::Truncated));
        let mut trailing = BytesMut::from(&Down::Reserved { req: 1, ok: false }.encode()[..]);
        trailing.put_u8(0);
        assert_eq!(Down::decode(trailing.freeze()), Err(ProtoError::Trailing));
        assert_eq!(
            Up::decode(Bytes::from_static(&[
                3, 0, 0, 0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0, 0
            ])),
            Err(ProtoError::Utf8)
        );
    }
}
