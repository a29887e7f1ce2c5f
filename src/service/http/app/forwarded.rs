//! Who the client is: the socket peer, or what trusted proxies say in `Forwarded`,
//! `X-Forwarded-For` and `X-Forwarded-Proto`.
//!
//! gunicorn's rule (`forwarded_allow_ips`, default `127.0.0.1,::1`, `*` = every peer): the
//! forwarding headers are believed only when the peer is in the list; a Unix-socket peer is
//! always believed, since only a local proxy can reach it. When believed, the hops are read from
//! the right (the nearest proxy) leftwards, skipping addresses that are themselves trusted,
//! and the first untrusted one is the client (nginx's `real_ip_recursive`): a client cannot
//! pose as someone else by sending its own `X-Forwarded-For`, because the left part of the
//! list is only reached through trusted hops. With `*` that walk ends at the leftmost hop.
//! The client's scheme is the one its own hop names, else the nearest one named by a trusted
//! hop to its right (a TLS-terminating edge proxy): never one from the untrusted left part.
//!
//! `Forwarded` (RFC 7239) and `X-Forwarded-For` / `X-Forwarded-Proto` are two vocabularies,
//! and a proxy usually appends to one of them and passes the other through as the client sent
//! it (nginx's `$proxy_add_x_forwarded_for` leaves a client's `Forwarded` alone). So when a
//! request carries both and they name different clients (address or scheme), neither is
//! believed and the client is the peer, as gunicorn refuses contradictory scheme headers;
//! when they agree (a proxy that sets both), that client is taken.
//!
//! Pure code: parses strings, opens nothing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::uri::Scheme;
use http::{HeaderMap, HeaderName};

use crate::net::Peer;

/// The peers allowed to set the forwarding headers (`--forwarded-allow-ips`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardedAllowIps {
    /// `*`: every peer.
    All,
    /// Addresses and networks (`10.0.0.0/8`, `::1`), compared after unmapping IPv4-mapped
    /// IPv6 addresses.
    List(Vec<IpNet>),
}

impl Default for ForwardedAllowIps {
    /// `127.0.0.1,::1`, gunicorn's default.
    fn default() -> Self {
        ForwardedAllowIps::List(vec![
            IpNet::host(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            IpNet::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ])
    }
}

impl ForwardedAllowIps {
    /// Whether a peer at `ip` may set the forwarding headers.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        match self {
            ForwardedAllowIps::All => true,
            ForwardedAllowIps::List(nets) => {
                let ip = ip.to_canonical();
                nets.iter().any(|n| n.contains(ip))
            }
        }
    }
}

/// Why a `--forwarded-allow-ips` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not an IP address or network: expected `*` or a list such as 127.0.0.1,10.0.0.0/8,::1"
)]
pub struct AllowIpsError(pub String);

impl FromStr for ForwardedAllowIps {
    type Err = AllowIpsError;

    /// `*`, or a comma-separated list of addresses and `ADDR/PREFIX` networks (gunicorn's
    /// syntax; spaces around items are ignored; an empty string trusts nobody).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        if items.contains(&"*") {
            return Ok(ForwardedAllowIps::All);
        }
        items
            .into_iter()
            .map(|i| i.parse().map_err(|_| AllowIpsError(i.to_string())))
            .collect::<Result<_, _>>()
            .map(ForwardedAllowIps::List)
    }
}

impl fmt::Display for ForwardedAllowIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardedAllowIps::All => f.write_str("*"),
            ForwardedAllowIps::List(nets) => {
                for (i, n) in nets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{n}")?;
                }
                Ok(())
            }
        }
    }
}

