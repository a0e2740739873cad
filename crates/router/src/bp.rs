use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A share of traffic in basis points: 0 to 10,000 (1 bp = 0.01 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct BasisPoints(u16);

impl BasisPoints {
    pub const ZERO: BasisPoints = BasisPoints(0);
    pub const ALL: BasisPoints = BasisPoints(10_000);

    pub fn new(bp: u32) -> Option<Self> {
        u16::try_from(bp).ok().filter(|&b| b <= 10_000).map(BasisPoints)
    }

    pub fn get(self) -> u16 {
        self.0
    }

    pub fn as_fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

impl TryFrom<u32> for BasisPoints {
    type Error = String;
    fn try_from(bp: u32) -> Result<Self, String> {
        BasisPoints::new(bp).ok_or_else(|| format!("{bp} basis points is more than 100%"))
    }
}

impl From<BasisPoints> for u32 {
    fn from(bp: BasisPoints) -> u32 {
        u32::from(bp.0)
    }
}

impl fmt::Display for BasisPoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 { write!(f, "{whole}%") } else { write!(f, "{whole}.{:02}%", frac).map(|_| ()) }
    }
}

impl FromStr for BasisPoints {
    type Err = String;

    /// `5%`, `0.25%`, `12.5%`, or `250bp`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a share of traffic: use a percentage with at most two decimals (5%, 0.25%) or basis points (250bp)");
        let s = s.trim();
        if let Some(bp) = s.strip_suffix("bp") {
            let bp: u32 = bp.trim().parse().map_err(|_| bad())?;
            return BasisPoints::new(bp).ok_or_else(|| format!("'{s}' is more than 100%"));
        }
        let pct = s.strip_suffix('%').ok_or_else(bad)?.trim();
        let (whole, frac) = pct.split_once('.').unwrap_or((pct, ""));
        if whole.is_empty() || frac.len() > 2 || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = if frac.is_empty() { 0 } else { format!("{frac:0<2}").parse().map_err(|_| bad())? };
        whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(frac))
            .and_then(BasisPoints::new)
            .ok_or_else(|| format!("'{s}' is more than 100%"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, bp, shown) in [("5%", 500, "5%"), ("0.01%", 1, "0.01%"), ("12.5%", 1250, "12.50%"), ("100%", 10_000, "100%"), ("250bp", 250, "2.50%"), ("0%", 0, "0%")] {
            let parsed: BasisPoints = text.parse().unwrap();
            assert_eq!((parsed.get(), parsed.to_string().as_str()), (bp, shown), "{text}");
        }
        for bad in ["5", "101%", "0.001%", "-1%", "x%", "%", "1.2.3%", "10001bp"] {
            assert!(bad.parse::<BasisPoints>().is_err(), "{bad}");
        }
    }
}
