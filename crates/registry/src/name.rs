//! Names, versions, aliases, and references to a model version.
//!
//! They reach SQL parameters, URLs, metric labels and log lines, never paths, but are validated
//! strictly anyway: a name a user could not have typed on purpose is a mistake worth reporting.

use std::fmt;

use crate::RegistryError;

const NAME_RULE: &str = "use 1-128 letters, digits, '.', '_' or '-', starting and ending with a letter or digit, without '..'";
const VERSION_RULE: &str = "use 1-128 letters, digits, '.', '_', '+' or '-', starting with a letter or digit, without '..'";
const ALIAS_RULE: &str = "use 1-64 lowercase letters, digits, '_' or '-', starting with a letter";

fn plain(value: &str, max: usize, extra: &[char]) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
        && !value.contains("..")
}

pub fn check_name(name: &str) -> Result<(), RegistryError> {
    if plain(name, 128, &['.', '_', '-']) && name.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(RegistryError::InvalidName { what: "model name", value: name.to_owned(), rule: NAME_RULE })
    }
}

pub fn check_version(version: &str) -> Result<(), RegistryError> {
    if plain(version, 128, &['.', '_', '-', '+']) {
        Ok(())
    } else {
        Err(RegistryError::InvalidName { what: "version", value: version.to_owned(), rule: VERSION_RULE })
    }
}

pub fn check_alias(alias: &str) -> Result<(), RegistryError> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && alias.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok { Ok(()) } else { Err(RegistryError::InvalidName { what: "alias", value: alias.to_owned(), rule: ALIAS_RULE }) }
}

/// `NAME`, `NAME:VERSION` or `NAME@ALIAS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// The newest version of the model.
    Latest(String),
    Version(String, String),
    Alias(String, String),
}

impl ModelRef {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let r = if let Some((name, alias)) = s.split_once('@') {
            check_alias(alias)?;
            ModelRef::Alias(name.to_owned(), alias.to_owned())
        } else if let Some((name, version)) = s.split_once(':') {
            check_version(version)?;
            ModelRef::Version(name.to_owned(), version.to_owned())
        } else {
            ModelRef::Latest(s.to_owned())
        };
        check_name(r.name()).map_err(|_| RegistryError::InvalidReference(s.to_owned()))?;
        Ok(r)
    }

    /// Whether `s` looks like a registry reference rather than a file path.
    pub fn looks_like_reference(s: &str) -> bool {
        ModelRef::parse(s).is_ok() && !MODEL_FILE_EXTENSIONS.iter().any(|ext| s.ends_with(ext))
    }

    pub fn name(&self) -> &str {
        match self {
            ModelRef::Latest(n) | ModelRef::Version(n, _) | ModelRef::Alias(n, _) => n,
        }
    }
}

/// Endings of model files (ONNX, and the formats converted to it): a name ending so is a file,
/// not a registry reference.
pub const MODEL_FILE_EXTENSIONS: [&str; 10] = [".onnx", ".pkl", ".pickle", ".joblib", ".json", ".ubj", ".xgb", ".lgb", ".txt", ".model"];

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::Latest(n) => write!(f, "{n}"),
            ModelRef::Version(n, v) => write!(f, "{n}:{v}"),
            ModelRef::Alias(n, a) => write!(f, "{n}@{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names a hostile or careless user might type; every one is refused.
    const HOSTILE: &[&str] = &[
        "", "../etc", "..", ".", "a/../b", "/etc/passwd", "a/b", "a\\b", "C:\\x", "-rf", ".hidden", "name.", "a..b",
        "a b", "a\tb", "a\nb", "naïve", "a%2e%2e", "a?x", "a#x", "a*", "a;rm", "a'b", "a\"b", "\u{0}", "~root",
        "$HOME", "a|b", "a>b",
    ];

    #[test]
    fn hostile_names_are_refused() {
        for name in HOSTILE {
            assert!(check_name(name).is_err(), "{name:?} accepted as a name");
            assert!(check_version(name).is_err() || *name == "name.", "{name:?} accepted as a version");
            assert!(check_alias(name).is_err(), "{name:?} accepted as an alias");
        }
        assert!(check_name(&"a".repeat(129)).is_err());
    }

    #[test]
    fn ordinary_names_pass() {
        for name in ["fraud", "fraud-detection", "fraud_v2", "Fraud.Model", "a", "x1"] {
            check_name(name).unwrap();
        }
        for version in ["1", "1.3.0", "v1.2.0", "2024-05-01", "1.0.0+build.7", "1.0.0-rc.1"] {
            check_version(version).unwrap();
        }
        for alias in ["production", "staging", "canary-2", "blue_green"] {
            check_alias(alias).unwrap();
        }
    }

    #[test]
    fn references() {
        assert_eq!(ModelRef::parse("fraud").unwrap(), ModelRef::Latest("fraud".into()));
        assert_eq!(ModelRef::parse("fraud:1.3.0").unwrap(), ModelRef::Version("fraud".into(), "1.3.0".into()));
        assert_eq!(ModelRef::parse("fraud@production").unwrap(), ModelRef::Alias("fraud".into(), "production".into()));
        for bad in ["../x:1", "fraud@Prod", "fraud:", "@production", "fraud:../1", "a/b@x"] {
            assert!(ModelRef::parse(bad).is_err(), "{bad}");
        }
        assert!(ModelRef::looks_like_reference("fraud@production"));
        assert!(!ModelRef::looks_like_reference("model.onnx"));
        assert!(!ModelRef::looks_like_reference("models/fraud.onnx"));
        assert!(!ModelRef::looks_like_reference("nepse_model.pkl"));
        assert!(!ModelRef::looks_like_reference("xgb.json"));
    }
}
