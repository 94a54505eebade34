//! Ids unique to one test in one run, valid wherever the SDK takes an id.

use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every [`unique`] id: a leak check can find what any test
/// of this suite left behind by it.
pub const ID_PREFIX: &str = "vct-";

/// A new id `vct-<tag>-<pid>-<n>`, unique within this host's running
/// tests, and a valid [`vc_types::SandboxId`] and container id (the tag is
/// cut so that the id fits [`vc_types::MAX_ID_LEN`]).
///
/// # Panics
/// When `tag` holds a character other than `[A-Za-z0-9_.-]`: the id would
/// be refused by the SDK, and the test would check the wrong thing.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    assert!(
        tag.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')),
        "unique({tag:?}): a tag is made of [A-Za-z0-9_.-]"
    );
    let suffix = format!(
        "-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let room = vc_types::MAX_ID_LEN - ID_PREFIX.len() - suffix.len();
    let tag = &tag[..tag.len().min(room)];
    format!("{ID_PREFIX}{tag}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_valid_sandbox_ids() {
        let long = "x".repeat(200);
        let ids: Vec<String> = ["a", "run", "with.dots_and-dashes", "", long.as_str()]
            .iter()
            .map(|t| unique(t))
            .collect();
        for id in &ids {
            vc_types::SandboxId::new(id.as_str())
                .unwrap_or_else(|e| panic!("{id:?} is no sandbox id: {e}"));
            vc_types::ContainerId::new(id.as_str())
                .unwrap_or_else(|e| panic!("{id:?} is no container id: {e}"));
            assert!(id.starts_with(ID_PREFIX), "{id}");
        }
        assert_eq!(ids[4].len(), vc_types::MAX_ID_LEN);
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn a_tag_the_sdk_would_refuse_fails() {
        assert!(std::panic::catch_unwind(|| unique("a/b")).is_err());
        assert!(std::panic::catch_unwind(|| unique("a b")).is_err());
    }
}
