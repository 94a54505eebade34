//! Sandbox and container ids.

use std::fmt;

use crate::error::Error;

/// Longest id accepted: the length of a hex SHA-256 (containerd's ids).
pub const MAX_ID_LEN: usize = 64;

/// What an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Checks an id: non-empty, at most [`MAX_ID_LEN`] bytes, only
/// `[A-Za-z0-9_.-]`, starting with a letter or digit. Ids name directories,
/// cgroups, sockets and VMs, so `/`, `..`, NUL and whitespace can never get
/// through.
pub fn validate_id(kind: IdKind, id: &str) -> Result<(), Error> {
    let fail = |rule| {
        Err(Error::InvalidId {
            kind,
            id: id.to_owned(),
            rule,
        })
    };
    if id.is_empty() {
        return fail(IdRule::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return fail(IdRule::TooLong);
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return fail(IdRule::Character(c));
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return fail(IdRule::Start);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str) -> IdRule {
        match validate_id(IdKind::Container, id) {
            Err(Error::InvalidId { rule, kind, .. }) => {
                assert_eq!(kind, IdKind::Container);
                rule
            }
            other => panic!("{id:?}: {other:?}"),
        }
    }

    #[test]
    fn accepts_usual_ids() {
        for id in ["a", "pod-1_x.y", &"a".repeat(64), "0abc"] {
            validate_id(IdKind::Sandbox, id).unwrap();
        }
    }

    #[test]
    fn names_the_rule_that_failed() {
        assert_eq!(rule(""), IdRule::Empty);
        assert_eq!(rule(&"a".repeat(65)), IdRule::TooLong);
        assert_eq!(rule("a/b"), IdRule::Character('/'));
        assert_eq!(rule("a b"), IdRule::Character(' '));
        assert_eq!(rule("a\tb"), IdRule::Character('\t'));
        assert_eq!(rule("a\0b"), IdRule::Character('\0'));
        assert_eq!(rule("é"), IdRule::Character('é'));
        assert_eq!(rule(".."), IdRule::Start);
        assert_eq!(rule("-x"), IdRule::Start);
        let msg = validate_id(IdKind::Sandbox, "a/b").unwrap_err().to_string();
        assert!(msg.contains("sandbox") && msg.contains("'/'"), "{msg}");
    }
}
