//! Process titles, so `ps` and `top` tell the arbiter, its workers and the hub apart:
//! `oxicorn: arbiter [static 127.0.0.1:8000]`, `oxicorn: worker 2 [gen 3]`, `oxicorn: hub`.
//!
//! The titles start with a name ([`name`]): `--proc-name` (gunicorn's `proc_name`) when given,
//! else the program's ([`crate::program::current`]): `oxicorn` for the `oxicorn` command, and
//! for a program that embeds oxicorn its own (`myapp: worker 2 [gen 3]`), so that `ps`, `pgrep`
//! and `top` find a program's processes by the program's name, as gunicorn's titles name the
//! application it serves.
//!
//! A process titles only itself (`comm` of another process cannot be set, nor its command
//! line written), so a HUP that changes `--proc-name` retitles the arbiter and the workers it
//! starts, not the bus hub: a reload does not restart the hub (that would cost the chat room a
//! recovery for a title), which keeps the name it started with until it is restarted.
//!
//! Linux shows two names for a process, and this sets both:
//!
//! - `comm` (`/proc/PID/comm`, what `top` and `ps -e` show): at most 15 bytes, set with
//!   `prctl(PR_SET_NAME)`. We give it the name and the kind (`oxicorn-worker`, `myapp-arbiter`),
//!   cut to 15 bytes ([`comm`]).
//! - the command line (`/proc/PID/cmdline`, what `ps -ef`, `ps aux` and `top -c` show): the
//!   kernel reads it from the memory that held `argv` at exec. Overwriting that memory changes
//!   it, which is what BSD's and gunicorn's `setproctitle` do on Linux. When the byte at the end
//!   of the original arguments is no longer a NUL, the kernel reads the title from the start of
//!   that area up to the first NUL, and may run on into the environment strings that follow
//!   (`get_mm_cmdline` in the kernel's `fs/proc/base.c`). So the first call copies every
//!   environment string that lives there to the heap and repoints `environ` at the copies;
//!   after that, the arguments and environment area together hold the title.
//!
//! Why by hand: the `proctitle` crate (0.1.1) only sets `comm` on Linux, and a bare `oxicorn`
//! command line is 8 bytes, too short for any useful title without the environment area.
//!
//! Limits: call it only while the process has a single thread (the arbiter always; a child
//! before it builds its runtime), and only after the command line has been parsed:
//! `std::env::args()` reads the same memory and returns the title afterwards. As with every
//! `setproctitle`, `/proc/PID/environ` (which the kernel reads from the original area) shows
//! the title's padding afterwards; the process's own environment is intact. The area is
//! found through `/proc/self/stat` (fields 48 to 51, Linux ≥ 3.5); if that fails, only `comm`
//! is set.

use std::ffi::{CStr, CString, c_char};
use std::sync::OnceLock;

/// The memory the kernel reads `/proc/PID/cmdline` from: `[start, start + len)`.
#[derive(Debug, Clone, Copy)]
struct Area {
    start: usize,
    len: usize,
}

/// Found (and the environment moved out of it) on the first call; inherited by forked
/// children, whose memory layout is the parent's.
static AREA: OnceLock<Option<Area>> = OnceLock::new();

unsafe extern "C" {
    /// glibc's (and musl's) environment array, read and written by `getenv`/`setenv`.
    static mut environ: *mut *mut c_char;
}

/// The name titles start with: `configured` (`--proc-name`) when given, else the program's
/// name ([`crate::program::current`]; `oxicorn` for the `oxicorn` command).
pub fn name(configured: Option<&str>) -> &str {
    configured.unwrap_or_else(|| crate::program::current().name())
}

/// `comm` for a process of this `kind` (`arbiter`, `worker`, `hub`) of the program `name`:
/// `NAME-KIND` cut to `comm`'s 15 bytes (on a character boundary), so the name's start is kept
/// for `pgrep NAME` and the kind shows as far as it fits (`oxicorn-arbiter`, `axum_app-worker`,
/// `my-service-arbi`).
pub fn comm(name: &str, kind: &str) -> String {
    let comm = format!("{name}-{kind}").replace('\0', "");
    comm[..fitting(&comm, 15)].to_owned()
}

