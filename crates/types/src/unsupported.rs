//! "This host or backend cannot do that", in one shape for every crate.

use std::borrow::Cow;

/// A request that needs something this host, backend or driver lacks.
///
/// Every crate of the SDK reports such a request with this type (each in
/// its own error enum, as `Error::Unsupported(Unsupported)`), so a caller
/// can tell "not possible here" apart from "failed" the same way at every
/// layer, and show `feature` and `reason` to a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{feature} is not supported: {reason}")]
pub struct Unsupported {
    /// What was asked for (`hot-plug of 9p shares`, `vsock`, ...).
    pub feature: Cow<'static, str>,
    /// Why not, and where possible what to do instead.
    pub reason: Cow<'static, str>,
}

impl Unsupported {
    /// `feature` is not supported, because `reason`.
    pub fn new(
        feature: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Unsupported {
            feature: feature.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_and_why() {
        let u = Unsupported::new("vsock", format!("no {}", "/dev/vhost-vsock"));
        assert_eq!(u.to_string(), "vsock is not supported: no /dev/vhost-vsock");
    }
}
