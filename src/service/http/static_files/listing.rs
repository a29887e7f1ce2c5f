//! The HTML page for a directory without `index.html`.
//!
//! Names are shown HTML-escaped and linked percent-encoded (each byte outside `A-Za-z0-9-._~`),
//! so a file called `<script>` or `a"b` is text, never markup. Directories first, then files,
//! each in natural order ([`natural_cmp`]); sizes in binary units; times in UTC. The heading is
//! a breadcrumb trail. A viewport tag, a fluid table, 44 px tap targets on narrow screens and
//! a dark scheme under `prefers-color-scheme: dark` make it usable on a phone at night. The
//! 404 page shares the look.
//!
//! Entry links are relative, so they work wherever the tree is served; the breadcrumbs and
//! the 404 page's root link are absolute. For a tree mounted below `/` (an app's
//! `StaticFiles` under axum's `nest_service`), [`remount`] and [`not_found_at`] put the mount
//! point in front of them.

use std::cmp::Ordering;
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
    entries.sort_by(|a, b| {
        b.is_dir
            .cmp(&a.is_dir)
            .then_with(|| natural_cmp(&a.name, &b.name))
    });
    Ok(entries)
}

/// The page's style: light and dark (`prefers-color-scheme`), a name column that wraps long
/// names anywhere while the size and date columns never wrap, and on narrow screens links
/// that are at least 44 px tall (WCAG 2.2 target size, Apple's HIG minimum) with the date
/// column dropped.
const STYLE: &str = "\
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1b1b;--mute:#666;--link:#0645ad;--alt:#f4f4f4}\
@media(prefers-color-scheme:dark){:root{--bg:#121212;--fg:#e6e6e6;--mute:#9a9a9a;\
--link:#8ab4f8;--alt:#1e1e1e}}\
body{font-family:system-ui,sans-serif;margin:1rem;line-height:1.4;background:var(--bg);\
color:var(--fg)}\
a{color:var(--link)}\
h1{font-size:1.3rem;overflow-wrap:anywhere}\
table{border-collapse:collapse;width:100%}\
th,td{padding:.3rem .5rem;text-align:left;vertical-align:top}\
th{color:var(--mute);font-weight:normal}\
td:first-child{width:100%;overflow-wrap:anywhere;word-break:break-word}\
.n{text-align:right;white-space:nowrap}\
.t{white-space:nowrap}\
tr:nth-child(even){background:var(--alt)}\
@media(max-width:40rem){td,th{padding:0 .4rem}\
td a{display:block;box-sizing:border-box;min-height:44px;padding:11px 0;line-height:22px}\
td.n,td.t{padding-top:11px;line-height:22px}}\
@media(max-width:30rem){.t{display:none}}";

/// The head of every page: charset, viewport, colour schemes, title, style.
fn page_head(html: &mut String, title: &str) {
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <title>{title}</title><style>{STYLE}</style></head><body>\n"
    );
}

