//! Request ids: the caller's `x-request-id` when it is sane, otherwise a fresh one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;

pub const HEADER: &str = "x-request-id";
/// [`HEADER`] as a `HeaderName` (a `&str` name is parsed on every use).
pub(crate) const NAME: http::HeaderName = http::HeaderName::from_static(HEADER);

/// Generates ids unique within and, with overwhelming likelihood, across processes: a per-process
/// random-ish prefix and a counter.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        RequestIds { prefix: nanos ^ std::process::id().rotate_left(16), next: AtomicU64::new(1) }
    }
}

impl RequestIds {
    /// The caller's id if it is 1-128 visible ASCII characters, else a new one. Ids end up in
    /// logs and headers, so nothing else is echoed.
    pub fn for_request(&self, headers: &HeaderMap) -> String {
        if let Some(id) = headers.get(&NAME).and_then(|v| v.to_str().ok())
            && !id.is_empty()
            && id.len() <= 128
            && id.bytes().all(|b| b.is_ascii_graphic())
        {
            return id.to_owned();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n:012x}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_sane_ids_and_replaces_others() {
        let ids = RequestIds::default();
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, "abc-123".parse().unwrap());
        assert_eq!(ids.for_request(&headers), "abc-123");
        headers.insert(HEADER, "has space".parse().unwrap());
        let generated = ids.for_request(&headers);
        assert_ne!(generated, "has space");
        assert_ne!(ids.for_request(&HeaderMap::new()), generated);
    }
}
