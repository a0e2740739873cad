//! Operations on a routing table. Each produces a whole new table (the caller swaps it in
//! atomically) or says why it cannot.

use serde::{Deserialize, Serialize};

use crate::{BasisPoints, Candidate, Shadow, StickyKey, TrafficTable};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Send `weight` of live traffic to `version` (a canary; weight 0 with the canary or pin
    /// header is a blue-green preview).
    Canary { version: String, weight: BasisPoints },
    /// Change the current candidate's weight.
    Weight { weight: BasisPoints },
    /// Remove the candidate: all live traffic to stable.
    Abort,
    /// The candidate becomes stable; the old stable is kept warm as `previous`.
    Promote,
    /// Blue-green switch: `version` becomes stable at once; the old stable is kept warm as
    /// `previous` (switching back is the same operation).
    Switch { version: String },
    /// Mirror `percent` of requests to `version`.
    Shadow { version: String, percent: BasisPoints },
    StopShadow,
    /// Sticky assignment by this key, or none.
    Sticky { key: Option<StickyKey> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("there is no candidate; start one with a canary (`traffic set MODEL --candidate V --weight 5%`)")]
    NoCandidate,
    #[error("version {0} is already the stable version")]
    AlreadyStable(String),
    #[error("version {0} is the stable version; a shadow mirrors requests to another version")]
    ShadowOfStable(String),
    #[error("{0}")]
    BadStickyKey(String),
}

/// The longest sticky key name (a header's or a field's).
pub const MAX_STICKY_KEY: usize = 128;

/// A sticky key that can be read from requests: a header name of HTTP token characters, a field
/// name of visible characters; both 1 to [`MAX_STICKY_KEY`] long.
fn check_sticky(key: &StickyKey) -> Result<(), ChangeError> {
    let (what, name) = match key {
        StickyKey::Header(h) => ("header", h),
        StickyKey::Field(f) => ("field", f),
    };
    let shown: String = name.chars().take(40).flat_map(char::escape_debug).collect();
    if name.is_empty() || name.len() > MAX_STICKY_KEY {
        return Err(ChangeError::BadStickyKey(format!("a sticky {what} name is 1 to {MAX_STICKY_KEY} characters long, not {}", name.len())));
    }
    // RFC 9110's token characters, the only ones a header name may hold.
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let ok = match key {
        StickyKey::Header(h) => h.chars().all(token),
        StickyKey::Field(f) => f.chars().all(|c| !c.is_control()),
    };
    if ok {
        Ok(())
    } else if what == "header" {
        Err(ChangeError::BadStickyKey(format!("'{shown}' is not a header name: use letters, digits and !#$%&'*+-.^_`|~ only, e.g. x-user-id")))
    } else {
        Err(ChangeError::BadStickyKey(format!("the sticky field name '{shown}' holds control characters")))
    }
}

impl TrafficTable {
    pub fn apply(&self, change: &Change) -> Result<TrafficTable, ChangeError> {
        let mut next = self.clone();
        match change {
            Change::Canary { version, weight } => {
                if *version == self.stable {
                    return Err(ChangeError::AlreadyStable(version.clone()));
                }
                next.candidate = Some(Candidate { version: version.clone(), weight: *weight });
            }
            Change::Weight { weight } => {
                let candidate = next.candidate.as_mut().ok_or(ChangeError::NoCandidate)?;
                candidate.weight = *weight;
            }
            Change::Abort => {
                next.candidate.take().ok_or(ChangeError::NoCandidate)?;
            }
            Change::Promote => {
                let candidate = next.candidate.take().ok_or(ChangeError::NoCandidate)?;
                next.previous = Some(std::mem::replace(&mut next.stable, candidate.version));
            }
            Change::Switch { version } => {
                if *version == self.stable {
                    return Err(ChangeError::AlreadyStable(version.clone()));
                }
                next.previous = Some(std::mem::replace(&mut next.stable, version.clone()));
                if next.candidate.as_ref().is_some_and(|c| c.version == *version) {
                    next.candidate = None;
                }
            }
            Change::Shadow { version, percent } => {
                if *version == self.stable {
                    return Err(ChangeError::ShadowOfStable(version.clone()));
                }
                next.shadow = Some(Shadow { version: version.clone(), percent: *percent });
            }
            Change::StopShadow => next.shadow = None,
            Change::Sticky { key } => {
                if let Some(key) = key {
                    check_sticky(key)?;
                }
                next.sticky = key.clone();
            }
        }
        Ok(next.without_self_comparison())
    }

