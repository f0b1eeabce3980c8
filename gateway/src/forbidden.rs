//! Addresses the gateway never dials: its own listeners and every control-plane (and Raft)
//! listener it knows. The control plane already refuses instance endpoints off a node's
//! registered address and ports; this is the second wall, so that a route that names a
//! control replica, say, can never carry public traffic to it.

use std::collections::HashSet;
use std::net::SocketAddr;

/// The listeners the gateway knows of.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Forbidden {
    exact: HashSet<SocketAddr>,
    /// Ports of listeners bound on every address (0.0.0.0 or ::): forbidden on any address.
    any_address: HashSet<u16>,
}

impl Forbidden {
    /// Adds a listener's address.
    pub fn add(&mut self, addr: SocketAddr) {
        let addr = canonical(addr);
        if addr.ip().is_unspecified() {
            self.any_address.insert(addr.port());
        } else {
            self.exact.insert(addr);
        }
    }

    /// Adds the listener behind `url` (`http://IP:PORT/...`). A URL that names a host rather
    /// than an address adds nothing: routes are addresses, never names.
    pub fn add_url(&mut self, url: &str) {
        if let Some(addr) = client::listener_of(url) {
            self.add(addr);
        }
    }

    /// Whether `addr` is one of the listeners.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.exact.contains(&canonical(*addr)) || self.any_address.contains(&addr.port())
    }
}

/// `[::ffff:10.0.0.5]:80` is `10.0.0.5:80`: one listener, whichever way it is written.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_by_url_and_by_wildcard_are_forbidden() {
        let mut f = Forbidden::default();
        f.add_url("http://127.0.0.1:4100");
        f.add_url("http://[::1]:4200/v1");
        f.add_url("https://10.0.0.9");
        f.add_url("http://control.example:4300");
        f.add("0.0.0.0:8080".parse().expect("addr"));
        for yes in [
            "127.0.0.1:4100",
            "[::ffff:127.0.0.1]:4100",
            "[::1]:4200",
            "10.0.0.9:443",
            "10.1.2.3:8080",
            "127.0.0.1:8080",
        ] {
            assert!(f.contains(&yes.parse().expect("addr")), "{yes}");
        }
        for no in ["127.0.0.1:4101", "127.0.0.2:4100", "10.0.0.9:80", "127.0.0.1:4300"] {
            assert!(!f.contains(&no.parse().expect("addr")), "{no}");
        }
    }
}
