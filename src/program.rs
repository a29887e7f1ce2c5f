//! Who this process is: the name and version that `--version` prints and that the arbiter's
//! lifecycle and upgrade lines name ("upgrade: myapp 1.2.0 -> myapp 1.3.0").
//!
//! The `oxicorn` command is oxicorn. A program that embeds oxicorn ([`crate::Server`]) is
//! itself: its name and version are its own crate's, which oxicorn's code cannot read at run
//! time (`env!("CARGO_PKG_VERSION")` expands to the crate being compiled), so the program
//! passes them in, most simply with [`program!`](crate::program!) (as clap's `command!()`
//! takes the calling crate's). A program that names no version still says which oxicorn
//! serves it, so that no line claims oxicorn's version as the program's.
//!
//! Owns the identity and its one process-wide copy, set once by [`crate::Server::run`] before
//! the arbiter starts; reads nothing but its arguments and the build's constants.

use std::fmt;
use std::sync::OnceLock;

/// oxicorn's own version and commit in a form that reads inside parentheses after a
/// program's: `oxicorn 0.1.0, commit 1a2b3c4d5e`.
const SERVED_BY: &str = concat!(
    "oxicorn ",
    env!("CARGO_PKG_VERSION"),
    ", commit ",
    env!("OXICORN_COMMIT")
);

/// A program's name and version, as `--version` prints them and the server's log lines name
/// them.
///
/// ```
/// let program = oxicorn::Program::new("myapp", "1.2.0");
/// assert_eq!(program.to_string(), "myapp 1.2.0");
/// assert!(program.version_text().starts_with("1.2.0 (oxicorn "));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    name: String,
    /// `None` for a program that named no version (only its executable's name is known).
    version: Option<String>,
    /// The `oxicorn` command itself, whose version is oxicorn's.
    oxicorn: bool,
}

impl Program {
    /// A program called `name` at `version`: usually `env!("CARGO_BIN_NAME")` (or
    /// `CARGO_PKG_NAME`) and `env!("CARGO_PKG_VERSION")`, which
    /// [`program!`](crate::program!) fills in.
    ///
    /// Both are shown on one line (`--version`, the server's log lines), so the characters
    /// that would break or reorder it ([`crate::log::must_escape`]: a newline, an escape
    /// sequence, a bidirectional override) are kept escaped, as Rust writes them (`\n`,
    /// `\u{202e}`). An empty name is `app`, as for a program started without `argv[0]`; an
    /// empty version is no version (see [`Program::version_text`]).
    ///
    /// ```
    /// let p = oxicorn::Program::new("my app\n", "");
    /// assert_eq!(p.name(), "my app\\n");
    /// assert_eq!(p.version(), None);
    /// ```
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Program {
        let version = version.into();
        Program {
            name: printable_name(name.into()),
            version: (!version.is_empty()).then(|| printable(version)),
            oxicorn: false,
        }
    }

    /// A program known only by the name it was started as (`argv[0]`'s file name, `app` if
    /// there is none): what [`crate::Server::from_args`] serves. Its `--version` names the
    /// oxicorn that serves it, not a version of its own.
    pub fn from_argv0() -> Program {
        let name = std::env::args_os()
            .next()
            .and_then(|p| {
                std::path::Path::new(&p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        Program {
            name: printable_name(name),
            version: None,
            oxicorn: false,
        }
    }

    /// The same program under another name (kept printable as [`Program::new`] keeps it).
    pub(crate) fn renamed(mut self, name: String) -> Program {
        self.name = printable_name(name);
        self
    }

    /// The `oxicorn` command: `oxicorn 0.1.0 (commit 1a2b3c4d5e)`.
    pub fn oxicorn() -> Program {
        Program {
            name: "oxicorn".into(),
            version: Some(crate::VERSION.into()),
            oxicorn: true,
        }
    }

    /// The program's name: its command's name in `--help` and `--version`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version it was given, if any.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// What `--version` prints after the name: the program's version and the oxicorn that
    /// serves it, `1.2.0 (oxicorn 0.1.0, commit 1a2b3c4d5e)`; `(oxicorn …)` alone for a
    /// program that named no version; oxicorn's own for the `oxicorn` command.
    pub fn version_text(&self) -> String {
        match (&self.version, self.oxicorn) {
            (Some(v), true) => v.clone(),
            (Some(v), false) => format!("{v} ({SERVED_BY})"),
            (None, _) => format!("({SERVED_BY})"),
        }
    }
}

impl fmt::Display for Program {
    /// How log lines name it: `myapp 1.2.0`, `oxicorn 0.1.0 (commit 1a2b3c4d5e)`, or
    /// `myapp (oxicorn 0.1.0, commit 1a2b3c4d5e)` without a version of its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{} {v}", self.name),
            None => write!(f, "{} ({SERVED_BY})", self.name),
        }
    }
}

/// `text` with the characters that would break or reorder a line
/// ([`crate::log::must_escape`]) written as Rust escapes them (`\n`, `\u{202e}`).
fn printable(text: String) -> String {
    if !text.chars().any(crate::log::must_escape) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    crate::log::write_escaped(&mut out, &text).expect("writing to a String cannot fail");
    out
}

/// A program's name, printable; `app` when empty.
fn printable_name(name: String) -> String {
    if name.is_empty() {
        "app".into()
    } else {
        printable(name)
    }
}

/// This process's program, once [`install`]ed; oxicorn until then (the `oxicorn` command
/// never installs one).
static CURRENT: OnceLock<Program> = OnceLock::new();

/// The program this process runs, as log lines name it.
pub fn current() -> &'static Program {
    CURRENT.get_or_init(Program::oxicorn)
}

