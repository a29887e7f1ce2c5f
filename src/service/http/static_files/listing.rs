//! The HTML page for a directory without `index.html`.
//!
//! Names are shown HTML-escaped and linked percent-encoded (each byte outside `A-Za-z0-9-._~`),
//! so a file called `<script>` or `a"b` is text, never markup. Directories first, then files,
//! each sorted by name; sizes in binary units; times in UTC. A viewport tag and a fluid table
//! make it readable on a phone.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use percent_encoding::percent_encode;
use rustix::fs::{AtFlags, Dir, FileType};

use super::path::SEGMENT;

/// One row of the listing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Directories sort first.
    pub is_dir: bool,
    /// The name's bytes (Linux names need not be UTF-8: such a name is shown with U+FFFD and
    /// linked by its percent-encoded bytes, which [`super::path::clean`] decodes back).
    pub name: Vec<u8>,
    /// Bytes, for files.
    pub size: u64,
    /// Last modification.
    pub mtime: SystemTime,
}

/// Reads the entries of the open directory `dir`.
///
/// # Errors
/// If the directory cannot be read.
pub fn read(dir: &impl AsFd, show_hidden: bool) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for item in Dir::read_from(dir)? {
        let item = item?;
        let cname = item.file_name();
        let name = cname.to_bytes();
        if name == b"." || name == b".." || (!show_hidden && name.starts_with(b".")) {
            continue;
        }
        // Follow symlinks for what they point at; a dangling one is shown as itself.
        let st = rustix::fs::statat(dir, cname, AtFlags::empty())
            .or_else(|_| rustix::fs::statat(dir, cname, AtFlags::SYMLINK_NOFOLLOW));
        let Ok(st) = st else { continue };
        entries.push(Entry {
            is_dir: FileType::from_raw_mode(st.st_mode) == FileType::Directory,
            name: name.to_vec(),
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0)),
        });
    }
    entries.sort_by(|a, b| b.is_dir.cmp(&a.is_dir).then_with(|| a.name.cmp(&b.name)));
    Ok(entries)
}

/// Renders the page for the directory at URL path `url` (already canonical, ending in `/`).
pub fn render(url: &str, entries: &[Entry]) -> String {
    let title = escape(&percent_encoding::percent_decode_str(url).decode_utf8_lossy());
    let mut html = String::with_capacity(512 + entries.len() * 160);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Index of {title}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:1rem;line-height:1.4}}\
         table{{border-collapse:collapse;width:100%}}\
         th,td{{padding:.3rem .5rem;text-align:left;vertical-align:top}}\
         td:first-child{{word-break:break-all}}\
         .n{{text-align:right;white-space:nowrap}}\
         tr:nth-child(even){{background:#f4f4f4}}\
         @media(max-width:30rem){{.t{{display:none}}}}\
         </style></head><body>\n<h1>Index of {title}</h1>\n<table>\n\
         <tr><th>Name</th><th class=\"n\">Size</th><th class=\"t\">Modified (UTC)</th></tr>\n"
    );
    if url != "/" {
        html.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td class=\"t\"></td></tr>\n");
    }
    for e in entries {
        let href: String = percent_encode(&e.name, SEGMENT).collect();
        let slash = if e.is_dir { "/" } else { "" };
        let size = if e.is_dir {
            "-".to_string()
        } else {
            human_size(e.size)
        };
        let _ = writeln!(
            html,
            "<tr><td><a href=\"{href}{slash}\">{}{slash}</a></td><td class=\"n\">{size}</td>\
             <td class=\"t\">{}</td></tr>",
            escape(&String::from_utf8_lossy(&e.name)),
            show_time(e.mtime),
        );
    }
    html.push_str("</table>\n</body></html>\n");
    html
}

/// Escapes the five characters that matter in HTML text and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `512 B`, `1.5 KiB`, `3.0 MiB`.
fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `2026-11-22 03:04`, UTC.
fn show_time(t: SystemTime) -> String {
    crate::service::http::date::Utc::from_system(t).short()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_encoded() {
        let e = Entry {
            is_dir: false,
            name: b"<b>&\"x'.txt".to_vec(),
            size: 1536,
            mtime: SystemTime::UNIX_EPOCH,
        };
        let html = render("/a%20b/", &[e]);
        assert!(html.contains("Index of /a b/"));
        assert!(html.contains("href=\"%3Cb%3E%26%22x%27.txt\""));
        assert!(html.contains(">&lt;b&gt;&amp;&quot;x&#39;.txt</a>"));
        assert!(html.contains("1.5 KiB"));
        assert!(html.contains("1970-01-01 00:00"));
        assert!(html.contains("href=\"../\""));
        assert!(!render("/", &[]).contains("../"));
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
