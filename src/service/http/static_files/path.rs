//! Request path → a relative path under the root, or a refusal.
//!
//! This is the lexical half of containment; the other half is `openat2(RESOLVE_BENEATH)` in
//! [`super::files`], which stops symlinks. Here every segment is percent-decoded on its own,
//! so an encoded slash (`%2F`) or backslash (`%5C`) can never become a separator, and anything
//! that a filesystem or a later decoder could read as structure is refused rather than
//! repaired: NUL, overlong UTF-8 forms (`%c0%ae` is how a lenient decoder is made to read a
//! `.`), malformed escapes, drive prefixes (`C:`), and `..` that would climb above the root.
//! Other bytes that are not UTF-8 are kept: Linux names are bytes, and a file called `caf\xe9`
//! (Latin-1) is served when asked for as `caf%E9`, as nginx does. `.` segments and empty segments (`//`) are dropped; `..` inside the
//! root is resolved lexically, as browsers do before sending.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, percent_encode};

/// Everything but `A-Z a-z 0-9 - . _ ~` is encoded in the links and redirects we write: safe
/// both inside a URL path segment and inside an HTML attribute.
pub const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A request path that is safe to open below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanPath {
    /// Decoded segments (bytes: a name need not be UTF-8), none empty, `.`, `..`, or holding
    /// `/`, `\`, NUL or an overlong UTF-8 form.
    pub segments: Vec<Vec<u8>>,
    /// The request asked for a directory (`/a/`); `/a` for a directory is redirected.
    pub trailing_slash: bool,
}

/// Why a path was refused: always a 400, the reason goes to the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

impl CleanPath {
    /// The path relative to the root, for `openat2`: `"."` for the root itself.
    pub fn relative(&self) -> PathBuf {
        if self.segments.is_empty() {
            PathBuf::from(".")
        } else {
            PathBuf::from(OsStr::from_bytes(&self.segments.join(&b'/')))
        }
    }

    /// The canonical URL path (each segment re-encoded), with a trailing `/` if `dir`.
    pub fn url(&self, dir: bool) -> String {
        let mut url = String::from("/");
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                url.push('/');
            }
            url.extend(percent_encode(s, SEGMENT));
        }
        if dir && !self.segments.is_empty() {
            url.push('/');
        }
        url
    }

    /// A segment starts with `.` (`.git`, `.env`): hidden unless `--show-hidden`.
    pub fn is_hidden(&self) -> bool {
        self.segments.iter().any(|s| s.starts_with(b"."))
    }
}

/// Cleans the path part of a request target (no query). It must start with `/`.
///
/// # Errors
/// [`BadPath`] naming the reason, for anything that is not a plain path inside the root.
pub fn clean(path: &[u8]) -> Result<CleanPath, BadPath> {
    let Some(rest) = path.strip_prefix(b"/") else {
        return Err(BadPath("path does not start with /"));
    };
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut trailing_slash = rest.is_empty();
    for raw in rest.split(|&b| b == b'/') {
        check_escapes(raw)?;
        // Copied whole when there is nothing to decode (the usual case): one exact
        // allocation, where collecting the decoder's bytes grew the vector twice over.
        let seg: Vec<u8> = if raw.contains(&b'%') {
            percent_decode(raw).collect()
        } else {
            raw.to_vec()
        };
        if seg.iter().any(|b| matches!(b, b'\0' | b'/' | b'\\')) {
            return Err(BadPath("NUL, slash or backslash inside a segment"));
        }
        if has_overlong(&seg) {
            return Err(BadPath("overlong UTF-8"));
        }
        trailing_slash = matches!(seg.as_slice(), b"" | b"." | b"..");
        match seg.as_slice() {
            b"" | b"." => {}
            b".." => {
                if segments.pop().is_none() {
                    return Err(BadPath(".. above the root"));
                }
            }
            _ => {
                if segments.is_empty() && is_drive(&seg) {
                    return Err(BadPath("drive prefix"));
                }
                segments.push(seg);
            }
        }
    }
    Ok(CleanPath {
        segments,
        trailing_slash,
    })
}

