//! Every exit code of every oxicorn process, and who reacts to it. One table, so no two
//! meanings share a number; the README's exit-code table is this one.

/// A clean stop (and `--check-config` on a valid configuration).
pub const OK: i32 = 0;

/// The configuration is invalid, or a listener or the pid file could not be set up: nothing
/// was started. Also a failed client command (`oxicorn connect`).
pub const CONFIG_ERROR: i32 = 1;

/// The command line is malformed (an unknown option, a missing value): clap's usage error.
pub const USAGE_ERROR: i32 = 2;
