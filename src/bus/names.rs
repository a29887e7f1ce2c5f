//! A compact table of reserved names: what the hub holds for every name of every worker (to
//! keep names unique across workers), and what a worker's bus client holds for its own
//! members' names (to re-register them after a hub restart).
//!
//! Both tables grow with the members, not with the traffic, so an entry must be as small as it
//! can be (issue 13: "the arbiter's and hub's memory independent of the connection count"; the
//! hub cannot be, for names, since it is what keeps them unique). A name costs one bucket of the
//! map (56 bytes in the hub: the key and the value, the holder, its owner, its will) and
//! nothing else when the key and the value fit in the bucket together ([`Packed`]: 29 bytes,
//! `chat:` and the skeleton of a name of up to 12 ASCII letters, then the name as shown), else
//! **one** allocation holding them side by side. Before this table a name cost a map of
//! `String` to a whole [`Reservation`]: the key twice, the value, the will's topic and its
//! payload, five allocations and a 152-byte bucket, 428 bytes per chat member in the hub
//! (`benches/idle.sh`, 10,000 members) and as much again in its worker.
//!
//! Why inline: a worker's table fills while its members' tasks come and go (joining is busy),
//! so each small allocation of a name lands between blocks that those tasks free soon after;
//! one live block keeps its whole page resident, and `malloc_trim` returns only whole free
//! pages. A table that holds its names in its own buckets leaves nothing behind in the heap.
//!
//! **Wills are shaped, not stored.** A will's payload is almost always the value with the
//! same bytes around it (chat: `* ` + name + ` left\r\n`): the table keeps each distinct
//! (topic, bytes before the value, bytes after it) once, as a *shape*, and an entry only the
//! shape's index; the payload is made again when the will is needed (its worker vanished, or a
//! hello re-sends the reservation). A will that does not contain its value keeps its payload in
//! the entry's allocation, after the value. What goes in comes out byte for byte: the wire
//! format and [`Reservation`] are unchanged. The shapes are at most [`MAX_SHAPES`] (a service
//! has one or two; past the cap, payloads are kept whole), and never dropped.
//!
//! Owns no I/O and knows no service: keys, values and wills are opaque bytes.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use bytes::{Bytes, BytesMut};

use super::proto::Reservation;

/// The most will shapes one table interns; payloads of any further shape are kept whole in
/// their entries (correct, only larger). Bounds the table's memory against a service whose
/// wills have many shapes.
const MAX_SHAPES: usize = 64;

/// "No will" in [`Held::will`].
const NO_WILL: u32 = u32::MAX;

/// A will of no shape in [`Held::will`] (the shapes were full): its topic and payload follow
/// the value in the entry's bytes.
const UNSHAPED: u32 = u32::MAX - 1;

/// Up to three byte strings (`first`, `second`, `rest`) in 32 bytes: inline when `rest` is empty
/// and the other two fit in [`Packed::INLINE`] bytes together (no allocation), else in one
/// boxed slice. For many small, long-lived strings: a table of them holds their bytes in its
/// own memory rather than in small blocks scattered over the heap (see the module header).
/// Used for a name's key and value here, and for a chat member's name and key.
pub(crate) struct Packed(Repr);

enum Repr {
    /// `first` is `bytes[..first]`, `second` the next `second` bytes.
    Inline {
        first: u8,
        second: u8,
        bytes: [u8; Packed::INLINE],
    },
    /// `bytes` is the length of `second` (4 bytes, little-endian), then `first` (`first`
    /// bytes), `second` and `rest`.
    Boxed { bytes: Box<[u8]>, first: u32 },
}

impl Packed {
    /// The most bytes `first` and `second` may have together to be stored inline.
    pub(crate) const INLINE: usize = 29;

    /// `first`, `second` and `rest`, stored together.
    ///
    /// # Panics
    /// If `first` or `second` is 4 GiB or longer (bus frames are far shorter).
    pub(crate) fn new(first: &[u8], second: &[u8], rest: &[u8]) -> Packed {
        let n = first.len() + second.len();
        if rest.is_empty() && n <= Self::INLINE {
            let mut bytes = [0u8; Self::INLINE];
            bytes[..first.len()].copy_from_slice(first);
            bytes[first.len()..n].copy_from_slice(second);
            return Packed(Repr::Inline {
                // Both at most `INLINE`, which fits in a `u8`.
                first: first.len() as u8,
                second: second.len() as u8,
                bytes,
            });
        }
        let mut bytes = Vec::with_capacity(4 + n + rest.len());
        bytes.extend_from_slice(&len32(second.len()).to_le_bytes());
        bytes.extend_from_slice(first);
        bytes.extend_from_slice(second);
        bytes.extend_from_slice(rest);
        Packed(Repr::Boxed {
            bytes: bytes.into_boxed_slice(),
            first: len32(first.len()),
        })
    }