/// An address with a prefix length: `10.0.0.0/8`, or one host (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// One address.
    pub fn host(addr: IpAddr) -> IpNet {
        let addr = addr.to_canonical();
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpNet { addr, prefix }
    }

    /// Whether `ip` (already canonical) is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), 32, self.prefix)
                    == masked(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| ())?;
        let host = IpNet::host(addr);
        let Some(prefix) = prefix else {
            return Ok(host);
        };
        let prefix: u8 = prefix.parse().map_err(|_| ())?;
        // A mapped v6 network written as ::ffff:a.b.c.d/120 becomes the v4 /24.
        let prefix = match (addr, host.addr) {
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix.checked_sub(96).ok_or(())?,
            _ => prefix,
        };
        (prefix <= host.prefix)
            .then_some(IpNet {
                addr: host.addr,
                prefix,
            })
            .ok_or(())
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// The client as the application should see it: a request extension on every request (beside
/// the socket's [`Peer`], which is there too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or the one trusted proxies forwarded. `None` for a
    /// Unix-socket peer with no forwarded address.
    pub ip: Option<IpAddr>,
    /// The scheme the client used: `http`, or what a trusted proxy forwarded (`https` when it
    /// terminated TLS).
    pub scheme: Scheme,
    /// Whether `ip` or `scheme` came from forwarding headers.
    pub forwarded: bool,
}

impl Client {
    /// Resolves the client of one request from its socket peer and headers (module docs).
    pub fn resolve(peer: &Peer, headers: &HeaderMap, allow: &ForwardedAllowIps) -> Client {
        Client::forwarded(peer, headers, allow).unwrap_or_else(|| Client::direct(peer))
    }

    /// The client when no proxy speaks for it: the socket's peer, over `http`.
    pub(crate) fn direct(peer: &Peer) -> Client {
        Client {
            ip: peer_ip(peer),
            scheme: Scheme::HTTP,
            forwarded: false,
        }
    }

    /// [`Client::resolve`] when the headers may change the answer: `None` when the request
    /// names no forwarding header or its peer is not a trusted proxy (the client is then
    /// [`Client::direct`]), without a hashed header lookup.
    pub(crate) fn forwarded(
        peer: &Peer,
        headers: &HeaderMap,
        allow: &ForwardedAllowIps,
    ) -> Option<Client> {
        if !names_a_forwarding_header(headers) {
            return None;
        }
        Client::forwarded_by(peer, headers, allow)
    }

    /// [`Client::forwarded`] for a head known to name a forwarding header
    /// ([`is_forwarding_header`], looked for in the request path's one pass over the fields):
    /// `None` when its peer is not a trusted proxy. Given a head that names none, the answer
    /// is the same, found the slower way.
    pub(crate) fn forwarded_by(
        peer: &Peer,
        headers: &HeaderMap,
        allow: &ForwardedAllowIps,
    ) -> Option<Client> {
        let peer_ip = peer_ip(peer);
        if peer_ip.is_some_and(|ip| !allow.trusts(ip)) {
            return None;
        }
        let direct = || Client::direct(peer);
        let (forwarded, x_forwarded) = hops(headers);
        let walk = |hops: &[Hop]| walk(hops, peer_ip, allow);
        Some(match (forwarded.is_empty(), x_forwarded.is_empty()) {
            (true, true) => direct(),
            (false, true) => walk(&forwarded),
            (true, false) => walk(&x_forwarded),
            (false, false) => {
                // One of the two is what the client sent through a proxy that only maintains
                // the other: believe them only if they agree (module docs).
                let (a, b) = (walk(&forwarded), walk(&x_forwarded));
                if a == b { a } else { direct() }
            }
        })
    }
}

/// The peer's address as the client's (`None` for a Unix socket), v4-mapped v6 as v4.
fn peer_ip(peer: &Peer) -> Option<IpAddr> {
    match peer {
        Peer::Tcp(a) => Some(a.ip().to_canonical()),
        Peer::Unix => None,
    }
}

