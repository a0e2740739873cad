use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{BasisPoints, point, point_of_nonce};

/// The version under test and its share of live traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub version: String,
    pub weight: BasisPoints,
}

/// A version that receives a copy of a share of requests; its answers are never returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadow {
    pub version: String,
    pub percent: BasisPoints,
}

/// Where the key for sticky assignment comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StickyKey {
    /// A request header, e.g. `x-user-id`.
    Header(String),
    /// A field of the request body: `parameters.<name>` for V2, top level for `/v1/predict`.
    Field(String),
}

/// The routing of one model. Serializable: it is what the admin API shows and what each
/// revision records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficTable {
    pub stable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyKey>,
    /// The version served before the last switch or promotion: kept warm for instant rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// Who answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Stable,
    Candidate,
    /// Chosen by the caller with the pin header.
    Pinned,
    Shadow,
}

impl Role {
    /// How many roles there are: [`Role::index`] is below it.
    pub const COUNT: usize = 4;

    /// A dense index, for tables by role.
    pub fn index(self) -> usize {
        match self {
            Role::Stable => 0,
            Role::Candidate => 1,
            Role::Pinned => 2,
            Role::Shadow => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stable => "stable",
            Role::Candidate => "candidate",
            Role::Pinned => "pinned",
            Role::Shadow => "shadow",
        }
    }
}

/// The facts about one request that routing looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteInput<'a> {
    /// The canary header (`x-canary: true`) was sent.
    pub canary: bool,
    /// The pin header (`x-model-version: V`) named a version.
    pub pin: Option<&'a str>,
    /// The sticky key's value, when the table has a sticky key and the request carries it.
    pub sticky: Option<&'a [u8]>,
    /// A per-request number (a counter) for requests without a sticky key, and for shadow sampling.
    pub nonce: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub version: &'a str,
    pub role: Role,
    /// A version to mirror this request to, off the client's path.
    pub shadow: Option<&'a str>,
}

const SPLIT_STREAM: u64 = 1;
const SHADOW_STREAM: u64 = 2;

impl TrafficTable {
    pub fn new(stable: impl Into<String>) -> Self {
        TrafficTable { stable: stable.into(), candidate: None, shadow: None, sticky: None, previous: None }
    }

    /// Routes one request. `model` salts the sticky hash so models split independently.
    pub fn route<'t>(&'t self, model: &str, input: &RouteInput<'t>) -> Decision<'t> {
        let shadow = self.shadow.as_ref().and_then(|s| {
            (s.percent.get() > 0 && point_of_nonce(input.nonce, SHADOW_STREAM) < s.percent.get()).then_some(s.version.as_str())
        });
        if let Some(pin) = input.pin {
            return Decision { version: pin, role: Role::Pinned, shadow };
        }
        let Some(candidate) = &self.candidate else {
            return Decision { version: &self.stable, role: Role::Stable, shadow };
        };
        let to_candidate = input.canary || {
            let p = match input.sticky {
                Some(key) => point(key, model),
                None => point_of_nonce(input.nonce, SPLIT_STREAM),
            };
            p < candidate.weight.get()
        };
        if to_candidate {
            Decision { version: &candidate.version, role: Role::Candidate, shadow }
        } else {
            Decision { version: &self.stable, role: Role::Stable, shadow }
        }
    }

    /// Every version this table can send traffic to (and so must be loaded).
    pub fn versions(&self) -> BTreeSet<&str> {
        let mut v = BTreeSet::from([self.stable.as_str()]);
        v.extend(self.candidate.as_ref().map(|c| c.version.as_str()));
        v.extend(self.shadow.as_ref().map(|s| s.version.as_str()));
        v
    }

