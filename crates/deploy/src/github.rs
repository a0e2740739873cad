//! The subset of the GitHub Actions workflow format the CI generator writes, as typed values
//! (serialized by [`crate::yaml`], which quotes every string; `on` is a YAML 1.1 boolean, so it is
//! written `"on":`, which GitHub reads as the key it is).

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// An ordered map of strings (`env:`, `with:`, `permissions:`): written in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Map(pub Vec<(String, String)>);

impl Map {
    pub fn of<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Map {
        Map(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Map {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    pub name: String,
    #[serde(rename = "on")]
    pub on: Triggers,
    pub permissions: Map,
    pub concurrency: Concurrency,
    pub env: Map,
    pub jobs: Jobs,
}

#[derive(Debug, Clone, Serialize)]
pub struct Triggers {
    pub push: Branches,
    pub pull_request: Branches,
    pub workflow_dispatch: Empty,
}

#[derive(Debug, Clone, Serialize)]
pub struct Branches {
    pub branches: Vec<String>,
}

/// `{}`: a trigger with no filter.
#[derive(Debug, Clone, Serialize)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize)]
pub struct Concurrency {
    pub group: String,
    #[serde(rename = "cancel-in-progress")]
    pub cancel_in_progress: bool,
}

/// Jobs by id, in order.
#[derive(Debug, Clone, Default)]
pub struct Jobs(pub Vec<(&'static str, Job)>);

impl Serialize for Jobs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (id, job) in &self.0 {
            map.serialize_entry(id, job)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub name: String,
    #[serde(rename = "runs-on")]
    pub runs_on: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<&'static str>,
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    pub permissions: Map,
    #[serde(rename = "timeout-minutes")]
    pub timeout_minutes: u32,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub env: Map,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Step {
    pub name: String,
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uses: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub with: Map,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub env: Map,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

impl Step {
    /// A shell step; `script` lines are joined into one script (a literal block when several).
    pub fn run(name: impl Into<String>, script: &[&str]) -> Step {
        let mut text = script.join("\n");
        if script.len() > 1 {
            text.push('\n');
        }
        Step { name: name.into(), run: Some(text), ..Step::default() }
    }

    /// A step that uses an action, pinned to a version.
    pub fn uses(name: impl Into<String>, action: &str, with: Map) -> Step {
        Step { name: name.into(), uses: Some(action.to_owned()), with, ..Step::default() }
    }

    pub fn env(mut self, env: Map) -> Step {
        self.env = env;
        self
    }

    pub fn when(mut self, condition: impl Into<String>) -> Step {
        self.condition = Some(condition.into());
        self
    }
}