    pub(crate) fn first(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { first, bytes, .. } => &bytes[..usize::from(*first)],
            Repr::Boxed { bytes, first } => &bytes[4..4 + *first as usize],
        }
    }

    pub(crate) fn second(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline {
                first,
                second,
                bytes,
            } => {
                let f = usize::from(*first);
                &bytes[f..f + usize::from(*second)]
            }
            Repr::Boxed { bytes, first } => {
                let s = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                let f = 4 + *first as usize;
                &bytes[f..f + s]
            }
        }
    }

    pub(crate) fn rest(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { .. } => &[],
            Repr::Boxed { bytes, first } => {
                let s = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                &bytes[4 + *first as usize + s..]
            }
        }
    }

    /// Bytes allocated on the heap for these (0 when inline).
    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Boxed { bytes, .. } => bytes.len(),
        }
    }
}

/// A key and its value ([`Packed`]: in the bucket when short, else in one allocation), hashed
/// and compared by the key alone (so the map is looked up with the key's bytes, [`Borrow`]).
/// After the value, a will's payload when its shape does not hold it.
struct Name {
    bytes: Packed,
}

impl Name {
    fn key(&self) -> &[u8] {
        self.bytes.first()
    }

    fn value(&self) -> &[u8] {
        self.bytes.second()
    }

    /// What follows the value: a will's payload kept whole, or an unshaped will (empty
    /// otherwise).
    fn rest(&self) -> &[u8] {
        self.bytes.rest()
    }
}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

// Hash and equality are the key's, exactly as `[u8]` has them: `Borrow` requires it.
impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Name {}

/// Who holds a name, and its will.
#[derive(Clone, Copy)]
struct Held<T> {
    /// The holder within its worker ([`Reservation::holder`]).
    holder: u64,
    /// The table's own mark: the hub's connection id of the worker; nothing in a worker.
    owner: T,
    /// Index of the will's shape, or [`NO_WILL`].
    will: u32,
}

/// A will's topic, and the bytes around the value in its payload.
struct Shape {
    topic: String,
    /// `None`: the payload does not contain the value, and is kept whole in each entry.
    around: Option<(Bytes, Bytes)>,
}

/// Reserved names by key, each with its holder, an owner mark of type `T` (see [`Held`]), its
/// value and its will. See the module header for the layout.
pub(crate) struct Names<T> {
    map: HashMap<Name, Held<T>>,
    shapes: Vec<Shape>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names {
            map: HashMap::new(),
            shapes: Vec::new(),
        }
    }
}

impl<T: Copy> Names<T> {
    /// How many names are held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The holder of `key` and its owner mark, if someone holds it.
    pub(crate) fn get(&self, key: &str) -> Option<(u64, T)> {
        self.map.get(key.as_bytes()).map(|h| (h.holder, h.owner))
    }

    /// Records `r` for `owner`, replacing whatever held its key.
    pub(crate) fn insert(&mut self, r: &Reservation, owner: T) {
        // What follows the value (see `Name::rest`): usually nothing.
        let mut rest = Vec::new();
        let will = match &r.will {
            None => NO_WILL,
            Some((topic, payload)) => self.will_into(topic, &r.value, payload, &mut rest),
        };
        let name = Name {
            bytes: Packed::new(r.key.as_bytes(), &r.value, &rest),
        };
        let held = Held {
            holder: r.holder,
            owner,
            will,
        };
        // `insert` keeps the old key when there is one: remove first, so the new bytes stay.
        self.map.remove(r.key.as_bytes());
        self.map.insert(name, held);
    }

    /// The shape of a will: its index in `shapes`, or [`UNSHAPED`] past the cap. Appends to
    /// `bytes` (what the entry keeps after the value) what the shape does not hold: nothing, the
    /// payload, or (unshaped) the topic's length, the topic and the payload.
    fn will_into(&mut self, topic: &str, value: &[u8], payload: &[u8], bytes: &mut Vec<u8>) -> u32 {
        let at = (!value.is_empty())
            .then(|| payload.windows(value.len()).position(|w| w == value))
            .flatten();
        let around = at.map(|i| (&payload[..i], &payload[i + value.len()..]));
        let found = self.shapes.iter().position(|s| {
            s.topic == topic
                && match (&s.around, around) {
                    (Some((b, a)), Some((before, after))) => b == before && a == after,
                    (None, None) => true,
                    _ => false,
                }
        });
        let index = match found {
            Some(i) => i,
            None if self.shapes.len() < MAX_SHAPES => {
                self.shapes.push(Shape {
                    topic: topic.to_string(),
                    around: around
                        .map(|(b, a)| (Bytes::copy_from_slice(b), Bytes::copy_from_slice(a))),
                });
                self.shapes.len() - 1
            }
            None => {
                bytes.extend_from_slice(&len32(topic.len()).to_le_bytes());
                bytes.extend_from_slice(topic.as_bytes());
                bytes.extend_from_slice(payload);
                return UNSHAPED;
            }
        };
        if self.shapes[index].around.is_none() {
            bytes.extend_from_slice(payload);
        }
        index as u32
    }

