//! Every exit code oxicorn's processes use, and who reacts to each.
//!
//! Two audiences read exit codes, so there are two groups:
//!
//! - **The `oxicorn` process** (the arbiter, or the command before it starts one): read by the
//!   operator, a shell script, systemd. [`SUCCESS`], [`CONFIG_ERROR`], [`USAGE_ERROR`],
//!   [`HALT_BOOT_FAILURE`].
//! - **A child the arbiter forked** (a worker, the bus hub): read only by the arbiter's reaper,
//!   which decides from it whether to back off, restart or halt. [`WORKER_BOOT_ERROR`],
//!   [`HUB_BOOT_ERROR`], [`CHILD_PANIC`]; a child that stops as asked (or finds the arbiter
//!   gone) exits [`SUCCESS`].
//!
//! Within a group no two meanings share a value (the test below checks it). Across the groups
//! one value is shared on purpose: a worker's [`WORKER_BOOT_ERROR`] and the arbiter's
//! [`HALT_BOOT_FAILURE`] are both 3, because the second is the first passed up to the operator
//! once no worker could ever boot — what gunicorn does with its `WORKER_BOOT_ERROR`
//! (`gunicorn/arbiter.py`, `Arbiter.halt(reason, exit_status=WORKER_BOOT_ERROR)`).
//!
//! This module only names the codes; the places that produce them are listed on each constant.
//! It must not import anything of oxicorn's: every layer may use it.

/// Everything went as asked: a stop by signal, `--check-config` on a good file, a child that
/// stopped when told to or found its arbiter gone.
pub const SUCCESS: i32 = 0;

/// The configuration is invalid, or the server could not start with it (a listener could not
/// be bound, the pid file is held): nothing was started. Produced by `main.rs`; reacted to by
/// the operator (fix the file or the flags).
pub const CONFIG_ERROR: i32 = 1;

/// The command line could not be parsed (an unknown flag, a missing value). Produced by clap's
/// own error path, which exits 2; reacted to by the operator.
pub const USAGE_ERROR: i32 = 2;

/// The arbiter halted: workers kept failing to boot (`MAX_BOOT_FAILURES` in a row) and none
/// ever became ready, so nothing would ever serve. Produced by the arbiter; reacted to by the
/// operator or the supervisor (which should not restart in a loop). Equal to
/// [`WORKER_BOOT_ERROR`] on purpose: see the module header.
pub const HALT_BOOT_FAILURE: i32 = 3;

/// A worker could not start serving (no runtime, a listener it cannot adopt, a service that
/// cannot start). Produced by the worker before it reports ready; the arbiter backs off before
/// the next spawn, and halts with [`HALT_BOOT_FAILURE`] when no worker ever boots (gunicorn's
/// `WORKER_BOOT_ERROR = 3`).
pub const WORKER_BOOT_ERROR: i32 = 3;

/// The bus hub could not start (its socket is taken, no runtime). Produced by the hub; the
/// arbiter restarts it with back-off, as for any hub exit it did not ask for. Distinct from
/// [`WORKER_BOOT_ERROR`] so that a log or a test reading a bare code knows which child failed.
pub const HUB_BOOT_ERROR: i32 = 4;

/// A child's own code panicked outside any connection (a panic inside a connection task ends
/// that connection only). Produced by the child layer's `catch_unwind`; the arbiter logs it
/// and replaces the child. 70 is `EX_SOFTWARE` from BSD's `sysexits.h`: "an internal software
/// error has been detected".
pub const CHILD_PANIC: i32 = 70;

/// Who reads an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The operator, a script or a supervisor, reading the `oxicorn` process's status.
    Operator,
    /// The arbiter, reaping one of its children.
    Arbiter,
}

/// One row of [`TABLE`].
#[derive(Debug, Clone, Copy)]
pub struct ExitCode {
    /// The value passed to `exit`.
    pub code: i32,
    /// The constant's name, as written in this module.
    pub name: &'static str,
    /// Who reads it.
    pub reader: Reader,
    /// What it means, in a few words (for `--help`-like tables).
    pub meaning: &'static str,
}

/// Every exit code, for documentation and for the distinctness test.
pub const TABLE: &[ExitCode] = &[
    ExitCode {
        code: SUCCESS,
        name: "SUCCESS",
        reader: Reader::Operator,
        meaning: "stopped as asked",
    },
    ExitCode {
        code: CONFIG_ERROR,
        name: "CONFIG_ERROR",
        reader: Reader::Operator,
        meaning: "invalid configuration, or a listener or pid file refused: nothing started",
    },
    ExitCode {
        code: USAGE_ERROR,
        name: "USAGE_ERROR",
        reader: Reader::Operator,
        meaning: "the command line could not be parsed",
    },
    ExitCode {
        code: HALT_BOOT_FAILURE,
        name: "HALT_BOOT_FAILURE",
        reader: Reader::Operator,
        meaning: "workers kept failing to boot and none ever became ready",
    },
    ExitCode {
        code: SUCCESS,
        name: "SUCCESS",
        reader: Reader::Arbiter,
        meaning: "the child stopped as asked, or found its arbiter gone",
    },
    ExitCode {
        code: WORKER_BOOT_ERROR,
        name: "WORKER_BOOT_ERROR",
        reader: Reader::Arbiter,
        meaning: "a worker could not start serving: back off, halt if none ever boots",
    },
    ExitCode {
        code: HUB_BOOT_ERROR,
        name: "HUB_BOOT_ERROR",
        reader: Reader::Arbiter,
        meaning: "the bus hub could not start: restart it with back-off",
    },
    ExitCode {
        code: CHILD_PANIC,
        name: "CHILD_PANIC",
        reader: Reader::Arbiter,
        meaning: "a child's own code panicked: replace it",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reader_sees_one_meaning_per_code() {
        for reader in [Reader::Operator, Reader::Arbiter] {
            let rows: Vec<_> = TABLE.iter().filter(|r| r.reader == reader).collect();
            for (i, a) in rows.iter().enumerate() {
                for b in &rows[i + 1..] {
                    assert_ne!(a.code, b.code, "{} and {} share a code", a.name, b.name);
                }
            }
        }
    }

    #[test]
    fn only_the_boot_failure_is_passed_up_with_the_same_value() {
        for a in TABLE.iter().filter(|r| r.reader == Reader::Operator) {
            for b in TABLE.iter().filter(|r| r.reader == Reader::Arbiter) {
                let shared = a.code == b.code;
                let allowed = (a.name == b.name)
                    || (a.name == "HALT_BOOT_FAILURE" && b.name == "WORKER_BOOT_ERROR");
                assert!(
                    !shared || allowed,
                    "{} and {} share {}",
                    a.name,
                    b.name,
                    a.code
                );
            }
        }
        assert_ne!(WORKER_BOOT_ERROR, HUB_BOOT_ERROR);
        assert_ne!(CHILD_PANIC, WORKER_BOOT_ERROR);
    }

    #[test]
    fn codes_fit_a_process_status() {
        for row in TABLE {
            assert!((0..=125).contains(&row.code), "{}: {}", row.name, row.code);
        }
    }
}
