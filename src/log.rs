//! Logging: one line per event, `TIME [PID] LEVEL message key=value`, to stderr or a file that
//! is reopened on USR1 (after logrotate moved it).
//!
//! Why not `tracing-appender`: its non-blocking writer starts a thread (the arbiter must stay
//! single-threaded to fork safely) and it cannot reopen a file (tokio-rs/tracing#1276). The
//! writer below is a mutex around a `File` opened `O_APPEND`; every process (arbiter and
//! workers) shares the inherited descriptor and writes whole lines, which the kernel keeps
//! intact. The arbiter never forks while logging, so the mutex is never inherited locked.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::level_filters::LevelFilter;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Registry, reload};

/// Controls the installed logger: change the level on reload, reopen or move the file.
pub struct LogHandle {
    filter: reload::Handle<LevelFilter, Registry>,
    output: &'static LogOutput,
}

/// The destination: stderr, or a file by path.
struct LogOutput {
    target: Mutex<Target>,
}

struct Target {
    path: Option<PathBuf>,
    file: Option<File>,
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", path.display()),
            )
        })
}

/// Installs the global logger. Call once per process, before anything logs.
///
/// # Errors
/// If the log file cannot be opened for appending.
pub fn init(level: LevelFilter, path: Option<&Path>) -> io::Result<LogHandle> {
    let file = path.map(open_log).transpose()?;
    let output: &'static LogOutput = Box::leak(Box::new(LogOutput {
        target: Mutex::new(Target {
            path: path.map(Path::to_path_buf),
            file,
        }),
    }));
    let (filter, handle) = reload::Layer::new(level);
    // Colour only for a person at a terminal (and never when NO_COLOR is set, no-color.org);
    // checked again per line, as a reload may move the log to a file.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .event_format(LineFormat { output, colour })
        .with_writer(OutputRef(output))
        .with_ansi(false);
    // A second init (the library used twice in one process) keeps the first logger.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    Ok(LogHandle {
        filter: handle,
        output,
    })
}

impl LogHandle {
    /// Changes the level (on HUP).
    pub fn set_level(&self, level: LevelFilter) {
        let _ = self.filter.modify(|f| *f = level);
    }

    /// Reopens the current file by its path (USR1). Stderr needs nothing.
    ///
    /// # Errors
    /// If the file cannot be opened; the old descriptor is kept so logging goes on.
    pub fn reopen(&self) -> io::Result<()> {
        let mut t = self.output.target.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = t.path.clone() {
            t.file = Some(open_log(&path)?);
        }
        Ok(())
    }

    /// Switches to another file, or to stderr with `None` (a reload that changed
    /// `error_logfile`).
    ///
    /// # Errors
    /// If the new file cannot be opened; logging stays where it was.
    pub fn set_path(&self, path: Option<&Path>) -> io::Result<()> {
        let file = path.map(open_log).transpose()?;
        let mut t = self.output.target.lock().unwrap_or_else(|p| p.into_inner());
        t.path = path.map(Path::to_path_buf);
        t.file = file;
        Ok(())
    }
}

/// Writes one formatted line under the lock.
pub struct LineWriter<'a>(&'a LogOutput);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut t = self.0.target.lock().unwrap_or_else(|p| p.into_inner());
        match t.file.as_mut() {
            Some(f) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut t = self.0.target.lock().unwrap_or_else(|p| p.into_inner());
        match t.file.as_mut() {
            Some(f) => f.write_all(buf),
            None => io::stderr().lock().write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The `MakeWriter` handed to tracing: a reference to the leaked output.
#[derive(Clone, Copy)]
struct OutputRef(&'static LogOutput);

impl<'a> MakeWriter<'a> for OutputRef {
    type Writer = LineWriter<'static>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self.0)
    }
}

/// `2026-11-22T02:45:27.123456Z [1234] INFO listening on 127.0.0.1:9000`: the pid tells the
/// arbiter's lines from each worker's. The level is coloured when the line goes to a terminal.
struct LineFormat {
    output: &'static LogOutput,
    /// Stderr is a terminal and NO_COLOR is unset.
    colour: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        SystemTime.format_time(&mut writer)?;
        let (level, ansi) = match *event.metadata().level() {
            tracing::Level::ERROR => ("ERROR", "31"),
            tracing::Level::WARN => ("WARN", "33"),
            tracing::Level::INFO => ("INFO", "32"),
            _ => ("DEBUG", "2"),
        };
        let to_terminal = self.colour
            && self
                .output
                .target
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .file
                .is_none();
        if to_terminal {
            write!(
                writer,
                " [{}] \x1b[{ansi}m{level}\x1b[0m ",
                std::process::id()
            )?;
        } else {
            write!(writer, " [{}] {level} ", std::process::id())?;
        }
        // One event, one line: a message or field that carries a line break (a panic
        // message, which Rust writes over two lines and an app may fill with a client's
        // text; an error quoting a config value) would otherwise start a line that reads as
        // an event of its own. Such characters are written as Rust escapes them (`\n`).
        let mut fields = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut fields), event)?;
        write_escaped(&mut writer, &fields)?;
        writeln!(writer)
    }
}

