//! What the arbiter reads of the configuration's shape (the binds of every service, their
//! names, whether one needs the bus, where to point a browser), one helper each, so the loop,
//! the reload and the child table need not know how services are laid out.

use super::listeners::{self, Listener};
use crate::config::Config;
use crate::net::BindAddr;

/// Every address to listen on, over all services.
pub(super) fn binds(config: &Config) -> impl Iterator<Item = &BindAddr> {
    config.binds()
}

/// The services' names, for the start line (`static`, `static, chat`).
pub(super) fn service_name(config: &Config) -> String {
    config.service_names()
}

/// `arbiter [echo 127.0.0.1:4000 unix:/run/e.sock]`: the service and where it listens, for
/// `ps`, after the program's name (`oxicorn: arbiter [...]`, [`crate::proctitle::set`]).
pub(super) fn arbiter_title(config: &Config, listeners: &[Listener]) -> String {
    let mut title = format!("arbiter [{}", service_name(config));
    for l in listeners {
        title.push(' ');
        title.push_str(&l.local);
    }
    title.push(']');
    title
}

/// Whether a service needs the bus hub.
pub(super) fn needs_bus(config: &Config) -> bool {
    config.needs_bus()
}

/// `serving /abs/path on http://127.0.0.1:8000 (4 workers)` for each static service's
/// listener: where to point a browser, as `python3 -m http.server` prints it.
pub(super) fn serving_lines(config: &Config, bound: &[Listener]) -> Vec<String> {
    let workers = config.workers;
    let plural = if workers == 1 { "" } else { "s" };
    config
        .services
        .iter()
        .filter_map(|spec| match &spec.service {
            crate::config::ServiceConfig::Static(s) => Some((spec, s)),
            _ => None,
        })
        .flat_map(|(spec, s)| {
            bound
                .iter()
                .filter(|l| spec.binds.iter().any(|a| l.serves(a)))
                .map(move |l| (s, l))
        })
        .map(|(s, l)| {
            let url = match l.kind {
                listeners::ListenerKind::Tcp => format!("http://{}", l.local),
                listeners::ListenerKind::Unix => {
                    format!("{} (HTTP over a Unix socket)", l.local)
                }
            };
            let mut line = format!(
                "serving {} on {url} ({workers} worker{plural})",
                s.root.display()
            );
            // Bound to every interface: say where a browser on another machine can reach it.
            if let Ok(addr) = l.local.parse::<std::net::SocketAddr>()
                && addr.ip().is_unspecified()
            {
                let urls: Vec<String> = interface_addresses(addr.is_ipv6())
                    .into_iter()
                    .map(|ip| format!("http://{}", std::net::SocketAddr::new(ip, addr.port())))
                    .collect();
                if !urls.is_empty() {
                    line.push_str(&format!(", reachable at {}", urls.join(", ")));
                }
            }
            line
        })
        .collect()
}

/// This machine's addresses of one family (`v6`: IPv6, else IPv4), loopback first, without
/// IPv6 link-local ones (a browser needs a zone for those). Empty when they cannot be read.
fn interface_addresses(v6: bool) -> Vec<std::net::IpAddr> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<std::net::IpAddr> = Vec::new();
    for ifa in list {
        let Some(addr) = ifa.address else { continue };
        let ip: std::net::IpAddr = if let Some(a) = addr.as_sockaddr_in() {
            std::net::IpAddr::V4(a.ip())
        } else if let Some(a) = addr.as_sockaddr_in6() {
            std::net::IpAddr::V6(a.ip())
        } else {
            continue;
        };
        let link_local =
            matches!(ip, std::net::IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80);
        if ip.is_ipv6() == v6 && !link_local && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out.sort_by_key(|ip| !ip.is_loopback());
    out
}

/// Whether a service's clients speak first, so that its TCP listeners hand a client to a
/// worker only once its first bytes are there (`TCP_DEFER_ACCEPT`,
/// [`Listener::set_deferred_accept`]): HTTP (static, a program's app). Not chat, whose server
/// speaks first (its clients would wait a second for a greeting that cannot come before the
/// accept). Not echo and quote either, though their clients speak first: those are often
/// people at a terminal, who connect and then type, and neither has a path that answers at
/// accept, so holding them in the kernel would only hide them from `ctl status` and the idle
/// timeout for a second.
fn client_speaks_first(service: &crate::config::ServiceConfig) -> bool {
    use crate::config::ServiceConfig;
    match service {
        ServiceConfig::Static(_) | ServiceConfig::App(_) => true,
        ServiceConfig::Echo | ServiceConfig::Chat { .. } | ServiceConfig::Quote { .. } => false,
    }
}

/// Sets deferred accepting on every TCP listener from the kind of the service `config` binds
/// to it ([`client_speaks_first`]); a listener no service of `config` names is left as it is.
/// The option lives on the shared socket, so this is called wherever a configuration takes
/// effect over the listeners: at start, when a new image took them over, after a reload and
/// after its rollback (a bind may have moved from one service to another). A failure only
/// costs the fast path, so it is logged, never fatal.
pub(super) fn set_deferred_accepts(config: &Config, listeners: &[Listener]) {
    for l in listeners {
        let Some(spec) = config
            .services
            .iter()
            .find(|spec| spec.binds.iter().any(|a| l.serves(a)))
        else {
            continue;
        };
        let on = client_speaks_first(&spec.service);
        if let Err(err) = l.set_deferred_accept(on) {
            tracing::warn!(cause = %err, "cannot set TCP_DEFER_ACCEPT on {}", l.local);
        }
    }
}
