//! The embedding API: a program hands oxicorn a factory for its own `tower::Service` (an axum
//! `Router`, say) and gets oxicorn's CLI, config file, pre-forked workers, reloads, limits and
//! logs.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     oxicorn::Server::from_args()
//!         .app(|| async {
//!             // Runs in each worker, after the fork: open pools, load templates here.
//!             Ok::<_, std::io::Error>(tower::service_fn(|_req| async {
//!                 Ok::<_, std::convert::Infallible>(http::Response::new("hello".to_string()))
//!             }))
//!         })
//!         .run()
//! }
//! ```
//!
//! [`program!`](crate::program!) names the program, for its `--version` and the server's log
//! lines (`Server::from_args()` knows only its executable's name, see
//! [`crate::program`](mod@crate::program)):
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     oxicorn::program!() // `myapp --version`: `myapp 1.2.0 (oxicorn 0.1.0, commit …)`
//!         .from_args()
//!         .app(|| async {
//!             Ok::<_, std::io::Error>(tower::service_fn(|_req| async {
//!                 Ok::<_, std::convert::Infallible>(http::Response::new("hello".to_string()))
//!             }))
//!         })
//!         .run()
//! }
//! ```
//!
//! `oxicorn::Program::new(name, version)` names it otherwise (a version from a build script,
//! say).
//!
//! The factory is registered before the arbiter starts and inherited by every worker through
//! fork; only workers call it. A worker is ready (counted, sent traffic during a reload) only
//! once its factory has returned; a factory that fails is that worker's boot failure, logged
//! with its cause chain, and the arbiter's back-off and halt apply.
//!
//! A graceful stop (TERM, a HUP reload, TTOU, an upgrade) lets requests in flight finish
//! within `--graceful-timeout`; a response that never ends on its own (server-sent events, a
//! WebSocket) learns of the stop through [`crate::Shutdown`] and ends itself, or is cut at the
//! deadline. `ps` shows the program's processes under its name (`myapp: worker 1 [gen 1]`),
//! or under `--proc-name` ([`crate::proctitle`]; gunicorn's `-n`/`--name` too, unless the
//! program has flags of its own by those names: its own flags win).
//!
//! USR2 upgrades such a program in place as it does the `oxicorn` command (the same PID, the
//! program at the path it was started from re-executed, rolled back if it cannot serve): the
//! program answers the pre-exec probe from its `--check-config` (or, with a configuration
//! built in code, from the probe's environment alone) and takes the handover in [`Server::run`].
//!
//! This module owns the program-facing entry: the command line (oxicorn's server and HTTP
//! options, plus the program's own), the config source, the checks that must happen before
//! the arbiter starts (no threads yet, not root by accident), and the exit code. It runs in
//! the arbiter process and never calls the factory.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::arbiter::upgrade;
use crate::config::{Config, ConfigError, ConfigSource, ServeArgs, cli};
use crate::exit;
use crate::program::{self, Program};
use crate::service::http::app::{AppBody, AppFactory, Application, BoxError, factory};

/// Where the configuration comes from, at start and on every HUP.
enum Source {
    /// The command line (and the config file it names), re-read on HUP.
    Args(ServeArgs),
    /// Built by the program; re-run on HUP.
    Code(ConfigSource),
}

/// A server for one application (module docs).
pub struct Server {
    source: Source,
    factory: Option<AppFactory>,
    /// Who runs: named in `--version`, error messages and the arbiter's log lines.
    program: Program,
}

impl Server {
    /// Reads oxicorn's options (server options and the app's HTTP options, `--help` lists
    /// them) from the command line. A malformed command line prints clap's message and exits
    /// (2; 0 for `--help` and `--version`).
    ///
    /// The program is known by its executable's name only: its `--version` names the oxicorn
    /// that serves it. `oxicorn::program!().from_args()` ([`Program::from_args`]) gives it
    /// its own name and version.
    pub fn from_args() -> Server {
        Program::from_argv0().from_args()
    }