/// Makes `program` the one [`current`] returns, for the rest of the process (workers inherit
/// it through fork; a USR2 upgrade's new image installs its own). Called by
/// [`crate::Server::run`] before the arbiter starts; a second call, or one after [`current`]
/// was read, leaves the first in place and returns false.
pub fn install(program: Program) -> bool {
    CURRENT.set(program).is_ok()
}

/// How the arbiter names the image that handed a server over, from the handover's version
/// text: today's images write [`current`] whole (`myapp 1.2.0`); earlier ones wrote
/// oxicorn's bare [`crate::VERSION`] (`0.1.0 (commit 1a2b3c4d5e)`), which is oxicorn's.
/// Only that exact shape, a version then ` (commit …)` and nothing else, is taken for an
/// earlier image's: a program's own name may start with a digit (`7zip 1.0`).
pub fn handed_over(version: &str) -> String {
    let bare_oxicorn = version.split_once(" (commit ").is_some_and(|(v, commit)| {
        v.starts_with(|c: char| c.is_ascii_digit())
            && !v.contains(' ')
            && commit
                .strip_suffix(')')
                .is_some_and(|c| !c.contains([' ', '(', ')']))
    });
    if bare_oxicorn {
        format!("oxicorn {version}")
    } else {
        version.to_string()
    }
}

/// The calling program's [`Program`]: its binary's name (`CARGO_BIN_NAME`, or the package's
/// name outside a binary) and its package's version, read where the macro is used, as clap's
/// `command!()` does.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     oxicorn::program!() // `myapp --version` prints `myapp 1.2.0 (oxicorn …)`
///         .from_args()
///         .app(|| async {
///             Ok::<_, std::io::Error>(tower::service_fn(|_req| async {
///                 Ok::<_, std::convert::Infallible>(http::Response::new("hello".to_string()))
///             }))
///         })
///         .run()
/// }
/// ```
#[macro_export]
macro_rules! program {
    () => {
        $crate::Program::new(
            match ::core::option_env!("CARGO_BIN_NAME") {
                ::core::option::Option::Some(name) => name,
                ::core::option::Option::None => ::core::env!("CARGO_PKG_NAME"),
            },
            ::core::env!("CARGO_PKG_VERSION"),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_each_kind_of_program_names_itself() {
        let named = Program::new("myapp", "1.2.0");
        assert_eq!(named.to_string(), "myapp 1.2.0");
        assert_eq!(
            named.version_text(),
            format!(
                "1.2.0 (oxicorn {}, commit {})",
                env!("CARGO_PKG_VERSION"),
                env!("OXICORN_COMMIT")
            )
        );
        let oxicorn = Program::oxicorn();
        assert_eq!(oxicorn.to_string(), format!("oxicorn {}", crate::VERSION));
        assert_eq!(oxicorn.version_text(), crate::VERSION);
        let unnamed = Program {
            name: "myapp".into(),
            version: None,
            oxicorn: false,
        };
        assert_eq!(unnamed.to_string(), format!("myapp ({SERVED_BY})"));
        assert_eq!(unnamed.version_text(), format!("({SERVED_BY})"));
    }

    #[test]
    fn the_macro_reads_the_calling_crate() {
        // In this crate's unit tests, the caller is oxicorn itself (no binary being built).
        let p = crate::program!();
        assert_eq!(p.name(), env!("CARGO_PKG_NAME"));
        assert_eq!(p.version(), Some(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn handed_over_versions_of_earlier_images_are_oxicorns() {
        assert_eq!(
            handed_over("0.1.0 (commit abc)"),
            "oxicorn 0.1.0 (commit abc)"
        );
        assert_eq!(handed_over("myapp 1.2.0"), "myapp 1.2.0");
        assert_eq!(
            handed_over(crate::VERSION),
            format!("oxicorn {}", crate::VERSION)
        );
        assert_eq!(
            handed_over("0.1.0 (commit unknown)"),
            "oxicorn 0.1.0 (commit unknown)"
        );
    }

    /// A program whose name starts with a digit is itself, not an earlier oxicorn: the
    /// upgrade line read `upgrade: oxicorn 7zip 1.0 -> 7zip 1.1`.
    #[test]
    fn a_program_named_with_a_leading_digit_is_not_taken_for_oxicorn() {
        for p in [
            Program::new("7zip", "1.0"),
            Program::new("2048", "0.3.0"),
            Program::new("3d-viewer", "1.0 (commit abc)"),
            Program::new("1app", ""),
        ] {
            let text = p.to_string();
            assert_eq!(handed_over(&text), text);
        }
    }

    /// A name or version with a newline made `--version` two lines and the arbiter's start
    /// line two log lines (the second one the embedder's text); one with an escape sequence or
    /// a bidirectional override rewrote how the line shows. They are kept escaped; spaces and
    /// other Unicode are kept as they are.
    #[test]
    fn names_and_versions_stay_on_one_line() {
        let p = Program::new("my app\nINFO forged", "1.0\r\x1b[2J\u{202e}");
        assert_eq!(p.name(), "my app\\nINFO forged");
        assert_eq!(p.version(), Some("1.0\\r\\u{1b}[2J\\u{202e}"));
        assert!(!p.to_string().chars().any(crate::log::must_escape));
        assert!(!p.version_text().chars().any(crate::log::must_escape));
        let p = Program::new("café ☕ app", "1.0-β");
        assert_eq!(p.to_string(), "café ☕ app 1.0-β");
        let p = Program::new("", "");
        assert_eq!((p.name(), p.version()), ("app", None));
        assert_eq!(p.to_string(), format!("app ({SERVED_BY})"));
        assert_eq!(
            Program::new("a", "1").renamed("x\ny".into()).name(),
            "x\\ny"
        );
    }
}
