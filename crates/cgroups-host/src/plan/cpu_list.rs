//! Linux CPU and memory-node lists (`0-3,8`), as used by `cpuset.cpus`,
//! `cpuset.mems` and `/sys/devices/system/cpu/online`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{CpuListError, Error};

/// The largest CPU or node number accepted in a list.
///
/// The kernel's `NR_CPUS` tops out at 8192 on x86_64; anything larger is a
/// typo, and accepting it would let `0-4294967295` allocate a huge set.
pub const MAX_CPU_INDEX: u32 = 8191;

/// A set of CPU (or memory node) numbers, parsed from and printed as the
/// Linux list syntax: comma-separated numbers and inclusive ranges, e.g.
/// `0-3,8`. Printing is canonical: sorted, merged ranges, no spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CpuList(BTreeSet<u32>);

impl TryFrom<String> for CpuList {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<CpuList> for String {
    fn from(l: CpuList) -> String {
        l.to_string()
    }
}

impl CpuList {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of CPUs (or nodes) in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// The union of `self` and `other`.
    pub fn union(&self, other: &CpuList) -> CpuList {
        CpuList(self.0.union(&other.0).copied().collect())
    }

    /// Adds every CPU of `other` to `self`.
    pub fn extend(&mut self, other: &CpuList) {
        self.0.extend(other.0.iter().copied());
    }
}

impl FromIterator<u32> for CpuList {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        CpuList(iter.into_iter().collect())
    }
}

impl FromStr for CpuList {
    type Err = Error;

    /// Parses the Linux list syntax. Surrounding whitespace (a trailing
    /// newline read from sysfs) is ignored; an empty string is the empty set.
    fn from_str(list: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidCpuList {
            list: list.to_owned(),
            reason,
        };
        let trimmed = list.trim();
        let mut set = BTreeSet::new();
        if trimmed.is_empty() {
            return Ok(CpuList(set));
        }
        for item in trimmed.split(',') {
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (parse_index(a, list)?, parse_index(b, list)?),
                None => {
                    let n = parse_index(item, list)?;
                    (n, n)
                }
            };
            if first > last {
                return Err(invalid(CpuListError::DescendingRange { first, last }));
            }
            set.extend(first..=last);
        }
        Ok(CpuList(set))
    }
}

fn parse_index(text: &str, list: &str) -> Result<u32, Error> {
    let invalid = |reason| Error::InvalidCpuList {
        list: list.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(invalid(CpuListError::EmptyItem));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(CpuListError::NotANumber(text.to_owned())));
    }
    let n: u32 = text
        .parse()
        .map_err(|_| invalid(CpuListError::TooLarge(text.to_owned())))?;
    if n > MAX_CPU_INDEX {
        return Err(invalid(CpuListError::TooLarge(text.to_owned())));
    }
    Ok(n)
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut iter = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> CpuList {
        s.parse().unwrap()
    }

    #[test]
    fn parses_numbers_and_ranges() {
        let l = parse("0-3,8");
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 8]);
        assert_eq!(l.len(), 5);
        assert_eq!(parse("7\n").iter().collect::<Vec<_>>(), vec![7]);
        assert!(parse("").is_empty());
        assert!(parse(" \n").is_empty());
    }

    #[test]
    fn prints_canonically() {
        assert_eq!(parse("8,3,2,1,0").to_string(), "0-3,8");
        assert_eq!(parse("0-2,3-5,9,10").to_string(), "0-5,9-10");
        assert_eq!(parse("4").to_string(), "4");
        assert_eq!(parse("1,1,1").to_string(), "1");
        assert_eq!(CpuList::new().to_string(), "");
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in [
            "a",
            "1-",
            "-1",
            "1,,2",
            "3-1",
            "1-2-3",
            "0x1",
            "1 2",
            "+1",
            "8192",
            "99999999999",
        ] {
            let err = bad.parse::<CpuList>().unwrap_err();
            assert!(
                matches!(err, Error::InvalidCpuList { ref list, .. } if list == bad),
                "{bad:?} gave {err:?}"
            );
        }
        assert!(matches!(
            "3-1".parse::<CpuList>(),
            Err(Error::InvalidCpuList {
                reason: CpuListError::DescendingRange { first: 3, last: 1 },
                ..
            })
        ));
    }

    #[test]
    fn union_merges() {
        assert_eq!(parse("0-1").union(&parse("1-3,8")).to_string(), "0-3,8");
    }

    proptest! {
        #[test]
        fn print_then_parse_round_trips(cpus in proptest::collection::btree_set(0u32..512, 0..64)) {
            let list: CpuList = cpus.iter().copied().collect();
            let printed = list.to_string();
            prop_assert_eq!(printed.parse::<CpuList>().unwrap(), list);
        }

        #[test]
        fn union_is_idempotent_and_commutative(
            a in proptest::collection::btree_set(0u32..256, 0..32),
            b in proptest::collection::btree_set(0u32..256, 0..32),
        ) {
            let a: CpuList = a.into_iter().collect();
            let b: CpuList = b.into_iter().collect();
            prop_assert_eq!(a.union(&a), a.clone());
            prop_assert_eq!(a.union(&b), b.union(&a));
            prop_assert_eq!(a.union(&b).union(&b), a.union(&b));
        }
    }
}