/// Renders the page for the directory at URL path `url` (already canonical: percent-encoded
/// as [`super::path::CleanPath::url`] writes it, ending in `/`). The heading is a breadcrumb
/// trail: each ancestor links to its own listing.
pub fn render(url: &str, entries: &[Entry]) -> String {
    let title = escape(&percent_encoding::percent_decode_str(url).decode_utf8_lossy());
    let mut html = String::with_capacity(2048 + entries.len() * 160);
    page_head(&mut html, &format!("Index of {title}"));
    html.push_str("<h1>Index of <a href=\"/\">/</a>");
    let mut prefix = String::from("/");
    for seg in url.split('/').filter(|s| !s.is_empty()) {
        prefix.push_str(seg);
        prefix.push('/');
        // `seg` is already percent-encoded with the listing's own set: safe in an attribute.
        let _ = write!(
            html,
            "<a href=\"{prefix}\">{}</a>/",
            escape(&percent_encoding::percent_decode_str(seg).decode_utf8_lossy())
        );
    }
    html.push_str(
        "</h1>\n<table>\n\
         <tr><th>Name</th><th class=\"n\">Size</th><th class=\"t\">Modified (UTC)</th></tr>\n",
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

/// The 404 page: says so, and links to the root so a visitor is never stranded.
pub fn not_found() -> String {
    not_found_at("/")
}

/// The 404 page of a tree whose root is at URL path `root` (`/static/` for a tree mounted at
/// `/static`; percent-encoded, ending in `/`).
pub fn not_found_at(root: &str) -> String {
    let mut html = String::with_capacity(1536);
    page_head(&mut html, "404 Not Found");
    let _ = write!(
        html,
        "<h1>404 Not Found</h1>\n<p>Nothing is served at this address.</p>\n\
         <p><a href=\"{}\">Go to the root</a></p>\n</body></html>\n",
        escape(root)
    );
    html
}

/// The listing page `html` ([`render`]'s) as seen under the mount point `mount` (a URL path
/// without its trailing slash, percent-encoded as received: `/static`): the title and the
/// heading name the full path, and every breadcrumb links below the mount point. The entry
/// links are relative and stay as they are.
///
/// Returns `None` if `html` is not a page [`render`] wrote.
pub fn remount(html: &str, mount: &str) -> Option<String> {
    let shown = escape(&percent_encoding::percent_decode_str(mount).decode_utf8_lossy());
    let href = escape(mount);
    let title_at = html.find("<title>Index of ")? + "<title>Index of ".len();
    let h1_start = html.find("<h1>Index of ")?;
    let h1_end = h1_start + html[h1_start..].find("</h1>")?;
    let h1 = &html[h1_start..h1_end];
    // The root crumb shows the mount point; every crumb's href gains it.
    let h1 = h1
        .replacen(
            "<a href=\"/\">/</a>",
            &format!("<a href=\"/\">{shown}/</a>"),
            1,
        )
        .replace("<a href=\"/", &format!("<a href=\"{href}/"));
    let mut out = String::with_capacity(html.len() + 2 * shown.len() + 8 * href.len());
    out.push_str(&html[..title_at]);
    out.push_str(&shown);
    out.push_str(&html[title_at..h1_start]);
    out.push_str(&h1);
    out.push_str(&html[h1_end..]);
    Some(out)
}

/// Natural order, as file managers sort: runs of digits compare by value (`IMG_2` before
/// `IMG_10`), other bytes by their ASCII-lowercase value; ties fall back to the raw bytes, so
/// the order is total and the same in every worker.
pub fn natural_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            // Compare the values without parsing (no overflow): drop leading zeros, then the
            // longer run is larger, then digit by digit.
            let x = trim_zeros(&a[si..i]);
            let y = trim_zeros(&b[sj..j]);
            let ord = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            let ord = a[i].to_ascii_lowercase().cmp(&b[j].to_ascii_lowercase());
            if ord != Ordering::Equal {
                return ord;
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let first = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len());
    &digits[first..]
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
    fn natural_order() {
        let mut names: Vec<&[u8]> = vec![
            b"IMG_10.jpg",
            b"img_2.jpg",
            b"IMG_1.jpg",
            b"b",
            b"a10",
            b"a9",
            b"a09",
            b"A",
            b"a",
            b"x99999999999999999999999",
            b"x100000000000000000000000",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        let shown: Vec<String> = names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        assert_eq!(
            shown,
            [
                "A",
                "a",
                "a09",
                "a9",
                "a10",
                "b",
                "IMG_1.jpg",
                "img_2.jpg",
                "IMG_10.jpg",
                "x99999999999999999999999",
                "x100000000000000000000000"
            ]
        );
    }

    #[test]
    fn breadcrumbs_link_every_ancestor() {
        let html = render("/a%20b/%3Cc%3E/", &[]);
        assert!(
            html.contains(
                "<h1>Index of <a href=\"/\">/</a><a href=\"/a%20b/\">a b</a>/\
                 <a href=\"/a%20b/%3Cc%3E/\">&lt;c&gt;</a>/</h1>"
            ),
            "{html}"
        );
        assert!(not_found().contains("<a href=\"/\">"));
    }

    #[test]
    fn remounted_breadcrumbs_and_404_link_below_the_mount_point() {
        let e = Entry {
            is_dir: false,
            name: b"x.txt".to_vec(),
            size: 1,
            mtime: SystemTime::UNIX_EPOCH,
        };
        let page = render("/a%20b/", std::slice::from_ref(&e));
        let html = remount(&page, "/st%20atic").unwrap();
        assert!(
            html.contains("<title>Index of /st atic/a b/</title>"),
            "{html}"
        );
        assert!(
            html.contains(
                "<h1>Index of <a href=\"/st%20atic/\">/st atic/</a>\
                 <a href=\"/st%20atic/a%20b/\">a b</a>/</h1>"
            ),
            "{html}"
        );
        // Entries and the parent link are relative: unchanged.
        assert!(html.contains("<a href=\"x.txt\">x.txt</a>"), "{html}");
        assert!(html.contains("<a href=\"../\">../</a>"), "{html}");
        // The mount point is markup-safe whatever it holds.
        let odd = remount(&page, "/\"><script>").unwrap();
        assert!(!odd.contains("<script>"), "{odd}");
        assert_eq!(remount("<p>not a listing</p>", "/s"), None);
        let nf = not_found_at("/static/");
        assert!(
            nf.contains("<a href=\"/static/\">Go to the root</a>"),
            "{nf}"
        );
        assert_eq!(not_found(), not_found_at("/"));
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
