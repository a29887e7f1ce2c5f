//! What the arbiter reads of the configuration's shape (where it comes from, the binds, the
//! service), one helper each, so that a config source and a list of services can replace
//! them here without touching the loop, the reload or the child table.

use super::listeners::{self, Listener};
use crate::config::{Cli, Config, ConfigError};
use crate::net::BindAddr;

/// The configuration as it is now (at start and on every HUP): the flags re-merged with the
/// config file.
pub(super) fn load(cli: &Cli) -> Result<Config, ConfigError> {
    Config::load(cli)
}

/// Every address to listen on.
pub(super) fn binds(config: &Config) -> &[BindAddr] {
    &config.binds
}

/// The service's name, for the start line.
pub(super) fn service_name(config: &Config) -> &'static str {
    config.service.name()
}

/// `oxicorn: arbiter [echo 127.0.0.1:4000 unix:/run/e.sock]`: the service and where it
/// listens, for `ps`.
pub(super) fn arbiter_title(config: &Config, listeners: &[Listener]) -> String {
    let mut title = format!("oxicorn: arbiter [{}", service_name(config));
    for l in listeners {
        title.push(' ');
        title.push_str(&l.local);
    }
    title.push(']');
    title
}

/// Whether the service needs the bus hub.
pub(super) fn needs_bus(config: &Config) -> bool {
    config.service.needs_bus()
}

/// `serving /abs/path on http://127.0.0.1:8000 (4 workers)` for the static service: where to
/// point a browser, as `python3 -m http.server` prints it.
pub(super) fn serving_lines(config: &Config, bound: &[Listener]) -> Vec<String> {
    let crate::config::ServiceConfig::Static(s) = &config.service else {
        return Vec::new();
    };
    let workers = config.workers;
    let plural = if workers == 1 { "" } else { "s" };
    bound
        .iter()
        .map(|l| {
            let url = match l.kind {
                listeners::ListenerKind::Tcp => format!("http://{}", l.local),
                listeners::ListenerKind::Unix => {
                    format!("{} (HTTP over a Unix socket)", l.local)
                }
            };
            format!(
                "serving {} on {url} ({workers} worker{plural})",
                s.root.display()
            )
        })
        .collect()
}
