//! The client's address behind trusted reverse proxies (`CLIENTAPI_TRUSTED_PROXIES`). When the
//! peer is one of them, the client is the rightmost `X-Forwarded-For` address that is not a
//! trusted proxy itself (addresses further left were written by whoever sent the request, and
//! prove nothing). Everything that needs the client's address (IP allowlists, the request log,
//! sign-in limits, the failed-key tarpit) reads the `ConnectInfo` this replaces. With no
//! trusted proxies, `X-Forwarded-For` is ignored: a client cannot choose its own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// The trusted proxies, for the middleware's state.
pub type TrustedProxies = Arc<[IpNet]>;

fn trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    proxies.iter().any(|net| net.contains(&ip))
}

/// The client behind `peer`, given the `X-Forwarded-For` values in the order received.
pub fn client_behind(proxies: &[IpNet], peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
    if !trusted(proxies, peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for.iter().flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        // An unparsable hop ends the chain of trust: the proxy that wrote it is the client.
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        if !trusted(proxies, ip) {
            return ip;
        }
    }
    peer
}

pub async fn client_address(State(proxies): State<TrustedProxies>, mut request: Request, next: Next) -> Response {
    if !proxies.is_empty()
        && let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>().copied()
    {
        let forwarded: Vec<&str> =
            request.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        let client = client_behind(&proxies, peer.ip(), &forwarded);
        if client != peer.ip() {
            request.extensions_mut().insert(ConnectInfo(SocketAddr::new(client, 0)));
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_speaks_for_the_client_and_only_from_the_right() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()];
        // Not behind a trusted proxy: the header is the client's own word, ignored.
        assert_eq!(client_behind(&proxies, ip("198.51.100.9"), &["203.0.113.7"]), ip("198.51.100.9"));
        // One proxy: the address it saw.
        assert_eq!(client_behind(&proxies, ip("127.0.0.1"), &["203.0.113.7"]), ip("203.0.113.7"));
        // A client forging a hop to the left is still seen as itself.
        assert_eq!(client_behind(&proxies, ip("10.1.2.3"), &["1.1.1.1, 203.0.113.7"]), ip("203.0.113.7"));
        // Two proxies (the inner one trusted), headers split over two lines.
        assert_eq!(client_behind(&proxies, ip("127.0.0.1"), &["203.0.113.7", "10.9.9.9"]), ip("203.0.113.7"));
        // Only proxies, or garbage: the peer.
        assert_eq!(client_behind(&proxies, ip("127.0.0.1"), &["10.0.0.5"]), ip("127.0.0.1"));
        assert_eq!(client_behind(&proxies, ip("127.0.0.1"), &["not-an-ip"]), ip("127.0.0.1"));
        assert_eq!(client_behind(&proxies, ip("::ffff:127.0.0.1"), &["203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(client_behind(&[], ip("127.0.0.1"), &["203.0.113.7"]), ip("127.0.0.1"));
    }
}