    /// Forgets `key` if `holder` (with the owner mark `owner`, when given) holds it; true if it
    /// did.
    pub(crate) fn remove_held(&mut self, key: &str, holder: u64, owner: Option<T>) -> bool
    where
        T: PartialEq,
    {
        let held = self
            .map
            .get(key.as_bytes())
            .is_some_and(|h| h.holder == holder && owner.is_none_or(|o| o == h.owner));
        if held {
            self.map.remove(key.as_bytes());
        }
        held
    }

    /// Forgets `key`, whoever holds it.
    pub(crate) fn remove(&mut self, key: &str) {
        self.map.remove(key.as_bytes());
    }

    /// The values of every name whose key starts with `prefix`.
    pub(crate) fn values(&self, prefix: &str) -> Vec<Bytes> {
        self.map
            .keys()
            .filter(|n| n.key().starts_with(prefix.as_bytes()))
            .map(|n| Bytes::copy_from_slice(n.value()))
            .collect()
    }

    /// Every name, as the reservation it was made from.
    pub(crate) fn reservations(&self) -> Vec<Reservation> {
        self.map
            .iter()
            .map(|(n, h)| reservation(&self.shapes, n, h))
            .collect()
    }

    /// Takes out every name whose owner mark satisfies `gone`, as the reservations they were
    /// made from.
    pub(crate) fn take_owned(&mut self, mut gone: impl FnMut(T) -> bool) -> Vec<Reservation> {
        let shapes = &self.shapes;
        self.map
            .extract_if(|_, h| gone(h.owner))
            .map(|(n, h)| reservation(shapes, &n, &h))
            .collect()
    }
}

/// The reservation `n` and `h` were made from, byte for byte.
fn reservation<T>(shapes: &[Shape], n: &Name, h: &Held<T>) -> Reservation {
    let value = Bytes::copy_from_slice(n.value());
    let will = if h.will == UNSHAPED {
        let rest = n.rest();
        let (len, rest) = rest.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (topic, payload) = rest.split_at(len);
        Some((
            String::from_utf8_lossy(topic).into_owned(),
            Bytes::copy_from_slice(payload),
        ))
    } else {
        shapes.get(h.will as usize).map(|s| {
            let payload = match &s.around {
                Some((before, after)) => {
                    let mut p = BytesMut::with_capacity(before.len() + value.len() + after.len());
                    p.extend_from_slice(before);
                    p.extend_from_slice(&value);
                    p.extend_from_slice(after);
                    p.freeze()
                }
                None => Bytes::copy_from_slice(n.rest()),
            };
            (s.topic.clone(), payload)
        })
    };
    Reservation {
        // The key came in as a `String`: its bytes are UTF-8, and come back unchanged.
        key: String::from_utf8_lossy(n.key()).into_owned(),
        holder: h.holder,
        value,
        will,
    }
}