    /// As [`Server::from_args`], with the program's own flags (any `clap::Args`) beside
    /// oxicorn's; returns them parsed. Where the program's flags take one of oxicorn's short
    /// flags or aliases (`-n`, `--name`: gunicorn's spellings of `--proc-name`), the
    /// program's win; a long flag of oxicorn's (`--workers`, `--proc-name`) cannot be
    /// defined again (clap refuses two arguments with one flag).
    pub fn from_args_with<A: clap::Args + clap::FromArgMatches>() -> (Server, A) {
        Program::from_argv0().from_args_with()
    }

    /// As [`Server::from_args_with`], from `argv` (the program name first).
    ///
    /// # Errors
    /// clap's error for a malformed command line or `--help`.
    pub fn try_from_args_with<A, I, T>(argv: I) -> Result<(Server, A), clap::Error>
    where
        A: clap::Args + clap::FromArgMatches,
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let mut program = Program::from_argv0();
        if let Some(name) = argv
            .first()
            .and_then(|p| std::path::Path::new(p).file_name())
        {
            program = program.renamed(name.to_string_lossy().into_owned());
        }
        program.try_from_args_with(argv)
    }

    /// Takes the configuration from `source` instead of the command line: called now and on
    /// every HUP (in the arbiter: it must not start threads or a runtime). Its services
    /// should include one of kind `app` ([`crate::config::ServiceConfig::App`]).
    ///
    /// The command line is then not read at all: `--help`, `--check-config` and unknown
    /// flags are ignored and the server starts. Parse your own flags first (with clap) if
    /// the program takes any.
    ///
    /// There is no `Config` builder: write the settings as config-file TOML (the keys of
    /// `--print-config`) and merge them as the command line would, with `embeds_app` set so
    /// that the default service is the app (without it, a file with no `[[service]]` table
    /// runs the static file server):
    ///
    /// ```no_run
    /// use oxicorn::config::{cli::ServeArgs, file::FileConfig, Config, ConfigError};
    ///
    /// fn config() -> Result<Config, ConfigError> {
    ///     let toml = "bind = [\"127.0.0.1:8000\"]\nworkers = 2\n";
    ///     let file = FileConfig::parse(toml).map_err(|problems| ConfigError::Invalid {
    ///         key: "config".into(),
    ///         message: problems.join("; "),
    ///     })?;
    ///     Config::merge(&ServeArgs { embeds_app: true, ..ServeArgs::default() }, &file)
    /// }
    ///
    /// fn main() -> std::process::ExitCode {
    ///     oxicorn::program!()
    ///         .from_config(config)
    ///         .app(|| async {
    ///             Ok::<_, std::io::Error>(tower::service_fn(|_req: oxicorn::AppRequest| async {
    ///                 Ok::<_, std::convert::Infallible>(http::Response::new("hello".to_string()))
    ///             }))
    ///         })
    ///         .run()
    /// }
    /// ```
    pub fn from_config(source: impl FnMut() -> Result<Config, ConfigError> + 'static) -> Server {
        Program::from_argv0().from_config(source)
    }

    /// The application: `factory` is called once in each worker, after the fork, and may be
    /// async (its future runs on the worker's runtime and need not be `Send`). Its error is
    /// the worker's boot failure.
    pub fn app<F, Fut, S, B, E>(mut self, factory: F) -> Server
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + 'static,
        E: Into<BoxError>,
        S: Application<B>,
        B: AppBody,
    {
        self.factory = Some(AppFactory::new(factory));
        self
    }

    /// Runs the server until it stops; returns the process exit code ([`crate::exit`]).
    /// Errors before the arbiter starts (a bad configuration, threads already running) are
    /// printed to stderr with their causes.
    pub fn run(self) -> ExitCode {
        let program = self.program.name().to_string();
        match self.try_run() {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(err) => {
                eprintln!("{program}: {err}");
                ExitCode::from(exit::CONFIG_ERROR as u8)
            }
        }
    }

    fn try_run(self) -> Result<i32, String> {
        // FACTS.md §2.1: fork copies only the calling thread; another thread's locks would be
        // held forever in every worker.
        let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
        if threads > 1 {
            return Err(format!(
                "{threads} threads are running: call oxicorn's run() before starting any runtime \
                 or thread (remove #[tokio::main]; open pools in the app factory, which runs in \
                 each worker)"
            ));
        }
        let factory = self
            .factory
            .ok_or("no application: call .app(factory) before .run()")?;
        // From here on the arbiter's lines name the program (read by `program::current`).
        program::install(self.program);
        // An image started by a USR2 upgrade (or its rollback) finds the running server's
        // state here; from now on a refusal goes back to the old image instead of exiting,
        // since this process's PID is the server's. After the thread check: reading it edits
        // the environment, which no other thread may read meanwhile.
        let handover = match upgrade::take_handover() {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(err)) => {
                return Err(format!("cannot take over from the previous image: {err}"));
            }
        };
        // The pre-upgrade check of a running server runs this program with --check-config
        // and this variable; a program whose configuration is built in code has no
        // --check-config, and must not start a second server then.
        let probed = std::env::var_os(upgrade::HANDOVER_PROBE_ENV).is_some();
        let (config, source): (Config, ConfigSource) = match self.source {
            Source::Args(args) => {
                let config = match Config::load(&args) {
                    Ok(config) => config,
                    Err(err) => {
                        return give_up(handover, "it refused the configuration", err.to_string());
                    }
                };
                if args.check_config || probed {
                    config_ok(&config);
                    return Ok(exit::SUCCESS);
                }
                if args.print_config {
                    print!("{}", config.to_toml());
                    return Ok(exit::SUCCESS);
                }
                (config, Box::new(move || Config::load(&args)))
            }
            Source::Code(mut source) => {
                let config = match source() {
                    Ok(config) => config,
                    Err(err) => {
                        return give_up(handover, "it refused the configuration", err.to_string());
                    }
                };
                if probed {
                    config_ok(&config);
                    return Ok(exit::SUCCESS);
                }
                (config, source)
            }
        };
        factory::register(factory).map_err(|_| "an application is registered already")?;
        start(config, source, handover)
    }
}

