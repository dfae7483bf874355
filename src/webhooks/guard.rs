//! No SSRF into the operator's network: customer webhook URLs may only reach public addresses
//! (unless the operator allows private ones). IP literals are checked before a request; host
//! names are resolved by [`PublicResolver`], which hands the HTTP client only public addresses,
//! so a name that resolves (or is re-pointed, DNS rebinding) to a private one is never
//! connected to. Redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` belongs to a network a public webhook has no business reaching: loopback,
/// private, shared (CGNAT), link-local (cloud metadata), unspecified, multicast, reserved.
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && is_private_v4(embedded_v4(v6)))
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Ipv4Addr {
    let s = v6.segments();
    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8)
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

/// Whether a URL's host is, on its face, private: an IP literal in a private network, or a
/// name that always means this machine.
pub fn is_private_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(v4) => is_private_v4(*v4),
        url::Host::Ipv6(v6) => is_private_ip(IpAddr::V6(*v6)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// Resolves names with the system resolver and keeps only public addresses (all of them when
/// private ones are allowed).
#[derive(Debug, Clone, Copy)]
pub struct PublicResolver {
    pub allow_private: bool,
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> =
                addrs.into_iter().filter(|a| allow_private || !is_private_ip(a.ip())).collect();
            if usable.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_networks_are_private_and_the_internet_is_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "255.255.255.255",
        ] {
            assert!(is_private_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_private_ip(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_private_host(&url::Host::Domain("LOCALHOST.")));
        assert!(is_private_host(&url::Host::Domain("api.localhost")));
        assert!(!is_private_host(&url::Host::Domain("hooks.example.com")));
    }

    /// A name is resolved at every delivery, and one that resolves only to this machine (as a
    /// re-pointed DNS name would) is never connected to.
    #[tokio::test]
    async fn the_resolver_hands_the_client_no_private_address() {
        let name = |n: &str| n.parse::<Name>().unwrap();
        let refused = PublicResolver { allow_private: false }.resolve(name("localhost")).await;
        assert!(refused.err().unwrap().to_string().contains("no public address"));
        let allowed = PublicResolver { allow_private: true }.resolve(name("localhost")).await.unwrap();
        assert!(allowed.into_iter().all(|a| a.ip().is_loopback()));
    }
}