/// A length as the table stores it. Keys and values come from frames of at most
/// [`super::MAX_FRAME`] bytes, far below `u32::MAX`.
fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("a bus frame is shorter than 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(key: &str, holder: u64, name: &str) -> Reservation {
        Reservation {
            key: key.into(),
            holder,
            value: Bytes::copy_from_slice(name.as_bytes()),
            will: Some(("chat".into(), Bytes::from(format!("* {name} left\r\n")))),
        }
    }

    fn sorted(mut v: Vec<Reservation>) -> Vec<Reservation> {
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    #[test]
    fn what_goes_in_comes_out_byte_for_byte() {
        let mut t: Names<u64> = Names::default();
        let odd = Reservation {
            key: "k:odd".into(),
            holder: 9,
            value: Bytes::from_static(b"v"),
            // A will without its value in it.
            will: Some(("other".into(), Bytes::from_static(b"gone\xff"))),
        };
        let bare = Reservation {
            key: "k:bare".into(),
            holder: 3,
            value: Bytes::new(),
            will: None,
        };
        let empty_value_will = Reservation {
            key: "k:e".into(),
            holder: 4,
            value: Bytes::new(),
            will: Some(("chat".into(), Bytes::from_static(b"x"))),
        };
        let all = vec![
            chat("chat:alice", 1, "Alice"),
            chat("chat:b0b", 2, "Bob"),
            odd,
            bare,
            empty_value_will,
        ];
        for r in &all {
            t.insert(r, 7);
        }
        assert_eq!(sorted(t.reservations()), sorted(all.clone()));
        // The two chat wills share one shape.
        assert_eq!(t.shapes.len(), 3);
        assert_eq!(t.get("chat:alice"), Some((1, 7)));
        assert_eq!(t.get("chat:nobody"), None);
        let mut values = t.values("chat:");
        values.sort();
        assert_eq!(values, vec![Bytes::from("Alice"), Bytes::from("Bob")]);
        assert_eq!(sorted(t.take_owned(|o| o == 7)), sorted(all));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_name_is_removed_only_by_its_holder() {
        let mut t: Names<u64> = Names::default();
        t.insert(&chat("chat:alice", 1, "Alice"), 10);
        assert!(!t.remove_held("chat:alice", 2, None));
        assert!(!t.remove_held("chat:alice", 1, Some(11)));
        assert!(t.remove_held("chat:alice", 1, Some(10)));
        assert_eq!(t.len(), 0);
        // Replaced: the new holder, value and will.
        t.insert(&chat("chat:alice", 1, "Alice"), 10);
        t.insert(&chat("chat:alice", 5, "ALICE"), 11);
        assert_eq!(t.reservations(), vec![chat("chat:alice", 5, "ALICE")]);
    }

    #[test]
    fn past_the_shape_cap_wills_are_kept_whole() {
        let mut t: Names<()> = Names::default();
        let mut all = Vec::new();
        for i in 0..(2 * MAX_SHAPES) {
            let r = Reservation {
                key: format!("k:{i}"),
                holder: i as u64,
                value: Bytes::from_static(b"v"),
                // Past the cap, one of the kept shapes, or none: the payload or the whole
                // will is kept.
                will: Some(match i % 3 {
                    0 => (format!("t{i}"), Bytes::from(format!("{i} v"))),
                    1 => ("t".into(), Bytes::from(format!("{i} v"))),
                    _ => ("t".into(), Bytes::from(format!("{i}"))),
                }),
            };
            t.insert(&r, ());
            all.push(r);
        }
        assert_eq!(t.shapes.len(), MAX_SHAPES);
        assert_eq!(sorted(t.reservations()), sorted(all));
    }

    /// Issue 13: a chat member's name costs the hub (and its worker's client) about 90 bytes,
    /// not 428: a 56-byte bucket holding the key and the value, no allocation of its own.
    /// Counted from the map's capacity and the entries' lengths (the bus may not use the
    /// service layer's counting allocator).
    #[test]
    fn a_chat_name_costs_one_small_allocation() {
        const N: usize = 10_000;
        let mut t: Names<u64> = Names::default();
        for i in 0..N {
            t.insert(
                &chat(
                    &format!("chat:rnernber{i}"),
                    i as u64,
                    &format!("member{i}"),
                ),
                1,
            );
        }
        let bucket = std::mem::size_of::<Name>() + std::mem::size_of::<Held<u64>>();
        assert_eq!(bucket, 56);
        // A bucket and its control byte, for every bucket the map holds.
        let table = t.map.capacity() * (bucket + 1);
        let entries: usize = t.map.keys().map(|n| n.bytes.heap_len()).sum();
        assert_eq!(entries, 0, "short names are kept in their buckets");
        let per = (table + entries) / N;
        // 93 bytes on rustc 1.95: at 10,000 names the map has 16,384 buckets. It was 107
        // with a 48-byte bucket and a 25-byte allocation per name (plus the allocator's
        // overhead of that allocation, not counted here), and 428 bytes (PSS, with the
        // allocator's overhead) when the hub kept a map of `String` to `Reservation`.
        assert!(per <= 96, "a name costs {per} bytes");
        assert_eq!(t.shapes.len(), 1, "one shape for every chat will");
    }

    #[test]
    fn packed_bytes_come_back_inline_or_boxed() {
        assert_eq!(std::mem::size_of::<Packed>(), 32);
        let cases: [(&[u8], &[u8], &[u8]); 6] = [
            (b"", b"", b""),
            (b"chat:alice", b"Alice", b""),
            (b"chat:rnernber1234567", b"member123", b""), // 29: the most inline
            (b"chat:rnernber12345678", b"member12", b""), // 30: boxed
            (b"k", b"v", b"a will's payload"),
            ("chat:ü".as_bytes(), &[0xff; 300], b""),
        ];
        for (first, second, rest) in cases {
            let p = Packed::new(first, second, rest);
            assert_eq!((p.first(), p.second(), p.rest()), (first, second, rest));
            let inline = rest.is_empty() && first.len() + second.len() <= Packed::INLINE;
            assert_eq!(p.heap_len() == 0, inline, "{first:?}");
        }
    }
}
