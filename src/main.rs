//! The `oxicorn` command: the command line → [`Config`] → the arbiter → exit code.

use std::process::ExitCode;

use anyhow::Context;
use oxicorn::config::{Config, Invocation, ServeArgs, cli};
use oxicorn::exit;

fn main() -> ExitCode {
    let invocation = match cli::parse_from(std::env::args_os()) {
        Ok(i) => i,
        // Usage errors print clap's message and exit 2; --help and --version exit 0.
        Err(err) => err.exit(),
    };
    match run(invocation) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("oxicorn: {err:#}");
            ExitCode::from(exit::CONFIG_ERROR as u8)
        }
    }
}

fn run(invocation: Invocation) -> anyhow::Result<i32> {
    let args: ServeArgs = match invocation {
        // Client commands: no configuration, no arbiter.
        Invocation::Connect { addr, timeout } => {
            return Ok(oxicorn::connect::run(&addr, Some(timeout)));
        }
        Invocation::Completions(shell) => {
            let mut cmd = cli::command();
            clap_complete::generate(shell, &mut cmd, "oxicorn", &mut std::io::stdout());
            return Ok(exit::SUCCESS);
        }
        Invocation::Man => {
            clap_mangen::Man::new(cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
            return Ok(exit::SUCCESS);
        }
        Invocation::Serve(args) => args,
    };
    let config = Config::load(&args)?;
    if args.check_config {
        println!("configuration ok");
        print!("{}", config.summary());
        return Ok(exit::SUCCESS);
    }
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(exit::SUCCESS);
    }
    let config = terminal_defaults(config);
    check_identity(&config)?;
    if let Some(mask) = config.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    give_logs_to(&config)?;
    let log = oxicorn::log::init(config.log_level.filter(), config.error_logfile.as_deref())?;
    let log: &'static _ = Box::leak(Box::new(log));
    let to_file = config.error_logfile.is_some();
    let source = Box::new(move || Config::load(&args).map(terminal_defaults));
    match oxicorn::arbiter::run(config, source, log) {
        Ok(code) => Ok(code),
        Err(err) => {
            if to_file {
                tracing::error!("{err}");
            }
            Err(err.into())
        }
    }
}

/// In a terminal, a static service with no access log shows each request on stdout, as
/// `python3 -m http.server` does; `--access-logfile` (or the file's key) still decides when
/// given, and nothing changes when stdout is not a terminal (a service manager, a pipe).
fn terminal_defaults(mut config: Config) -> Config {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        for spec in &mut config.services {
            if let oxicorn::config::ServiceConfig::Static(s) = &mut spec.service
                && s.access_logfile.is_none()
            {
                s.access_logfile = Some("-".into());
            }
        }
    }
    config
}

/// Workers run as root only when asked: started as root, `--user` names who they run as, or
/// `--allow-root` says root is meant (issue 11; nginx runs its workers as `nobody`). Without
/// root, `--user` can only name ourselves.
fn check_identity(config: &Config) -> anyhow::Result<()> {
    let euid = nix::unistd::geteuid();
    let user = config.run_as.as_ref().and_then(|r| r.user.as_ref());
    if euid.is_root() {
        if user.is_none() && !config.allow_root {
            anyhow::bail!(
                "refusing to run workers as root: give --user USER (for example --user nobody) \
                 to run them as that user, or --allow-root if root is really meant"
            );
        }
    } else if let Some((uid, name)) = user
        && *uid != euid.as_raw()
    {
        anyhow::bail!("--user {name} needs oxicorn to be started as root");
    }
    Ok(())
}

/// With `--user`, the log files the workers and the hub write and reopen on USR1 (the error
/// log, each static service's access log) are created if missing and given to that user, so
/// they stay usable after the switch (gunicorn does the same).
fn give_logs_to(config: &Config) -> anyhow::Result<()> {
    let Some(run_as) = &config.run_as else {
        return Ok(());
    };
    let uid = run_as
        .user
        .as_ref()
        .map(|(u, _)| nix::unistd::Uid::from_raw(*u));
    let gid = Some(nix::unistd::Gid::from_raw(run_as.gid));
    let mut files: Vec<&std::path::Path> =
        config.error_logfile.iter().map(|p| p.as_path()).collect();
    for spec in &config.services {
        if let oxicorn::config::ServiceConfig::Static(s) = &spec.service
            && let Some(p) = &s.access_logfile
            && p.as_os_str() != "-"
        {
            files.push(p);
        }
    }
    for path in files {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        nix::unistd::chown(path, uid, gid)
            .with_context(|| format!("cannot give log file {} to --user", path.display()))?;
    }
    Ok(())
}
