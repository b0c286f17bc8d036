//! Node endpoints: `127.0.0.1:8081`, `http://node1:8081`, `https://node1:8081` or
//! `http://proxy/raft/` normalized to
//! one base URL each, so that the same node given two ways compares equal.

use std::fmt;
use std::str::FromStr;

use reqwest::Url;

use crate::error::ClientError;

/// Longest endpoint accepted, in bytes (a leader hint or `Location` header is server input).
pub const ENDPOINT_BYTES_MAX: usize = 2048;

/// The base URL of one node's HTTP API.
///
/// Parsed from `host:port` (the client's scheme is assumed) or from an `http://` or `https://` URL, optionally with a
/// path prefix (for a node behind a reverse proxy). Normalized: lower-case scheme and host, no
/// default port, a path that ends with `/`, no query or fragment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    base: Url,
}

/// The scheme a client speaks to every node: plain HTTP, or HTTPS when it has TLS options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http://`.
    Http,
    /// `https://`.
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl Endpoint {
    /// Parses and normalizes an endpoint; a bare `host:port` is plain HTTP.
    ///
    /// Refused: an empty string, a scheme other than `http` and `https`, user names or
    /// passwords, queries and fragments, and anything over [`ENDPOINT_BYTES_MAX`].
    pub fn parse(input: &str) -> Result<Self, ClientError> {
        Self::parse_with(input, Scheme::Http, false)
    }

    /// Parses an endpoint of a client that speaks `scheme`: a bare `host:port` gets it, and an
    /// endpoint that names the other scheme is refused (a client with TLS never sends its
    /// token in clear, not even after a redirect or a leader hint).
    pub fn parse_as(input: &str, scheme: Scheme) -> Result<Self, ClientError> {
        Self::parse_with(input, scheme, true)
    }

    fn parse_with(input: &str, default: Scheme, only_default: bool) -> Result<Self, ClientError> {
        let invalid = |reason: &'static str| ClientError::InvalidEndpoint {
            endpoint: truncate_for_message(input),
            reason,
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(invalid("empty"));
        }
        if trimmed.len() > ENDPOINT_BYTES_MAX {
            return Err(invalid("too long"));
        }
        let with_scheme = if trimmed.contains("://") {
            trimmed.to_owned()
        } else {
            format!("{}://{trimmed}", default.as_str())
        };
        let mut url = Url::parse(&with_scheme).map_err(|_| invalid("not a host:port or http(s):// URL"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        if only_default && scheme != default {
            return Err(invalid(match default {
                Scheme::Https => "plain http, but this client speaks https (it has a CA certificate)",
                Scheme::Http => "https needs a CA certificate (ClientOptions::tls, or raftctl --cacert)",
            }));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("credentials in the URL are not supported"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(Self { base: url })
    }

    /// The scheme of this endpoint.
    pub fn scheme(&self) -> Scheme {
        if self.base.scheme() == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    /// Whether the host is this machine's loopback (`localhost`, `127.0.0.0/8`, `::1`).
    pub fn is_loopback(&self) -> bool {
        let Some(host) = self.base.host_str() else { return false };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The normalized base URL, e.g. `http://127.0.0.1:8081/`.
    pub fn as_str(&self) -> &str {
        self.base.as_str()
    }

    /// The URL of an API path below this endpoint: each segment is percent-encoded on its own
    /// (a key `a/b` stays one segment), then the query pairs are appended.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// The endpoint a `Location` header (absolute or relative to `request`) points at: its
    /// scheme, host and port (the path is not kept: the request is rebuilt for the new node).
    pub(crate) fn from_location(location: &str, request: &Url, scheme: Scheme) -> Result<Self, ClientError> {
        let target = request.join(location).map_err(|_| ClientError::InvalidEndpoint {
            endpoint: truncate_for_message(location),
            reason: "the redirect location is not a URL",
        })?;
        let origin = target.origin();
        if !origin.is_tuple() {
            return Err(ClientError::InvalidEndpoint {
                endpoint: truncate_for_message(location),
                reason: "the redirect location has no host",
            });
        }
        Self::parse_as(&origin.ascii_serialization(), scheme)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Without the trailing slash of a bare host: `http://127.0.0.1:8081`.
        let s = self.base.as_str();
        if self.base.path() == "/" {
            f.write_str(s.strip_suffix('/').unwrap_or(s))
        } else {
            f.write_str(s)
        }
    }
}

impl FromStr for Endpoint {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// At most 200 characters of untrusted input, for an error message.
pub(crate) fn truncate_for_message(input: &str) -> String {
    const CHARS_MAX: usize = 200;
    if input.chars().count() <= CHARS_MAX {
        input.to_owned()
    } else {
        let mut s: String = input.chars().take(CHARS_MAX).collect();
        s.push('…');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Endpoint::parse(s).expect(s).to_string()
    }

    #[test]
    fn normalizes_host_port_and_urls() {
        assert_eq!(norm("127.0.0.1:8081"), "http://127.0.0.1:8081");
        assert_eq!(norm("  http://127.0.0.1:8081/ "), "http://127.0.0.1:8081");
        assert_eq!(norm("HTTP://Node1.Example:8081"), "http://node1.example:8081");
        assert_eq!(norm("http://node1:80"), "http://node1");
        assert_eq!(norm("[::1]:8081"), "http://[::1]:8081");
        assert_eq!(norm("localhost"), "http://localhost");
        assert_eq!(norm("http://proxy:9000/raft"), "http://proxy:9000/raft/");
        assert_eq!(
            Endpoint::parse("127.0.0.1:8081").unwrap(),
            Endpoint::parse("http://127.0.0.1:8081/").unwrap()
        );
    }

    #[test]
    fn a_client_speaks_one_scheme_to_every_node() {
        let https = Endpoint::parse_as("127.0.0.1:8081", Scheme::Https).unwrap();
        assert_eq!(https.to_string(), "https://127.0.0.1:8081");
        assert_eq!(https.scheme(), Scheme::Https);
        assert_eq!(https, Endpoint::parse("https://127.0.0.1:8081").unwrap());
        // A TLS client never downgrades; a plain one cannot verify a server.
        assert!(Endpoint::parse_as("http://127.0.0.1:8081", Scheme::Https).is_err());
        assert!(Endpoint::parse_as("https://127.0.0.1:8081", Scheme::Http).is_err());
        let request = Url::parse("https://a:1/v1/kv/k").unwrap();
        assert!(Endpoint::from_location("http://b:2/v1/kv/k", &request, Scheme::Https).is_err());
        assert_eq!(
            Endpoint::from_location("/v1/kv/k", &request, Scheme::Https).unwrap().to_string(),
            "https://a:1"
        );
    }

    #[test]
    fn refuses_what_it_cannot_reach() {
        for bad in [
            "",
            "   ",
            "ftp://node1",
            "http://",
            "http://u:p@node1:1",
            "node1:8081?x=1",
            "node1:8081#f",
            "node1:notaport",
            "http://[::1",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(ClientError::InvalidEndpoint { .. })),
                "{bad:?} was accepted"
            );
        }
        let long = format!("{}:1", "a".repeat(ENDPOINT_BYTES_MAX));
        assert!(Endpoint::parse(&long).is_err());
    }

    #[test]
    fn urls_encode_each_segment() {
        let e = Endpoint::parse("127.0.0.1:8081").unwrap();
        let url = e.url(&["v1", "kv", "a/b c?"], &[("consistency", "local".into())]);
        assert_eq!(url.as_str(), "http://127.0.0.1:8081/v1/kv/a%2Fb%20c%3F?consistency=local");
        let prefixed = Endpoint::parse("http://proxy/raft").unwrap();
        assert_eq!(prefixed.url(&["v1", "status"], &[]).as_str(), "http://proxy/raft/v1/status");
    }

    #[test]
    fn redirect_locations_give_the_origin() {
        let request = Url::parse("http://127.0.0.1:8081/v1/kv/a").unwrap();
        let abs = Endpoint::from_location("http://127.0.0.1:8082/v1/kv/a", &request, Scheme::Http).unwrap();
        assert_eq!(abs.to_string(), "http://127.0.0.1:8082");
        let rel = Endpoint::from_location("/v1/kv/a", &request, Scheme::Http).unwrap();
        assert_eq!(rel.to_string(), "http://127.0.0.1:8081");
        assert!(Endpoint::from_location("https://127.0.0.1:8082/", &request, Scheme::Http).is_err());
    }
}