    /// The share of live traffic each version gets, in basis points.
    pub fn weights(&self) -> Vec<(&str, Role, BasisPoints)> {
        match &self.candidate {
            None => vec![(self.stable.as_str(), Role::Stable, BasisPoints::ALL)],
            Some(c) => vec![
                (self.stable.as_str(), Role::Stable, BasisPoints::new(10_000 - u32::from(c.weight.get())).unwrap_or_default()),
                (c.version.as_str(), Role::Candidate, c.weight),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(weight: u32) -> TrafficTable {
        TrafficTable {
            candidate: Some(Candidate { version: "2".into(), weight: BasisPoints::new(weight).unwrap() }),
            ..TrafficTable::new("1")
        }
    }

    fn share(table: &TrafficTable, n: u64, sticky: bool) -> f64 {
        let mut to_candidate = 0u64;
        for i in 0..n {
            let key = format!("user-{i}");
            let input = RouteInput { sticky: sticky.then_some(key.as_bytes()), nonce: i, ..Default::default() };
            if table.route("fraud", &input).role == Role::Candidate {
                to_candidate += 1;
            }
        }
        to_candidate as f64 / n as f64
    }

    #[test]
    fn weights_hold_to_a_tenth_of_a_percent_over_a_million_keys() {
        for bp in [0, 1, 100, 500, 2_500, 5_000, 9_999, 10_000] {
            let target = f64::from(bp) / 10_000.0;
            for sticky in [true, false] {
                let got = share(&canary(bp), 1_000_000, sticky);
                assert!((got - target).abs() <= 0.001, "{bp} bp, sticky {sticky}: {got}");
            }
        }
    }

    #[test]
    fn raising_the_weight_only_moves_keys_from_stable_to_candidate() {
        let steps = [0, 1, 100, 1_000, 2_500, 5_000, 7_500, 10_000];
        let mut before: Vec<bool> = vec![false; 100_000];
        for bp in steps {
            let table = canary(bp);
            for (i, was_candidate) in before.iter_mut().enumerate() {
                let key = format!("user-{i}");
                let now = table.route("fraud", &RouteInput { sticky: Some(key.as_bytes()), ..Default::default() }).role == Role::Candidate;
                assert!(now || !*was_candidate, "key {i} moved back to stable at {bp} bp");
                *was_candidate = now;
            }
        }
        assert!(before.iter().all(|&c| c));
    }

    #[test]
    fn the_same_key_always_lands_on_the_same_version() {
        let table = canary(3_000);
        for i in 0..1_000 {
            let key = format!("k{i}");
            let input = RouteInput { sticky: Some(key.as_bytes()), nonce: i, ..Default::default() };
            let first = table.route("fraud", &input).version;
            for nonce in 0..5 {
                assert_eq!(table.route("fraud", &RouteInput { nonce, ..input }).version, first);
            }
        }
    }

    #[test]
    fn headers_pin_and_canary() {
        let table = canary(0);
        let check = |input: RouteInput| {
            let d = table.route("fraud", &input);
            (d.version.to_owned(), d.role)
        };
        assert_eq!(check(RouteInput::default()), ("1".into(), Role::Stable));
        assert_eq!(check(RouteInput { canary: true, ..Default::default() }), ("2".into(), Role::Candidate));
        assert_eq!(check(RouteInput { pin: Some("7"), ..Default::default() }), ("7".into(), Role::Pinned));
        // Without a candidate, the canary header changes nothing.
        let plain = TrafficTable::new("1");
        let d = plain.route("fraud", &RouteInput { canary: true, ..Default::default() });
        assert_eq!((d.version, d.role), ("1", Role::Stable));
    }

    #[test]
    fn shadow_samples_its_percentage_independently() {
        let table = TrafficTable { shadow: Some(Shadow { version: "3".into(), percent: BasisPoints::new(2_500).unwrap() }), ..canary(5_000) };
        let n = 200_000;
        let (mut mirrored, mut both) = (0, 0);
        for nonce in 0..n {
            let d = table.route("fraud", &RouteInput { nonce, ..Default::default() });
            if d.shadow == Some("3") {
                mirrored += 1;
                if d.role == Role::Candidate {
                    both += 1;
                }
            }
        }
        let share = f64::from(mirrored) / n as f64;
        assert!((share - 0.25).abs() < 0.005, "{share}");
        let overlap = f64::from(both) / f64::from(mirrored);
        assert!((overlap - 0.5).abs() < 0.01, "shadow sampling is independent of the split: {overlap}");
        let all = TrafficTable { shadow: Some(Shadow { version: "3".into(), percent: BasisPoints::ALL }), ..TrafficTable::new("1") };
        assert!((0..1_000).all(|nonce| all.route("m", &RouteInput { nonce, ..Default::default() }).shadow == Some("3")));
    }
}
