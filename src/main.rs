//! The `oxicorn` command: the command line → [`Config`] → the arbiter → exit code.

use std::process::ExitCode;

use anyhow::Context;
use oxicorn::arbiter::upgrade::{self, Handover};
use oxicorn::config::{Config, Invocation, ServeArgs, cli};
use oxicorn::{exit, server};

fn main() -> ExitCode {
    // An image started by a USR2 upgrade (or its rollback) finds the running server's state
    // here. From now on, while it has one, any refusal goes back to the old image instead of
    // exiting: exiting would stop the server, whose PID this process is.
    let handover = match upgrade::take_handover() {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(err)) => {
            eprintln!("oxicorn: cannot take over from the previous image: {err}");
            return ExitCode::from(exit::CONFIG_ERROR as u8);
        }
    };
    let invocation = match cli::parse_from(std::env::args_os()) {
        Ok(i) => i,
        Err(err) => match handover {
            Some(h) => give_up(
                h,
                format!("it refused the command line: {}", first_line(&err)),
            ),
            // Usage errors print clap's message and exit 2; --help and --version exit 0.
            None => err.exit(),
        },
    };
    match run(invocation, handover) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("oxicorn: {err:#}");
            ExitCode::from(exit::CONFIG_ERROR as u8)
        }
    }
}

/// Goes back to the image that executed this one ([`server::roll_back`]); exits only if it
/// cannot.
fn give_up(handover: Handover, reason: String) -> ! {
    eprintln!("oxicorn: {}", server::roll_back(handover, reason));
    std::process::exit(exit::CONFIG_ERROR)
}

fn first_line(err: &impl std::fmt::Display) -> String {
    let text = err.to_string();
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn run(invocation: Invocation, handover: Option<Handover>) -> anyhow::Result<i32> {
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
    let config = match Config::load(&args) {
        Ok(config) => config,
        Err(err) => match handover {
            Some(h) => give_up(h, format!("it refused the configuration: {err}")),
            None => return Err(err.into()),
        },
    };
    if args.check_config {
        server::config_ok(&config);
        return Ok(exit::SUCCESS);
    }
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(exit::SUCCESS);
    }
    let config = terminal_defaults(config);
    let source = Box::new(move || Config::load(&args).map(terminal_defaults));
    server::start(config, source, handover).map_err(anyhow::Error::msg)
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