/// The ways to start a [`Server`] for a program that names itself: its `--version` prints
/// this name and version (and the oxicorn that serves it), and the arbiter's lifecycle and
/// upgrade lines name it. Each is [`Server`]'s method of the same name.
impl Program {
    /// [`Server::from_args`] for this program.
    pub fn from_args(self) -> Server {
        self.from_args_with::<NoArgs>().0
    }

    /// [`Server::from_args_with`] for this program.
    pub fn from_args_with<A: clap::Args + clap::FromArgMatches>(self) -> (Server, A) {
        self.try_from_args_with(std::env::args_os())
            .unwrap_or_else(|e| e.exit())
    }

    /// [`Server::try_from_args_with`] for this program.
    ///
    /// # Errors
    /// clap's error for a malformed command line, `--help` or `--version`.
    pub fn try_from_args_with<A, I, T>(self, argv: I) -> Result<(Server, A), clap::Error>
    where
        A: clap::Args + clap::FromArgMatches,
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        // The program's own flags win over oxicorn's short flags and aliases.
        let own = A::augment_args(clap::Command::new("own"));
        refuse_taken_flags(&cli::app_command(self.name()), &own)?;
        let mut cmd = A::augment_args(cli::giving_way_to(cli::app_command(self.name()), &own))
            .version(self.version_text());
        let m = cmd.try_get_matches_from_mut(argv)?;
        let own = A::from_arg_matches(&m).map_err(|e| e.format(&mut cmd))?;
        let server = Server {
            source: Source::Args(cli::app_args(&m)),
            factory: None,
            program: self,
        };
        Ok((server, own))
    }

    /// [`Server::from_config`] for this program.
    pub fn from_config(
        self,
        source: impl FnMut() -> Result<Config, ConfigError> + 'static,
    ) -> Server {
        Server {
            source: Source::Code(Box::new(source)),
            factory: None,
            program: self,
        }
    }
}

