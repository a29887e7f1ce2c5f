//! The `Range` header (RFC 9110 §14): `bytes=` with single, open-ended and suffix ranges.
//!
//! A header we cannot read is ignored (the whole file is sent, as the RFC allows); a readable
//! one whose ranges all miss the file is unsatisfiable (416). Many or overlapping ranges are
//! also ignored: they are how a tiny request asks for a huge multipart body.

/// More ranges than this in one request: ignored, the full file is sent.
pub const MAX_RANGES: usize = 16;

/// What a `Range` header asks of a file of a given length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// No usable header: send everything, 200.
    Full,
    /// Every range misses the file: 416.
    Unsatisfiable,
    /// Inclusive `(first, last)` byte positions, in request order, non-overlapping: 206.
    Parts(Vec<(u64, u64)>),
}

/// Reads `header` against a file of `len` bytes.
///
/// An empty file is sent whole (200, empty body) whatever the header says: every range of it
/// is unsatisfiable, but RFC 9110 §14.1.3 lets a server ignore Range, and nginx, Apache and
/// werkzeug answer 200 there, which no client mistakes; a 416 breaks downloaders that resume
/// with `bytes=0-`.
pub fn parse(header: &str, len: u64) -> Ranges {
    if len == 0 {
        return Ranges::Full;
    }
    let Some((unit, specs)) = header.split_once('=') else {
        return Ranges::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Full;
    }
    let mut parts = Vec::new();
    let mut seen = 0;
    for spec in specs.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        seen += 1;
        if seen > MAX_RANGES {
            return Ranges::Full;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Full;
        };
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            // Suffix: the last N bytes.
            let Some(n) = number(last) else {
                return Ranges::Full;
            };
            if n > 0 && len > 0 {
                parts.push((len.saturating_sub(n), len - 1));
            }
            continue;
        }
        let Some(first) = number(first) else {
            return Ranges::Full;
        };
        let last = if last.is_empty() {
            u64::MAX
        } else {
            match number(last) {
                Some(l) if l >= first => l,
                _ => return Ranges::Full,
            }
        };
        if first < len {
            parts.push((first, last.min(len - 1)));
        }
    }
    if seen == 0 {
        return Ranges::Full;
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    let mut sorted = parts.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[1].0 <= w[0].1) {
        return Ranges::Full;
    }
    Ranges::Parts(parts)
}

/// Digits only: `+5`, `5.0`, ` 5` and overflow are not numbers here.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(h: &str) -> Ranges {
        parse(h, 100)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(p("bytes=0-9"), Ranges::Parts(vec![(0, 9)]));
        assert_eq!(p("bytes=90-"), Ranges::Parts(vec![(90, 99)]));
        assert_eq!(p("bytes=-10"), Ranges::Parts(vec![(90, 99)]));
        assert_eq!(p("bytes=-1000"), Ranges::Parts(vec![(0, 99)]));
        assert_eq!(p("bytes=50-1000"), Ranges::Parts(vec![(50, 99)]));
        assert_eq!(p("Bytes = 1-1"), Ranges::Parts(vec![(1, 1)]));
    }

    #[test]
    fn multiple_ranges_keep_request_order() {
        assert_eq!(p("bytes=50-59, 0-9"), Ranges::Parts(vec![(50, 59), (0, 9)]));
        assert_eq!(p("bytes=0-9,200-300"), Ranges::Parts(vec![(0, 9)]));
        assert_eq!(p("bytes=0-50,40-60"), Ranges::Full);
        let many = format!("bytes={}", vec!["1-1"; 17].join(","));
        assert_eq!(p(&many), Ranges::Full);
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(p("bytes=100-"), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=-0"), Ranges::Unsatisfiable);
        for empty in [
            "bytes=0-",
            "bytes=0-0",
            "bytes=-5",
            "bytes=5-",
            "bytes=0-1,3-4",
        ] {
            assert_eq!(parse(empty, 0), Ranges::Full, "{empty}");
        }
        for bad in [
            "",
            "bytes",
            "bytes=",
            "items=0-1",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=1",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=--1",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(p(bad), Ranges::Full, "{bad}");
        }
    }
}