    /// This table without a candidate or a shadow naming the stable version: after a promotion
    /// or a switch to the version that was shadowed, mirroring stable to itself would compare a
    /// version with itself (and double its work), so the shadow ends there.
    pub fn without_self_comparison(mut self) -> TrafficTable {
        if self.shadow.as_ref().is_some_and(|s| s.version == self.stable) {
            self.shadow = None;
        }
        if self.candidate.as_ref().is_some_and(|c| c.version == self.stable) {
            self.candidate = None;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(s: &str) -> BasisPoints {
        s.parse().unwrap()
    }

    #[test]
    fn canary_then_promote_keeps_the_old_stable_warm() {
        let t = TrafficTable::new("1");
        let t = t.apply(&Change::Canary { version: "2".into(), weight: bp("5%") }).unwrap();
        assert_eq!(t.weights(), vec![("1", crate::Role::Stable, bp("95%")), ("2", crate::Role::Candidate, bp("5%"))]);
        let t = t.apply(&Change::Weight { weight: bp("50%") }).unwrap();
        let t = t.apply(&Change::Promote).unwrap();
        assert_eq!((t.stable.as_str(), t.candidate.is_none(), t.previous.as_deref()), ("2", true, Some("1")));
    }

    #[test]
    fn blue_green_switch_and_back() {
        let t = TrafficTable::new("blue").apply(&Change::Canary { version: "green".into(), weight: BasisPoints::ZERO }).unwrap();
        let t = t.apply(&Change::Switch { version: "green".into() }).unwrap();
        assert_eq!((t.stable.as_str(), t.previous.as_deref(), t.candidate.is_none()), ("green", Some("blue"), true));
        let t = t.apply(&Change::Switch { version: "blue".into() }).unwrap();
        assert_eq!((t.stable.as_str(), t.previous.as_deref()), ("blue", Some("green")));
    }

    #[test]
    fn sticky_keys_that_no_request_can_carry_are_refused() {
        let t = TrafficTable::new("1");
        let header = |h: &str| Change::Sticky { key: Some(StickyKey::Header(h.into())) };
        let field = |f: &str| Change::Sticky { key: Some(StickyKey::Field(f.into())) };
        // (change, refused with this fragment, or accepted)
        let cases = [
            (header("x-user-id"), None),
            (header("X-Tenant_1"), None),
            (field("user id"), None),
            (header("x-user\r\nx-evil: 1"), Some("is not a header name")),
            (header("x user"), Some("is not a header name")),
            (header(""), Some("1 to 128 characters")),
            (header(&"a".repeat(129)), Some("1 to 128 characters")),
            (field("a\u{0}b"), Some("control characters")),
        ];
        for (change, refused) in cases {
            match (t.apply(&change), refused) {
                (Ok(_), None) => {}
                (Err(ChangeError::BadStickyKey(e)), Some(fragment)) => assert!(e.contains(fragment), "{change:?}: {e}"),
                (got, want) => panic!("{change:?}: got {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn impossible_changes_are_refused() {
        let t = TrafficTable::new("1");
        assert_eq!(t.apply(&Change::Promote), Err(ChangeError::NoCandidate));
        assert_eq!(t.apply(&Change::Weight { weight: bp("1%") }), Err(ChangeError::NoCandidate));
        assert_eq!(t.apply(&Change::Switch { version: "1".into() }), Err(ChangeError::AlreadyStable("1".into())));
        assert_eq!(t.apply(&Change::Canary { version: "1".into(), weight: bp("1%") }), Err(ChangeError::AlreadyStable("1".into())));
    }

    #[test]
    fn a_table_never_compares_stable_with_itself() {
        let shadowed = |stable: &str, shadow: &str| {
            TrafficTable::new(stable).apply(&Change::Shadow { version: shadow.into(), percent: bp("100%") }).unwrap()
        };
        let with_candidate = |t: TrafficTable, v: &str| t.apply(&Change::Canary { version: v.into(), weight: bp("10%") }).unwrap();
        // (table before, change, stable after, shadow after)
        let cases = [
            (shadowed("1", "2"), Change::Switch { version: "2".into() }, "2", None),
            (shadowed("1", "3"), Change::Switch { version: "2".into() }, "2", Some("3")),
            (with_candidate(shadowed("1", "2"), "2"), Change::Promote, "2", None),
            (with_candidate(shadowed("1", "3"), "2"), Change::Promote, "2", Some("3")),
            (with_candidate(shadowed("1", "2"), "2"), Change::Abort, "1", Some("2")),
        ];
        for (before, change, stable, shadow) in cases {
            let after = before.apply(&change).unwrap();
            assert_eq!((after.stable.as_str(), after.shadow.as_ref().map(|s| s.version.as_str())), (stable, shadow), "{change:?} on {before:?}");
            assert!(after.candidate.as_ref().is_none_or(|c| c.version != after.stable), "{after:?}");
        }
        assert_eq!(
            TrafficTable::new("1").apply(&Change::Shadow { version: "1".into(), percent: bp("5%") }),
            Err(ChangeError::ShadowOfStable("1".into()))
        );
    }

    #[test]
    fn changes_read_as_json() {
        let c: Change = serde_json::from_str(r#"{"op": "canary", "version": "2", "weight": 500}"#).unwrap();
        assert_eq!(c, Change::Canary { version: "2".into(), weight: bp("5%") });
        assert!(serde_json::from_str::<Change>(r#"{"op": "canary", "version": "2", "weight": 10001}"#).is_err());
    }
}