/// Refuses the program's own flags that reuse the name (clap's id) or the long flag of one
/// of oxicorn's: clap would check that only in debug builds, with a panic, and a release
/// build would parse such a command line in a way no one chose.
///
/// # Errors
/// clap's `ArgumentConflict` error naming the flag, printed like any command-line error.
fn refuse_taken_flags(oxicorn: &clap::Command, own: &clap::Command) -> Result<(), clap::Error> {
    for arg in own.get_arguments() {
        let clash = oxicorn.get_arguments().find(|o| {
            o.get_id() == arg.get_id() || arg.get_long().is_some_and(|l| o.get_long() == Some(l))
        });
        if let Some(o) = clash {
            let theirs = o.get_long().unwrap_or(o.get_id().as_str());
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "the program's own flag `{}` takes the name of oxicorn's `--{theirs}`: \
                     rename it (oxicorn's long flags and argument names cannot be defined again)\n",
                    arg.get_id()
                ),
            ));
        }
    }
    Ok(())
}

/// `--check-config`'s answer (also to the pre-upgrade probe, see [`upgrade`]): "configuration
/// ok", the configuration's summary, and the line the probe waits for.
pub fn config_ok(config: &Config) {
    println!("configuration ok");
    print!("{}", config.summary());
    upgrade::announce_handover();
}

/// Starts the arbiter on a loaded configuration, or resumes the running server's state on a
/// USR2 upgrade: the checks and files that must come first ([`check_identity`],
/// [`prepare_files`]), the error log, then [`crate::arbiter::run`] or
/// [`crate::arbiter::resume`]. Shared by the `oxicorn` command and [`Server`].
///
/// On an upgrade the old image did the files already (listeners, logs and umask are
/// inherited), and a refusal here goes back to it ([`roll_back`]) rather than leaving nobody
/// serving. Returns the exit code, or the message to print (the caller exits 1); an
/// arbiter's error is also written to the error log when that is a file.
pub fn start(
    config: Config,
    source: ConfigSource,
    handover: Option<upgrade::Handover>,
) -> Result<i32, String> {
    if let Err(err) = check_identity(&config) {
        return give_up(handover, "", err);
    }
    if handover.is_none() {
        prepare_files(&config)?;
    }
    let log = match crate::log::init(config.log_level.filter(), config.error_logfile.as_deref()) {
        Ok(log) => log,
        // Its message names the file already.
        Err(err) => return give_up(handover, "", err.to_string()),
    };
    let log: &'static _ = Box::leak(Box::new(log));
    let to_file = config.error_logfile.is_some();
    match handover {
        Some(h) => crate::arbiter::resume(config, source, log, h),
        None => crate::arbiter::run(config, source, log),
    }
    .map_err(|err| {
        if to_file {
            tracing::error!("{err}");
        }
        err.to_string()
    })
}

/// A refusal before the arbiter runs: with no handover, `err` is the error to print; during
/// an upgrade, back to the old image ([`roll_back`]) with `what: err` as the reason (a plain
/// start keeps the plain error).
fn give_up(handover: Option<upgrade::Handover>, what: &str, err: String) -> Result<i32, String> {
    let Some(h) = handover else {
        return Err(err);
    };
    let reason = if what.is_empty() {
        err
    } else {
        format!("{what}: {err}")
    };
    Err(roll_back(h, reason))
}

/// Goes back to the image that executed this one, which keeps serving and logs `reason` as
/// why the upgrade was refused (see [`upgrade`]). Returns only if it cannot: the message to
/// print before exiting 1.
pub fn roll_back(handover: upgrade::Handover, reason: String) -> String {
    let failed = handover.rollback(reason.clone());
    format!("{reason}; cannot go back to the previous image: {failed}")
}