/// The length of `text`'s longest start of at most `most` bytes that ends on a character
/// boundary: half a character would make a title invalid UTF-8 (`ps` shows it as `?`).
/// (`str::floor_char_boundary`, stable only since Rust 1.91, above this crate's 1.90.)
fn fitting(text: &str, most: usize) -> usize {
    let mut n = text.len().min(most);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Sets the title of a process of this `kind` (`arbiter`, `worker`, `hub`) of the program
/// `name` ([`name`]): `NAME: DETAIL` as the command line `ps` shows (up to the room the
/// arguments and the environment had at exec), and [`comm`] (shown by `top`), for
/// `set("oxicorn", "worker", "worker 2 [gen 3]")`: `oxicorn: worker 2 [gen 3]` and
/// `oxicorn-worker`. Failures are silent: a title is a convenience, never a reason to stop.
pub fn set(name: &str, kind: &str, detail: &str) {
    if let Ok(comm) = CString::new(comm(name, kind)) {
        let _ = nix::sys::prctl::set_name(&comm);
    }
    let title = format!("{name}: {detail}");
    let Some(area) = *AREA.get_or_init(prepare) else {
        return;
    };
    let title: String = title.chars().filter(|&c| c != '\0').collect();
    // Leave one byte for the terminating NUL.
    let n = fitting(&title, area.len - 1);
    // SAFETY: `area` is the argument (and environment) strings the kernel put on this
    // process's initial stack: mapped, writable, and owned by no Rust value. Nothing else reads
    // it any more: the environment strings were copied out by `prepare` and `environ` points
    // at the copies, and the caller parsed the command line already. The process is single-
    // threaded (the caller's contract), so no one reads it while we write. Every write stays
    // inside `[start, start + len)`.
    unsafe {
        let dst = area.start as *mut u8;
        std::ptr::copy_nonoverlapping(title.as_ptr(), dst, n);
        // NULs after the title: a title shorter than the original arguments then reads as
        // the title followed by empty arguments, which `ps` shows as the title.
        std::ptr::write_bytes(dst.add(n), 0, area.len - n);
    }
}

/// Finds the area, and moves the environment strings that live in it to the heap. `None`
/// under valgrind, which reads its own options from that area for as long as the process
/// runs (a worker whose area was rewritten exits at once, "Bad option"): the title is then
/// `comm` alone.
fn prepare() -> Option<Area> {
    // valgrind preloads its `vgpreload_*.so` into every process it runs.
    if std::env::var_os("LD_PRELOAD").is_some_and(|p| p.to_string_lossy().contains("vgpreload")) {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<usize> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // `rest` starts at field 3 (state); arg_start..env_end are fields 48 to 51.
    let field = |n: usize| fields.get(n - 3).copied();
    let (arg_start, arg_end, env_start, env_end) = (field(48)?, field(49)?, field(50)?, field(51)?);
    if arg_start == 0 || arg_end <= arg_start {
        return None;
    }
    // Only an environment right after the arguments extends the room (the kernel reads on into
    // it only then).
    let end = if env_start == arg_end && env_end > env_start {
        // SAFETY: single-threaded (the caller's contract), so nobody reads or writes `environ`
        // meanwhile. Each entry is a NUL-terminated string (the C runtime's invariant); those
        // inside the area are replaced by leaked heap copies with the same contents, which
        // live as long as the process, as the originals did.
        unsafe {
            let mut entry = environ;
            while !entry.is_null() && !(*entry).is_null() {
                let at = *entry as usize;
                if (env_start..env_end).contains(&at) {
                    *entry = CString::from(CStr::from_ptr(*entry)).into_raw();
                }
                entry = entry.add(1);
            }
        }
        env_end
    } else {
        arg_end
    };
    Some(Area {
        start: arg_start,
        len: end - arg_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_keeps_the_names_start_and_fits_15_bytes() {
        assert_eq!(comm("oxicorn", "arbiter"), "oxicorn-arbiter");
        assert_eq!(comm("oxicorn", "worker"), "oxicorn-worker");
        assert_eq!(comm("axum_app", "worker"), "axum_app-worker");
        assert_eq!(comm("my-service", "arbiter"), "my-service-arbi");
        assert_eq!(comm("a-very-long-program-name", "hub"), "a-very-long-pro");
        // Cut on a character boundary: 'é' is two bytes, the 15th byte is its first.
        assert_eq!(comm("abcdefghijklmnéx", "hub"), "abcdefghijklmn");
        assert_eq!(comm("nul\0name", "hub"), "nulname-hub");
    }

    #[test]
    fn the_configured_name_wins_over_the_programs() {
        assert_eq!(name(Some("web")), "web");
        assert_eq!(name(None), crate::program::current().name());
    }
}
