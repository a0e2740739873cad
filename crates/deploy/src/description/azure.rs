//! The description's `azure_functions:` section: what only Azure Functions needs. The binary runs
//! as the function app's custom handler; every key has a default.
//!
//! ```yaml
//! azure_functions:
//!   auth_level: function        # function (a function key) | admin | anonymous
//!   timeout: 5m                 # functionTimeout: at most 10m on the Consumption plan
//!   route_prefix: api           # extensions.http.routePrefix: requests come as /api/v1/predict
//!   max_concurrent_requests: 100
//! ```

use serde::{Deserialize, Serialize};

use super::Deployment;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureFunctions {
    pub auth_level: String,
    pub timeout: String,
    pub route_prefix: String,
    pub max_concurrent_requests: u32,
}

impl Default for AzureFunctions {
    fn default() -> Self {
        AzureFunctions { auth_level: "function".to_owned(), timeout: "5m".to_owned(), route_prefix: "api".to_owned(), max_concurrent_requests: 100 }
    }
}

impl Deployment {
    pub(super) fn azure_problems(&self, p: &mut Vec<String>) {
        let a = &self.azure_functions;
        if !["function", "admin", "anonymous"].contains(&a.auth_level.as_str()) {
            p.push(format!("azure_functions.auth_level '{}' is not function, admin or anonymous", a.auth_level));
        }
        match humantime::parse_duration(&a.timeout) {
            Ok(d) if d.subsec_nanos() == 0 && (1..=10 * 3600).contains(&d.as_secs()) => {}
            _ => p.push(format!("azure_functions.timeout '{}' must be whole seconds between 1s and 10h (the Consumption plan stops at 10m)", a.timeout)),
        }
        if !(a.route_prefix.is_empty() || (a.route_prefix.len() <= 32 && a.route_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))) {
            p.push(format!("azure_functions.route_prefix '{}' is not a path segment (letters, digits, '-', '_'; empty for none)", a.route_prefix));
        }
        if !(1..=10_000).contains(&a.max_concurrent_requests) {
            p.push(format!("azure_functions.max_concurrent_requests is {}; give 1 to 10000", a.max_concurrent_requests));
        }
        if self.image.gpu {
            p.push("image.gpu: Azure Functions runs the handler on the CPU; leave image.gpu off for deploy azure-functions".to_owned());
        }
        if self.model.file.is_none() {
            p.push("model: Azure Functions packages model.file with the app (a registry model is not fetched here)".to_owned());
        }
        if self.model.delivery() != super::Delivery::Bake && self.model.file.is_some() {
            p.push("model.delivery: mount names a file on this machine; the function app's package carries it (delivery: bake, the default here)".to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Target;
    use crate::description::parse;

    fn problems(text: &str) -> Vec<String> {
        let mut d = parse(text).unwrap();
        d.settle(Target::AzureFunctions);
        d.validate_for(Target::AzureFunctions).err().map(|e| e.0).unwrap_or_default()
    }

    #[test]
    fn hostile_options_are_refused_before_anything_is_written() {
        assert_eq!(problems("name: nepse\nmodel: {file: m.onnx}\n"), Vec::<String>::new(), "a file is packaged by default");
        let got = problems("name: nepse\nmodel: {registry: nepse@production}\nazure_functions: {auth_level: everyone, timeout: 1d, route_prefix: 'a/b', max_concurrent_requests: 0}\n");
        for want in [
            "azure_functions.auth_level 'everyone' is not function, admin or anonymous",
            "azure_functions.timeout '1d' must be whole seconds between 1s and 10h",
            "azure_functions.route_prefix 'a/b' is not a path segment",
            "azure_functions.max_concurrent_requests is 0; give 1 to 10000",
            "model: Azure Functions packages model.file with the app",
        ] {
            assert!(got.iter().any(|g| g.starts_with(want)), "{want:?} not in {got:#?}");
        }
        assert_eq!(got.len(), 5, "{got:#?}");
        assert!(problems("name: nepse\nmodel: {file: m.onnx, delivery: mount}\n")[0].starts_with("model.delivery: mount names a file on this machine"));
    }
}