/// Workers run as root only when asked: started as root, `--user` names who they run as, or
/// `--allow-root` says root is meant (issue 11; nginx runs its workers as `nobody`). Without
/// root, `--user` can only name ourselves. Shared by the `oxicorn` binary and [`Server`].
///
/// # Errors
/// The refusal, with the way out, as one line.
pub fn check_identity(config: &Config) -> Result<(), String> {
    let euid = nix::unistd::geteuid();
    let user = config.run_as.as_ref().and_then(|r| r.user.as_ref());
    if euid.is_root() {
        if user.is_none() && !config.allow_root {
            return Err(
                "refusing to run workers as root: give --user USER (for example --user \
                 nobody) to run them as that user, or --allow-root if root is really meant"
                    .into(),
            );
        }
    } else if let Some((uid, name)) = user
        && *uid != euid.as_raw()
    {
        return Err(format!(
            "--user {name} needs the server to be started as root"
        ));
    }
    Ok(())
}

/// What a server sets up before its first fork: the `--umask` of every process, and with
/// `--user` the log files the workers and the hub write and reopen on USR1 (the error log,
/// each service's access log), created if missing and given to that user so they stay
/// usable after the switch (gunicorn does the same). Shared by the `oxicorn` binary and
/// [`Server`].
///
/// # Errors
/// A log file that cannot be created or given to the user, named.
pub fn prepare_files(config: &Config) -> Result<(), String> {
    if let Some(mask) = config.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    let Some(run_as) = &config.run_as else {
        return Ok(());
    };
    let uid = run_as
        .user
        .as_ref()
        .map(|(u, _)| nix::unistd::Uid::from_raw(*u));
    let gid = Some(nix::unistd::Gid::from_raw(run_as.gid));
    let access_logs = config
        .services
        .iter()
        .filter_map(|s| s.service.access_logfile());
    for path in config
        .error_logfile
        .as_deref()
        .into_iter()
        .chain(access_logs)
    {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
        nix::unistd::chown(path, uid, gid)
            .map_err(|e| format!("cannot give log file {} to --user: {e}", path.display()))?;
    }
    Ok(())
}

/// No flags of the program's own.
#[derive(Debug, Clone, Copy)]
struct NoArgs;

impl clap::FromArgMatches for NoArgs {
    fn from_arg_matches(_: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(NoArgs)
    }

    fn update_from_arg_matches(&mut self, _: &clap::ArgMatches) -> Result<(), clap::Error> {
        Ok(())
    }
}

