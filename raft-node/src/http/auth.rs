//! Client authentication: every request but the open operational ones presents a bearer token
//! (`Authorization: Bearer ...`) whose SHA-256 is configured in `[auth]`, or comes over HTTPS
//! with a client certificate whose name `[[auth.certificates]]` lists, with a role that allows
//! the request (a request with a token is judged by the token). Refusals are JSON: 401
//! `unauthenticated` (no token, or an unknown one) and 403 `forbidden` (the role is too low).
//! Requests that need `admin` are logged with the token's or certificate's name. A reload
//! (SIGHUP) replaces the whole set at once.
//!
//! The check runs before the body is read and before a request slot is taken, so an
//! unauthenticated client costs the node no slot and no body buffer.

use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use raft_client::api::ErrorCode;

use super::server::ClientCertificate;
use super::HttpError;
use crate::config::{AuthConfig, ClientRole};

/// A configured token.
struct Known {
    name: String,
    role: ClientRole,
    digest: [u8; 32],
}

/// The tokens and certificate names the API accepts, replaced whole on reload.
pub(crate) struct Auth {
    current: RwLock<Arc<Accepted>>,
}

/// One configuration's tokens and certificate roles.
struct Accepted {
    tokens: Vec<Known>,
    certificates: Vec<(String, ClientRole)>,
    open_ops: bool,
}

impl Accepted {
    /// From a validated `[auth]` (hashes that do not parse are left out: validation refuses
    /// them before the node starts or reloads).
    fn new(config: &AuthConfig) -> Self {
        let tokens = config
            .tokens
            .iter()
            .filter_map(|t| Some(Known { name: t.name.clone(), role: t.role, digest: parse_hex(&t.sha256)? }))
            .collect();
        let certificates = config.certificates.iter().map(|c| (c.name.clone(), c.role)).collect();
        Self { tokens, certificates, open_ops: config.open_ops }
    }

    /// The configured token `token` is, if any. Every configured digest is compared in full,
    /// in constant time.
    fn holder(&self, token: &str) -> Option<&Known> {
        let digest = token_digest(token);
        let mut found = None;
        for known in &self.tokens {
            let diff = known.digest.iter().zip(digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(known);
            }
        }
        found
    }

    /// The highest role any name of a verified client certificate has, with that name.
    fn certificate_role(&self, certificate: &ClientCertificate) -> Option<(&str, ClientRole)> {
        self.certificates
            .iter()
            .filter(|(name, _)| certificate.trusted_names().iter().any(|n| n == name))
            .map(|(name, role)| (name.as_str(), *role))
            .max_by_key(|(_, role)| *role)
    }
}

impl Auth {
    /// From a validated `[auth]`.
    pub(crate) fn new(config: &AuthConfig) -> Self {
        Self { current: RwLock::new(Arc::new(Accepted::new(config))) }
    }

    /// Accepts the tokens and certificates of `config` from now on, and no others.
    pub(crate) fn replace(&self, config: &AuthConfig) {
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(Accepted::new(config));
    }

