//! Credentials: the control token (admin API, labels, repository RPCs) and the optional
//! inference API keys. Secrets are kept only as SHA-256 digests and compared in constant time
//! (`subtle`), so neither their content nor their length shows in timing, and they never reach a
//! log line or an error message.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type Digest32 = [u8; 32];

fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// Who may do what, by the secrets they present.
#[derive(Default)]
pub struct Credentials {
    /// The admin token: everything that can change routing or a rollout's outcome. `None`
    /// refuses every control request (never "open by default").
    control: Option<Digest32>,
    /// Inference API keys; empty means inference needs no key.
    api_keys: Vec<Digest32>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("control", &self.control.is_some()).field("api_keys", &self.api_keys.len()).finish()
    }
}

impl Credentials {
    pub fn new(control_token: Option<&str>, api_keys: &[String]) -> Self {
        Credentials { control: control_token.map(digest), api_keys: api_keys.iter().map(|k| digest(k)).collect() }
    }

    /// Whether `authorization` (a header value) carries the control token as `Bearer <token>`.
    pub fn is_control(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.control else { return false };
        let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else { return false };
        bool::from(digest(given.trim()).ct_eq(expected))
    }

    pub fn requires_api_key(&self) -> bool {
        !self.api_keys.is_empty()
    }

    /// Whether the request may run inference: no keys configured, or one of them in
    /// `x-api-key` or `Authorization: Bearer <key>`. Every key is compared, so the time taken
    /// does not tell which one (or whether any) matched.
    pub fn allows_inference(&self, headers: &HeaderMap) -> bool {
        if self.api_keys.is_empty() {
            return true;
        }
        const API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");
        let header = |name: &http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let given = header(&API_KEY).or_else(|| header(&http::header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ")));
        let Some(given) = given else { return false };
        let given = digest(given.trim());
        self.api_keys.iter().fold(subtle::Choice::from(0), |any, key| any | given.ct_eq(key)).into()
    }
}

/// Reads API keys from a file: one key a line; blank lines and `#` comments are skipped. Keys
/// shorter than 16 characters are refused (they would be guessable).
pub fn read_api_keys(text: &str, source: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let key = line.trim();
        if key.is_empty() || key.starts_with('#') {
            continue;
        }
        if key.len() < 16 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{source} line {}: an API key must be at least 16 visible characters without spaces (the key itself is not shown)",
                n + 1
            ));
        }
        keys.push(key.to_owned());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_token_and_api_keys() {
        let c = Credentials::new(Some("0123456789abcdef-admin"), &["key-one-0123456789".to_owned(), "key-two-0123456789".to_owned()]);
        assert!(c.is_control(Some("Bearer 0123456789abcdef-admin")));
        assert!(!c.is_control(Some("Bearer 0123456789abcdef-admi")));
        assert!(!c.is_control(Some("0123456789abcdef-admin")), "the Bearer scheme is required");
        assert!(!c.is_control(None));
        assert!(!Credentials::new(None, &[]).is_control(Some("Bearer ")), "no token configured refuses everything");

        let mut h = HeaderMap::new();
        assert!(!c.allows_inference(&h));
        h.insert("x-api-key", "key-two-0123456789".parse().unwrap());
        assert!(c.allows_inference(&h));
        h.clear();
        h.insert(http::header::AUTHORIZATION, "Bearer key-one-0123456789".parse().unwrap());
        assert!(c.allows_inference(&h));
        h.insert(http::header::AUTHORIZATION, "Bearer key-three-0123456789".parse().unwrap());
        assert!(!c.allows_inference(&h));
        assert!(Credentials::new(None, &[]).allows_inference(&HeaderMap::new()), "no keys: inference is open");
    }

    #[test]
    fn key_files() {
        assert_eq!(read_api_keys("# team a\nkey-one-0123456789\n\n  key-two-0123456789  \n", "keys").unwrap().len(), 2);
        let e = read_api_keys("short\n", "keys.txt").unwrap_err();
        assert!(e.contains("keys.txt line 1") && !e.contains("short"), "{e}");
    }
}
