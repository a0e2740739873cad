//! Feature-store enrichment: a request names entities (a customer, a card) instead of carrying
//! every feature; the server assembles the model input from the request's own fields and from
//! features stored in Redis, in the order the model's signature wants.
//!
//! - [`spec`]: the feature spec (which features come from the request and which from the store,
//!   the key pattern, the storage form, positions, types, defaults), checked against the model's
//!   signature at startup, and the pure assembly of rows from entities and stored values.
//! - [`store`]: the Redis client (one pipelined round trip per batch, a timeout on every call,
//!   reconnection in the background) behind an in-process TTL cache with a size bound.
//! - [`FeatureService`]: the two together, as the server uses them.

pub mod spec;
pub mod store;

use std::sync::Arc;

use modelship_inference::Tensor;
pub use spec::{Defaulted, Entity, FeatureError, FeatureSpec};
pub use store::{FeatureMetrics, RoundTrip, Store, StoreConfig};

/// What the server holds: the spec and the store.
pub struct FeatureService {
    /// `None`: the store is only watched for readiness (no features configured).
    pub spec: Option<FeatureSpec>,
    pub store: Arc<Store>,
}

/// An assembled input tensor, with the entities whose features fell back to defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Enriched {
    pub tensor: Tensor,
    pub defaulted: Vec<Defaulted>,
    /// Entities the cache answered.
    pub cached: usize,
    /// The round trips to the store (none when the cache answered everything).
    pub round_trips: Vec<RoundTrip>,
}

impl FeatureService {
    /// Builds the model input for `entities`: request fields as given, store features fetched
    /// (one round trip for the whole batch, cached), defaults where the spec allows them.
    pub async fn enrich(&self, entities: &[Entity]) -> Result<Enriched, FeatureError> {
        let spec = self.spec.as_ref().ok_or_else(|| {
            FeatureError::BadEntity("no features are configured (features.features), so entities cannot be looked up; send the features themselves".to_owned())
        })?;
        let plan = spec.plan(entities)?;
        let keys = plan.keys_to_fetch();
        let (mut hits, mut round_trips) = (Vec::new(), Vec::new());
        let fetched = if keys.is_empty() { Ok(Default::default()) } else { self.store.fetch_noting_hits(&keys, spec.storage, &mut hits, &mut round_trips).await };
        let cached = hits.len();
        let assembled = match spec.assemble(&plan, &fetched) {
            // An entity the cache answered may predate the field (`features load` ran since):
            // every key the cache answered is read again from the store, in one round trip,
            // before answering that it lacks it. One the store answered just now is not asked twice.
            Err(FeatureError::MissingFeature { key, .. }) if hits.contains(&key) => {
                let mut fetched = fetched.unwrap_or_default();
                match self.store.fetch_fresh(&hits, spec.storage, &mut round_trips).await {
                    Ok(fresh) => {
                        fetched.extend(fresh);
                        spec.assemble(&plan, &Ok(fetched))
                    }
                    // The store's trouble, judged by the spec's store-error policy.
                    Err(e) => spec.assemble(&plan, &Err(e)),
                }
            }
            other => other,
        };
        let (tensor, defaulted) = assembled?;
        self.store.metrics.count_defaults(&defaulted);
        Ok(Enriched { tensor, defaulted, cached, round_trips })
    }
}