/// Writes `text` with the characters of [`must_escape`] as Rust escapes them (`\n`,
/// `\u{1b}`, `\u{2028}`), the rest as is.
pub(crate) fn write_escaped(out: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(must_escape) {
        out.write_str(&rest[..at])?;
        let c = rest[at..]
            .chars()
            .next()
            .expect("find returned a char boundary");
        write!(out, "{}", c.escape_default())?;
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// True for a character that a log line must not carry as it is, because it changes how the
/// line reads rather than what it says: a control character (a line feed starts a forged
/// line, `ESC` starts a terminal escape sequence, C1 `NEL` breaks a line in some viewers),
/// a Unicode line or paragraph separator (U+2028, U+2029: a line break to JSON viewers and
/// editors), or a bidirectional mark, embedding, override or isolate (U+061C, U+200E,
/// U+200F, U+202A to U+202E, U+2066 to U+2069), which reorder the text around them as
/// displayed, so that a value can show another field's text in its place ("Trojan Source",
/// CVE-2021-42574). Writers of text that others control (the access log, names in the
/// server's lines) escape these.
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic message is two lines (`panicked at src/x.rs:1:2:` then the payload), and an
    /// app may put a client's text in it: each event stays one line, its breaks escaped, so
    /// no text can pass for a line of its own (here a forged "INFO listening" line). (An
    /// `ESC` tracing-subscriber writes as `\x1b` itself, since 0.3.20.)
    #[test]
    fn every_event_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let output: &'static LogOutput = Box::leak(Box::new(LogOutput {
            target: Mutex::new(Target {
                path: Some(path.clone()),
                file: Some(open_log(&path).unwrap()),
            }),
        }));
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(LineFormat {
                    output,
                    colour: false,
                })
                .with_writer(OutputRef(output))
                .with_ansi(false),
        );
        tracing::subscriber::with_default(subscriber, || {
            let client = "x\n2026-01-01T00:00:00Z [1] INFO listening on 0.0.0.0:80\u{2028}\x1b[2J";
            tracing::error!("worker code panicked: panicked at src/a.rs:1:2:\n{client}");
            tracing::error!(cause = %client, "app failed: 500");
            tracing::info!("plain, tab\there");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].ends_with(
                "ERROR worker code panicked: panicked at src/a.rs:1:2:\\nx\\n2026-01-01T00:00:00Z \
                 [1] INFO listening on 0.0.0.0:80\\u{2028}\\x1b[2J"
            ),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains(
                "ERROR app failed: 500 cause=x\\n2026-01-01T00:00:00Z [1] INFO listening"
            ),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with("INFO plain, tab\\there"), "{}", lines[2]);
    }

    #[test]
    fn characters_that_break_or_reorder_a_line_must_be_escaped() {
        for c in [
            '\n', '\r', '\0', '\x1b', '\x7f', '\u{85}', '\u{2028}', '\u{2029}', '\u{202e}',
            '\u{2066}', '\u{200f}', '\u{061c}',
        ] {
            assert!(must_escape(c), "{:?}", c);
        }
        for c in [' ', 'a', '"', 'é', '€', '\u{200b}', '\u{2027}', '\u{202f}'] {
            assert!(!must_escape(c), "{:?}", c);
        }
    }
}