/// The client named by `hops` (not empty), coming from a trusted peer at `peer_ip`: the walk
/// from the nearest hop leftwards described in the module docs.
fn walk(hops: &[Hop], peer_ip: Option<IpAddr>, allow: &ForwardedAllowIps) -> Client {
    // From the nearest proxy leftwards; `at` is the hop that names the client, `trusted` the
    // first hop written by a trusted proxy (everything from it rightwards).
    let mut ip = peer_ip;
    let mut at = None;
    let mut trusted = hops.len() - 1;
    for (i, hop) in hops.iter().enumerate().rev() {
        trusted = i;
        let Some(addr) = hop.addr else { break };
        ip = Some(addr);
        at = Some(i);
        if !allow.trusts(addr) {
            break;
        }
    }
    // The client's own hop's scheme, else the nearest one to its right; hops left of
    // `trusted` were written by the client (or beyond it) and are never read.
    let scheme = at
        .and_then(|i| hops[i].proto.clone())
        .or_else(|| hops[trusted..].iter().rev().find_map(|h| h.proto.clone()))
        .unwrap_or(Scheme::HTTP);
    Client {
        forwarded: at.is_some() || scheme != Scheme::HTTP,
        ip,
        scheme,
    }
}

/// One proxy hop: the address it received the request from and the scheme it was received on.
#[derive(Debug, Default, Clone, PartialEq)]
struct Hop {
    addr: Option<IpAddr>,
    proto: Option<Scheme>,
}

/// `Forwarded`, `X-Forwarded-For` and `X-Forwarded-Proto`, the headers [`hops`] reads.
const FORWARDED: HeaderName = http::header::FORWARDED;
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether `headers` has any of the forwarding headers: most requests have none, and one walk
/// over the names (a client's few, compared by their kind first) costs less than the three
/// hashed lookups [`hops`] makes (perf, 2026-11-30: resolving was ~0.9% of a hello-world
/// worker's time).
fn names_a_forwarding_header(headers: &HeaderMap) -> bool {
    headers.keys().any(is_forwarding_header)
}

/// Whether `name` is `Forwarded`, `X-Forwarded-For` or `X-Forwarded-Proto`: a field that may
/// name another client than the peer.
pub(crate) fn is_forwarding_header(name: &HeaderName) -> bool {
    *name == FORWARDED || *name == X_FORWARDED_FOR || *name == X_FORWARDED_PROTO
}

/// The hops in the order the proxies appended them (leftmost = farthest), from `Forwarded`
/// (RFC 7239) and from `X-Forwarded-For` with `X-Forwarded-Proto` values lined up from the
/// right (one value applies to the last hop), in that order; either may be empty.
fn hops(headers: &HeaderMap) -> (Vec<Hop>, Vec<Hop>) {
    // Looked up by `HeaderName` constants: a `&str` name is parsed and classified on every
    // lookup (three per request, ~30 ns of a hello-world's ~2 us in user space; perf).
    let values = |name: &HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let forwarded = values(&FORWARDED)
        .iter()
        .map(|e| forwarded_element(e))
        .collect();
    let mut hops: Vec<Hop> = values(&X_FORWARDED_FOR)
        .iter()
        .map(|a| Hop {
            addr: node_addr(a),
            proto: None,
        })
        .collect();
    let protos = values(&X_FORWARDED_PROTO);
    if hops.is_empty() && !protos.is_empty() {
        hops.push(Hop::default());
    }
    for (hop, proto) in hops.iter_mut().rev().zip(protos.iter().rev()) {
        hop.proto = scheme(proto);
    }
    (forwarded, hops)
}