impl clap::Args for NoArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Own {
        greeting: String,
    }

    impl clap::FromArgMatches for Own {
        fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
            Ok(Own {
                greeting: m.get_one::<String>("greeting").cloned().unwrap_or_default(),
            })
        }
        fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
            *self = Own::from_arg_matches(m)?;
            Ok(())
        }
    }

    impl clap::Args for Own {
        fn augment_args(cmd: clap::Command) -> clap::Command {
            cmd.arg(
                clap::Arg::new("greeting")
                    .long("greeting")
                    .default_value("hello"),
            )
        }
        fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
            Self::augment_args(cmd)
        }
    }

    /// A program flag that takes oxicorn's `workers`: its name (clap id), or its long flag.
    struct Taking<const CLASH_BY_ID: bool>;

    impl<const CLASH_BY_ID: bool> clap::FromArgMatches for Taking<CLASH_BY_ID> {
        fn from_arg_matches(_: &clap::ArgMatches) -> Result<Self, clap::Error> {
            Ok(Taking)
        }
        fn update_from_arg_matches(&mut self, _: &clap::ArgMatches) -> Result<(), clap::Error> {
            Ok(())
        }
    }

    impl<const CLASH_BY_ID: bool> clap::Args for Taking<CLASH_BY_ID> {
        fn augment_args(cmd: clap::Command) -> clap::Command {
            let arg = if CLASH_BY_ID {
                clap::Arg::new("workers").long("my-workers")
            } else {
                clap::Arg::new("threads").long("workers")
            };
            cmd.arg(arg)
        }
        fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
            Self::augment_args(cmd)
        }
    }

    #[test]
    fn a_program_flag_taking_oxicorns_name_is_a_clear_error_in_every_build() {
        for err in [
            Server::try_from_args_with::<Taking<true>, _, _>(["myapp"]).err(),
            Server::try_from_args_with::<Taking<false>, _, _>(["myapp", "--workers", "2"]).err(),
        ] {
            let err = err.expect("a clash is refused");
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
            assert!(err.to_string().contains("oxicorn's `--workers`"), "{err}");
        }
    }

    #[test]
    fn the_programs_flags_sit_beside_oxicorns() {
        let (server, own) = Server::try_from_args_with::<Own, _, _>([
            "myapp",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "3",
            "--greeting",
            "hi",
            "--limit-request-body",
            "1024",
            "--forwarded-allow-ips",
            "*",
        ])
        .unwrap();
        assert_eq!(own.greeting, "hi");
        let Source::Args(args) = server.source else {
            panic!("from the command line")
        };
        let config = Config::load(&args).unwrap();
        assert_eq!(config.workers, 3);
        let crate::config::ServiceConfig::App(app) = &config.services[0].service else {
            panic!("an app service: {:?}", config.services[0].service)
        };
        assert_eq!(app.http.limit_request_body, 1024);
        assert_eq!(
            app.http.forwarded_allow_ips,
            crate::service::http::app::ForwardedAllowIps::All
        );
    }

    #[test]
    fn a_bad_value_is_a_config_error_and_an_unknown_flag_a_usage_error() {
        let (server, _) = Server::try_from_args_with::<NoArgs, _, _>([
            "myapp",
            "--forwarded-allow-ips",
            "not-an-ip",
        ])
        .unwrap();
        let Source::Args(args) = server.source else {
            panic!()
        };
        let err = Config::load(&args).unwrap_err().to_string();
        assert!(err.contains("not-an-ip"), "{err}");
        assert!(Server::try_from_args_with::<NoArgs, _, _>(["myapp", "--nope"]).is_err());
    }

    /// A program's own `-n`/`--name` (clap's derive gives `#[arg(short, long)] name` both).
    #[derive(Debug)]
    struct Named(Option<String>);

    impl clap::FromArgMatches for Named {
        fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
            Ok(Named(m.get_one::<String>("name").cloned()))
        }
        fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
            *self = Named::from_arg_matches(m)?;
            Ok(())
        }
    }

    impl clap::Args for Named {
        fn augment_args(cmd: clap::Command) -> clap::Command {
            cmd.arg(clap::Arg::new("name").long("name").short('n'))
        }
        fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
            Self::augment_args(cmd)
        }
    }

    /// `-n` and `--name` (gunicorn's spellings of `--proc-name`) came after programs had
    /// flags of their own: one with `-n`/`--name` stopped at start in a debug build (clap:
    /// "Short option names must be unique for each argument") and, in a release build, had its
    /// value taken by whichever clap matched first. The program's flags win over oxicorn's
    /// short flags and aliases; `--proc-name` still names the processes.
    #[test]
    fn a_programs_own_short_flags_and_aliases_win_over_oxicorns() {
        let (server, own) =
            Server::try_from_args_with::<Named, _, _>(["myapp", "-n", "x", "--proc-name", "web"])
                .unwrap();
        assert_eq!(own.0.as_deref(), Some("x"));
        let Source::Args(args) = server.source else {
            panic!("from the command line")
        };
        assert_eq!(
            Config::load(&args).unwrap().proc_name.as_deref(),
            Some("web")
        );
        let (server, own) =
            Server::try_from_args_with::<Named, _, _>(["myapp", "--name", "y"]).unwrap();
        assert_eq!(own.0.as_deref(), Some("y"));
        let Source::Args(args) = server.source else {
            panic!("from the command line")
        };
        assert_eq!(Config::load(&args).unwrap().proc_name, None);
        // Without flags of its own, the program speaks gunicorn's spellings.
        let (server, _) = Server::try_from_args_with::<NoArgs, _, _>(["myapp", "-n", "z"]).unwrap();
        let Source::Args(args) = server.source else {
            panic!("from the command line")
        };
        assert_eq!(Config::load(&args).unwrap().proc_name.as_deref(), Some("z"));
    }
}