/// `%` must be followed by two hex digits: a stray `%` is how double-decoding attacks start.
fn check_escapes(raw: &[u8]) -> Result<(), BadPath> {
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let ok = raw.len() > i + 2
                && raw[i + 1].is_ascii_hexdigit()
                && raw[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(BadPath("malformed percent escape"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// A lead byte that can only start an overlong encoding (RFC 3629 §3 forbids them): `C0`/`C1`,
/// `E0` before `80..9F`, `F0` before `80..8F`. Such bytes spell `.`, `/` or `\` to a decoder
/// that does not check, so they are refused, not kept as a name.
fn has_overlong(seg: &[u8]) -> bool {
    seg.iter().enumerate().any(|(i, &b)| {
        let next = seg.get(i + 1).copied().unwrap_or(0);
        matches!(b, 0xC0 | 0xC1)
            || (b == 0xE0 && (0x80..0xA0).contains(&next))
            || (b == 0xF0 && (0x80..0x90).contains(&next))
    })
}

/// `C:` or `c:anything`: meaningless on Linux, hostile if the files are ever copied elsewhere.
fn is_drive(b: &[u8]) -> bool {
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        clean(p.as_bytes())
            .unwrap()
            .segments
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    #[test]
    fn plain_paths_decode_per_segment() {
        assert_eq!(segs("/"), Vec::<String>::new());
        assert_eq!(segs("/a/b.txt"), ["a", "b.txt"]);
        assert_eq!(segs("/a%20b/%C3%A9"), ["a b", "é"]);
        assert_eq!(segs("//a///b/./c/"), ["a", "b", "c"]);
        assert_eq!(segs("/a/b/../c"), ["a", "c"]);
        assert_eq!(segs("/a/%2e%2E/c"), ["c"]);
        assert_eq!(segs("/ab:c"), ["ab:c"]);
        assert!(clean(b"/a/").unwrap().trailing_slash);
        assert!(clean(b"/a/.").unwrap().trailing_slash);
        assert!(!clean(b"/a").unwrap().trailing_slash);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for p in [
            "/..",
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2Fetc%2Fpasswd",
            "/a%2f..%2f..%2fetc",
            "/..%5c..%5cetc",
            "/a%5cb",
            "/a%00b",
            "/%c1%9c",
            "/%e0%80%af",
            "/%f0%80%80%ae",
            "/%c0%ae%c0%ae/",
            "/%",
            "/%2",
            "/%zz",
            "/%252e%252e/",
            "/C:/windows",
            "/c:",
            "etc/passwd",
            "",
        ] {
            // `%252e` decodes once to `%2e`, a literal name: allowed, but never `..`.
            if p == "/%252e%252e/" {
                assert_eq!(segs(p), ["%2e%2e"]);
                continue;
            }
            assert!(clean(p.as_bytes()).is_err(), "{p} accepted");
        }
    }

    /// nginx serves names that are not UTF-8 by their bytes; so do we, re-encoding them the
    /// same way, while overlong forms stay refused above.
    #[test]
    fn names_that_are_not_utf8_are_kept_as_bytes() {
        let c = clean(b"/caf%E9/%ff%fe").unwrap();
        assert_eq!(c.segments, [b"caf\xe9".to_vec(), b"\xff\xfe".to_vec()]);
        assert_eq!(c.url(false), "/caf%E9/%FF%FE");
        assert_eq!(c.relative().as_os_str().as_bytes(), b"caf\xe9/\xff\xfe");
        // Valid multi-byte UTF-8 that merely starts with E0 or F0 is fine.
        assert_eq!(segs("/%e0%a4%85"), ["\u{905}"]);
    }

    #[test]
    fn urls_are_re_encoded() {
        let c = clean(b"/a%20b/%3Cx%3E%22").unwrap();
        assert_eq!(c.url(false), "/a%20b/%3Cx%3E%22");
        assert_eq!(c.url(true), "/a%20b/%3Cx%3E%22/");
        assert_eq!(c.relative(), PathBuf::from("a b/<x>\""));
        assert_eq!(clean(b"/").unwrap().relative(), PathBuf::from("."));
        assert!(clean(b"/a/.git/config").unwrap().is_hidden());
    }
}
