//! Which model version answers a request: the routing table of one model as data, and the pure
//! function from a request's facts to a decision.
//!
//! No IO and no clock: the caller extracts the facts (headers, sticky key, a per-request nonce)
//! and applies the decision. That makes every routing rule a table-driven test, including the
//! statistical ones (shares over a million keys).
//!
//! - [`BasisPoints`]: weights and percentages with 0.01 % precision.
//! - [`TrafficTable`]: stable, candidate (weight), shadow (percent), sticky key, previous version.
//! - [`Change`]: the operations that produce a new table (canary, weight, shadow, switch, promote...).
//! - [`point`]: the stable hash that makes sticky assignment monotonic in the weight.

mod bp;
mod change;
mod hash;
mod table;

pub use bp::BasisPoints;
pub use change::{Change, ChangeError};
pub use hash::{point, point_of_nonce};
pub use table::{Candidate, Decision, Role, RouteInput, Shadow, StickyKey, TrafficTable};