/// One `Forwarded` element: `for=192.0.2.60;proto=https;by=…`.
fn forwarded_element(element: &str) -> Hop {
    let mut hop = Hop::default();
    for pair in element.split(';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "for" => hop.addr = node_addr(value),
            "proto" => hop.proto = scheme(value),
            _ => {}
        }
    }
    hop
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`;
/// obfuscated (`_hidden`) and `unknown` nodes are `None`.
fn node_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest
            .split(']')
            .next()?
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn scheme(s: &str) -> Option<Scheme> {
    if s.eq_ignore_ascii_case("https") {
        Some(Scheme::HTTPS)
    } else if s.eq_ignore_ascii_case("http") {
        Some(Scheme::HTTP)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> Peer {
        Peer::Tcp(s.parse().unwrap())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn parses_gunicorn_lists() {
        assert_eq!("*".parse(), Ok(ForwardedAllowIps::All));
        assert_eq!("10.0.0.1, *".parse(), Ok(ForwardedAllowIps::All));
        let l: ForwardedAllowIps = "127.0.0.1, 10.0.0.0/8,::1,fd00::/8".parse().unwrap();
        assert!(l.trusts("10.2.3.4".parse().unwrap()));
        assert!(l.trusts("::ffff:10.2.3.4".parse().unwrap()));
        assert!(l.trusts("fd12::1".parse().unwrap()));
        assert!(!l.trusts("11.0.0.1".parse().unwrap()));
        assert!(!l.trusts("fe80::1".parse().unwrap()));
        assert_eq!(l.to_string(), "127.0.0.1,10.0.0.0/8,::1,fd00::/8");
        assert_eq!("".parse(), Ok(ForwardedAllowIps::List(vec![])));
        for bad in ["10.0.0.0/33", "localhost", "1.2.3.4/x", "::/129"] {
            assert!(bad.parse::<ForwardedAllowIps>().is_err(), "{bad}");
        }
        let all_v4: ForwardedAllowIps = "0.0.0.0/0".parse().unwrap();
        assert!(all_v4.trusts("8.8.8.8".parse().unwrap()));
        assert!(!all_v4.trusts("::2".parse().unwrap()));
    }

    /// The fast path sees each of the three headers, whatever the case the client sent, and
    /// nothing else.
    #[test]
    fn the_forwarding_headers_are_found_among_others() {
        let others = [
            ("host", "x"),
            ("user-agent", "u"),
            ("x-forwarded-host", "h"),
        ];
        assert!(!names_a_forwarding_header(&headers(&others)));
        for name in ["Forwarded", "X-Forwarded-For", "x-forwarded-proto"] {
            let mut pairs = others.to_vec();
            pairs.push((name, "for=1.1.1.1"));
            assert!(names_a_forwarding_header(&headers(&pairs)), "{name}");
        }
        // Trusted, without any of them: the peer, as before.
        let c = Client::resolve(
            &peer("127.0.0.1:5000"),
            &headers(&others),
            &ForwardedAllowIps::default(),
        );
        assert_eq!(c.ip, ip("127.0.0.1"));
        assert_eq!(c.scheme, Scheme::HTTP);
        assert!(!c.forwarded);
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = Client::resolve(&peer("10.9.9.9:5000"), &h, &ForwardedAllowIps::default());
        assert_eq!(c.ip, ip("10.9.9.9"));
        assert_eq!(c.scheme, Scheme::HTTP);
        assert!(!c.forwarded);
    }

    #[test]
    fn trusted_peer_walks_from_the_right_past_trusted_hops() {
        let allow: ForwardedAllowIps = "127.0.0.1,10.0.0.0/8".parse().unwrap();
        // The client forged 6.6.6.6; the real one is 2.2.2.2, seen by the inner proxy 10.0.0.5.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 2.2.2.2"),
            ("x-forwarded-for", "10.0.0.5"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = Client::resolve(&peer("127.0.0.1:1"), &h, &allow);
        assert_eq!(c.ip, ip("2.2.2.2"));
        assert_eq!(
            c.scheme,
            Scheme::HTTPS,
            "one proto value lines up with the last hop"
        );
        assert!(c.forwarded);
        // `*` believes every hop: the leftmost one is the client.
        let c = Client::resolve(&peer("127.0.0.1:1"), &h, &ForwardedAllowIps::All);
        assert_eq!(c.ip, ip("6.6.6.6"));
    }

    #[test]
    fn forwarded_header_is_parsed_per_rfc_7239() {
        let h = headers(&[
            ("forwarded", r#"for=192.0.2.60;proto=https;by=203.0.113.43"#),
            ("forwarded", r#"For="[2001:db8:cafe::17]:4711";proto=https"#),
        ]);
        let c = Client::resolve(&peer("[::1]:9"), &h, &ForwardedAllowIps::default());
        assert_eq!(c.ip, ip("2001:db8:cafe::17"));
        assert_eq!(c.scheme, Scheme::HTTPS);
        let h = headers(&[("forwarded", "for=unknown, for=_hidden;proto=http")]);
        let c = Client::resolve(&peer("127.0.0.1:9"), &h, &ForwardedAllowIps::default());
        assert_eq!(
            c.ip,
            ip("127.0.0.1"),
            "an unknown hop stops the walk at the peer"
        );
    }

    #[test]
    fn a_scheme_from_the_untrusted_part_of_the_list_is_not_believed() {
        // The client wrote the first element (claiming https); the trusted proxy appended the
        // second, naming the client and no protocol.
        let h = headers(&[("forwarded", "for=1.1.1.1;proto=https, for=203.0.113.7")]);
        let c = Client::resolve(&peer("127.0.0.1:9"), &h, &ForwardedAllowIps::default());
        assert_eq!(c.ip, ip("203.0.113.7"));
        assert_eq!(c.scheme, Scheme::HTTP);
        // A scheme named by a trusted hop right of the client's (a TLS-terminating edge whose
        // address the inner proxy appended) is still taken.
        let allow: ForwardedAllowIps = "127.0.0.1,10.0.0.0/8".parse().unwrap();
        let h = headers(&[("forwarded", "for=203.0.113.7, for=10.0.0.2;proto=https")]);
        let c = Client::resolve(&peer("127.0.0.1:9"), &h, &allow);
        assert_eq!(c.ip, ip("203.0.113.7"));
        assert_eq!(c.scheme, Scheme::HTTPS);
    }

    #[test]
    fn forwarded_and_x_forwarded_for_that_disagree_are_both_ignored() {
        // nginx appending to X-Forwarded-For passes the client's own `Forwarded` through.
        let h = headers(&[
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "http"),
        ]);
        let c = Client::resolve(&peer("127.0.0.1:9"), &h, &ForwardedAllowIps::default());
        assert_eq!(c.ip, ip("127.0.0.1"));
        assert_eq!(c.scheme, Scheme::HTTP);
        assert!(!c.forwarded);
        // Only the scheme differs: still a contradiction.
        let h = headers(&[
            ("forwarded", "proto=https"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        let c = Client::resolve(&peer("127.0.0.1:9"), &h, &ForwardedAllowIps::default());
        assert_eq!((c.ip, c.forwarded), (ip("127.0.0.1"), false));
        // A proxy that sets both, consistently: believed.
        let h = headers(&[
            ("forwarded", "for=203.0.113.7;proto=https"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = Client::resolve(&peer("127.0.0.1:9"), &h, &ForwardedAllowIps::default());
        assert_eq!((c.ip, c.scheme), (ip("203.0.113.7"), Scheme::HTTPS));
    }

    #[test]
    fn unix_peers_are_trusted_and_ports_are_stripped() {
        let h = headers(&[("x-forwarded-for", "203.0.113.7:51000")]);
        let c = Client::resolve(&Peer::Unix, &h, &ForwardedAllowIps::List(vec![]));
        assert_eq!(c.ip, ip("203.0.113.7"));
        let c = Client::resolve(
            &Peer::Unix,
            &HeaderMap::new(),
            &ForwardedAllowIps::default(),
        );
        assert_eq!(c.ip, None);
        assert!(!c.forwarded);
    }
}