    fn accepted(&self) -> Arc<Accepted> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// SHA-256 of a token.
fn token_digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 of `token` as 64 lowercase hex digits: the form `[auth]` keeps.
pub fn hash_token(token: &str) -> String {
    token_digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token (32 bytes from the OS, as 64 hex digits).
pub fn new_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the OS gave no random bytes".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The role a request needs, or `None` when it is open. Unknown paths need `read` (or `write`
/// for a method that changes something), so that nothing is learned without a token.
pub(crate) fn required_role(method: &Method, path: &str, open_ops: bool) -> Option<ClientRole> {
    let reads = *method == Method::GET || *method == Method::HEAD;
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if reads && super::ui::PUBLIC_PATHS.contains(&path) {
        return None;
    }
    if matches!(path, "/health" | "/ready" | "/metrics") {
        return if open_ops { None } else { Some(ClientRole::Read) };
    }
    if under("/v1/transfer-leader") || under("/v1/log") || under("/v1/snapshot") {
        return Some(ClientRole::Admin);
    }
    if under("/v1/members") {
        return Some(if reads { ClientRole::Read } else { ClientRole::Admin });
    }
    Some(if reads { ClientRole::Read } else { ClientRole::Write })
}

/// The token of an `Authorization: Bearer <token>` header, if any.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The middleware: answers 401/403 or passes the request on.
pub(crate) async fn authorize(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let accepted = auth.accepted();
    let Some(needed) = required_role(request.method(), request.uri().path(), accepted.open_ops) else {
        return next.run(request).await;
    };
    let presented = bearer_token(request.headers());
    let certificate = request.extensions().get::<ClientCertificate>();
    let holder = match presented {
        Some(token) => accepted.holder(token).map(|k| (Holder::Token(k.name.as_str()), k.role)),
        None => certificate
            .and_then(|c| accepted.certificate_role(c))
            .map(|(name, role)| (Holder::Certificate(name), role)),
    };
    let Some((holder, role)) = holder else {
        let message = match presented {
            None => "this API needs a token: send `Authorization: Bearer <token>`",
            Some(_) => "the token is not one this node accepts",
        };
        let mut answer = HttpError::new(ErrorCode::Unauthenticated, message).into_response();
        answer.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return answer;
    };
    if role < needed {
        let message = format!(
            "the {holder} has the role {role}; {} {} needs {needed}",
            request.method(),
            request.uri().path()
        );
        return HttpError::new(ErrorCode::Forbidden, message).into_response();
    }
    if needed == ClientRole::Admin {
        match holder {
            Holder::Token(name) => {
                tracing::info!(token = %name, method = %request.method(), path = %request.uri().path(), "admin request")
            }
            Holder::Certificate(name) => {
                tracing::info!(certificate = %name, method = %request.method(), path = %request.uri().path(), "admin request")
            }
        }
    }
    next.run(request).await
}

/// Who a request was authenticated as.
#[derive(Debug, Clone, Copy)]
enum Holder<'a> {
    Token(&'a str),
    Certificate(&'a str),
}

impl std::fmt::Display for Holder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Token(name) => write!(f, "token {name:?}"),
            Holder::Certificate(name) => write!(f, "client certificate {name:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_needs_the_role_its_effect_calls_for() {
        let get = Method::GET;
        let put = Method::PUT;
        let post = Method::POST;
        let delete = Method::DELETE;
        for (method, path, role) in [
            (&get, "/v1/kv/a", Some(ClientRole::Read)),
            (&put, "/v1/kv/a", Some(ClientRole::Write)),
            (&delete, "/v1/kv/a", Some(ClientRole::Write)),
            (&post, "/v1/cas/a", Some(ClientRole::Write)),
            (&get, "/v1/watch", Some(ClientRole::Read)),
            (&get, "/v1/status", Some(ClientRole::Read)),
            (&get, "/v1/members", Some(ClientRole::Read)),
            (&post, "/v1/members", Some(ClientRole::Admin)),
            (&delete, "/v1/members/2", Some(ClientRole::Admin)),
            (&post, "/v1/members/2/promote", Some(ClientRole::Admin)),
            (&post, "/v1/transfer-leader", Some(ClientRole::Admin)),
            (&get, "/v1/log", Some(ClientRole::Admin)),
            (&get, "/v1/snapshot", Some(ClientRole::Admin)),
            (&put, "/v1/services/s", Some(ClientRole::Write)),
            (&get, "/v1/balance/s", Some(ClientRole::Read)),
            (&get, "/nowhere", Some(ClientRole::Read)),
            (&post, "/nowhere", Some(ClientRole::Write)),
            (&get, "/health", None),
            (&get, "/metrics", None),
            (&get, "/ui", None),
            (&get, "/ui/app.js", None),
            (&get, "/", None),
            (&post, "/ui", Some(ClientRole::Write)),
            (&get, "/ui/other", Some(ClientRole::Read)),
            (&get, "/v1/cluster", Some(ClientRole::Read)),
        ] {
            assert_eq!(required_role(method, path, true), role, "{method} {path}");
        }
        assert_eq!(required_role(&get, "/ready", false), Some(ClientRole::Read));
        // A look-alike of an admin path is not let through as a lesser one.
        assert_eq!(required_role(&get, "/v1/members-x", true), Some(ClientRole::Read));
        assert_eq!(required_role(&post, "/v1/members/", true), Some(ClientRole::Admin));
    }

    #[test]
    fn a_token_is_known_by_its_hash_only() {
        let token = "s3cret-token";
        let config = AuthConfig {
            tokens: vec![crate::config::TokenConfig {
                name: "ops".into(),
                role: ClientRole::Admin,
                sha256: hash_token(token),
            }],
            certificates: Vec::new(),
            open_ops: true,
            token_file: None,
        };
        let auth = Auth::new(&config).accepted();
        assert_eq!(auth.holder(token).map(|k| k.name.as_str()), Some("ops"));
        assert!(auth.holder("s3cret-tokeN").is_none());
        assert!(auth.holder(&hash_token(token)).is_none(), "the hash itself is not a token");
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let fresh = new_token().expect("random");
        assert_eq!(fresh.len(), 64);
        assert_ne!(fresh, new_token().expect("random"));
    }

    #[test]
    fn a_certificate_gets_the_highest_role_of_its_names_and_a_reload_replaces_everything() {
        let role = |name: &str, role| crate::config::CertificateRoleConfig { name: name.into(), role };
        let config = AuthConfig {
            tokens: Vec::new(),
            certificates: vec![role("backup", ClientRole::Read), role("ops", ClientRole::Admin)],
            open_ops: true,
            token_file: None,
        };
        let auth = Auth::new(&config);
        let cert = |names: &[&str]| ClientCertificate {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            trusted: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let accepted = auth.accepted();
        assert_eq!(accepted.certificate_role(&cert(&["backup", "ops"])), Some(("ops", ClientRole::Admin)));
        assert_eq!(accepted.certificate_role(&cert(&["backup"])), Some(("backup", ClientRole::Read)));
        assert_eq!(accepted.certificate_role(&cert(&["Ops", "ops.example"])), None, "names match exactly");
        assert_eq!(accepted.certificate_role(&cert(&[])), None);
        let revoked = cert(&["ops"]);
        revoked.trusted.store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(accepted.certificate_role(&revoked), None, "a replaced client CA's certificates");
        auth.replace(&AuthConfig { certificates: vec![role("backup", ClientRole::Write)], ..config });
        let accepted = auth.accepted();
        assert_eq!(accepted.certificate_role(&cert(&["ops"])), None, "a removed name is refused at once");
        assert_eq!(accepted.certificate_role(&cert(&["backup"])), Some(("backup", ClientRole::Write)));
    }
}
