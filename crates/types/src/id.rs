//! Sandbox, container and exec ids: one rule, checked once.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest id accepted, in bytes: containerd's own limit for identifiers,
/// so every id containerd (and Kubernetes through it) hands a runtime fits.
/// Ids name directories, cgroups, sockets and VMs; 76 bytes keep the
/// longest socket path under `/run` well inside `sun_path`'s 107.
pub const MAX_ID_LEN: usize = 76;

/// What an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdKind {
    /// A sandbox id.
    Sandbox,
    /// A container id.
    Container,
    /// An exec (extra process) id.
    Exec,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Sandbox => "sandbox",
            IdKind::Container => "container",
            IdKind::Exec => "exec",
        })
    }
}

/// The rule an id broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdRule {
    /// Ids must not be empty.
    #[error("must not be empty")]
    Empty,
    /// Ids are at least two characters long (Kata's rule: `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`).
    #[error("must be at least 2 characters long")]
    TooShort,
    /// Ids are at most [`MAX_ID_LEN`] bytes.
    #[error("must be at most {MAX_ID_LEN} bytes long")]
    TooLong,
    /// Ids may contain only ASCII letters, digits, `_`, `.` and `-`.
    #[error("must not contain {0:?} (allowed: letters, digits, '_', '.', '-')")]
    Character(char),
    /// Ids start with a letter or a digit (so never `.`, `..` or an option).
    #[error("must start with a letter or a digit")]
    Start,
}

/// An id that broke the rule of [`validate_id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {id:?}: {rule}")]
pub struct IdError {
    /// What the id names.
    pub kind: IdKind,
    /// The rejected id.
    pub id: String,
    /// The rule it broke.
    pub rule: IdRule,
}

/// Checks an id against the one rule every id of the SDK follows: Kata's
/// runtime rule for container ids, `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`, and at
/// most [`MAX_ID_LEN`] bytes.
///
/// So `/`, `..`, NUL, whitespace and a leading `-` can never get through,
/// wherever the id ends up (paths, cgroup names, QEMU's command line).
/// Like Kata, and unlike runc and containerd, a one-character id is
/// refused.
pub fn validate_id(kind: IdKind, id: &str) -> Result<(), IdError> {
    let fail = |rule| {
        Err(IdError {
            kind,
            id: id.to_owned(),
            rule,
        })
    };
    let Some(first) = id.chars().next() else {
        return fail(IdRule::Empty);
    };
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return fail(IdRule::Character(c));
    }
    if !first.is_ascii_alphanumeric() {
        return fail(IdRule::Start);
    }
    if id.len() < 2 {
        return fail(IdRule::TooShort);
    }
    if id.len() > MAX_ID_LEN {
        return fail(IdRule::TooLong);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What this type names.
            pub const KIND: IdKind = $kind;

            /// Checks `id` with [`validate_id`].
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                validate_id(Self::KIND, &id)?;
                Ok(Self(id))
            }

            /// The id.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id, as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                std::path::Path::new(&self.0)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        #[cfg(feature = "slog")]
        impl slog::Value for $name {
            fn serialize(
                &self,
                _record: &slog::Record<'_>,
                key: slog::Key,
                serializer: &mut dyn slog::Serializer,
            ) -> slog::Result {
                serializer.emit_str(key, &self.0)
            }
        }
    };
}

id_type!(
    /// A sandbox id, valid by construction (see [`validate_id`]). Parse one
    /// with `"pod-1".parse()` or [`SandboxId::new`]; deserializing checks it
    /// too, so an id read from a state file is as safe as one from the API.
    SandboxId,
    IdKind::Sandbox
);

id_type!(
    /// A container id, valid by construction (see [`validate_id`]).
    ContainerId,
    IdKind::Container
);

id_type!(
    /// The id of an extra process run in a container (containerd's exec
    /// id), valid by construction (see [`validate_id`]).
    ExecId,
    IdKind::Exec
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(id: &str) -> IdRule {
        let e = validate_id(IdKind::Container, id).unwrap_err();
        assert_eq!(e.kind, IdKind::Container);
        assert_eq!(e.id, id);
        e.rule
    }

    #[test]
    fn accepts_usual_ids() {
        let sha = "f".repeat(64);
        for id in [
            "ab",
            "pod-1_x.y",
            "0abc",
            sha.as_str(),
            &"a".repeat(MAX_ID_LEN),
        ] {
            validate_id(IdKind::Sandbox, id).unwrap();
            assert_eq!(SandboxId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn names_the_rule_that_failed() {
        assert_eq!(rule(""), IdRule::Empty);
        assert_eq!(rule("a"), IdRule::TooShort);
        assert_eq!(rule(&"a".repeat(MAX_ID_LEN + 1)), IdRule::TooLong);
        assert_eq!(rule("a/b"), IdRule::Character('/'));
        assert_eq!(rule("a b"), IdRule::Character(' '));
        assert_eq!(rule("a\tb"), IdRule::Character('\t'));
        assert_eq!(rule("a\0b"), IdRule::Character('\0'));
        assert_eq!(rule("é"), IdRule::Character('é'));
        assert_eq!(rule(".."), IdRule::Start);
        assert_eq!(rule("-x"), IdRule::Start);
        let msg = SandboxId::new("a/b").unwrap_err().to_string();
        assert!(msg.contains("sandbox") && msg.contains("'/'"), "{msg}");
    }

    #[test]
    fn kata_runtime_test_inputs() {
        // The inputs of Kata's ContainerIDTestData (its runtime's id rule
        // tests), with Kata's verdicts.
        for bad in [
            "",
            " ",
            ".",
            "-",
            "_",
            " a",
            ".a",
            "-a",
            "_a",
            "..",
            "a",
            "z",
            "A",
            "Z",
            "0",
            "9",
            "-1",
            "/",
            "a/",
            "a/../",
            "../a",
            "../../a",
            "foo/../bar",
            "foo bar",
            "hello/../world",
        ] {
            assert!(validate_id(IdKind::Container, bad).is_err(), "{bad:?}");
        }
        for good in ["a.", "a..", "aa", "aa.", "hello..world"] {
            validate_id(IdKind::Container, good).unwrap();
        }
    }

    #[test]
    fn deserializing_checks_the_id() {
        let id: ContainerId = serde_json::from_str("\"app-1\"").unwrap();
        assert_eq!(id, "app-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"app-1\"");
        let bad = serde_json::from_str::<ContainerId>("\"../x\"").unwrap_err();
        assert!(bad.to_string().contains("must not contain '/'"), "{bad}");
    }

    proptest! {
        #[test]
        fn an_accepted_id_is_a_safe_path_component(id in "\\PC{0,90}") {
            if let Ok(id) = SandboxId::new(id.clone()) {
                let path = std::path::Path::new("/run").join(id.as_str());
                prop_assert_eq!(path.components().count(), 3);
                prop_assert!(!id.starts_with('-') && !id.starts_with('.'));
                prop_assert!(id.len() <= MAX_ID_LEN && id.len() >= 2);
            }
        }
    }
}
