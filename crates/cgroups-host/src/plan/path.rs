//! Cgroup paths: validated cgroupfs paths and the systemd driver's
//! `slice:prefix:name` form.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, PathError, SystemdPathError};

/// Longest cgroup directory name the kernel accepts (`NAME_MAX`).
const MAX_COMPONENT_LEN: usize = 255;

/// A path inside a cgroup hierarchy, relative to its root, in canonical form:
/// starts with `/`, no empty, `.` or `..` components, no trailing `/`.
///
/// It can never resolve outside the hierarchy it is joined to: `..` is
/// rejected rather than normalised, so an attacker-controlled OCI
/// `cgroupsPath` cannot climb out of the cgroup mount.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CgroupPath(String);

/// Filesystem prefixes that show a path was meant as a mount path, not a
/// path inside the hierarchy.
const MOUNT_PREFIXES: &[&str] = &["/sys/fs/cgroup/", "/proc/"];

impl CgroupPath {
    /// Parses and validates a cgroup path. A leading `/` is optional (OCI
    /// paths are relative to the hierarchy root either way); `.` components
    /// and repeated slashes are dropped.
    pub fn parse(path: &str) -> Result<Self, Error> {
        let reject = |reason| {
            Err(Error::InvalidCgroupPath {
                path: path.to_owned(),
                reason,
            })
        };
        if path.is_empty() {
            return reject(PathError::Empty);
        }
        if path.contains('\0') {
            return reject(PathError::NulByte);
        }
        if path.chars().any(char::is_control) {
            return reject(PathError::ControlCharacter);
        }
        if MOUNT_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return reject(PathError::MountPath);
        }
        let mut canonical = String::with_capacity(path.len() + 1);
        for component in path.split('/') {
            match component {
                "" | "." => continue,
                ".." => return reject(PathError::ParentComponent),
                c if c.len() > MAX_COMPONENT_LEN => return reject(PathError::ComponentTooLong),
                c => {
                    canonical.push('/');
                    canonical.push_str(c);
                }
            }
        }
        if canonical.is_empty() {
            canonical.push('/');
        }
        Ok(CgroupPath(canonical))
    }

    /// The hierarchy root, `/`.
    pub fn root() -> Self {
        CgroupPath("/".to_owned())
    }

    /// Whether this is the hierarchy root.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The path as a string, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without its leading `/`, for joining onto a mount point.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }

    /// This path with one more component. `name` must be a valid single
    /// component (a validated sandbox id, a unit name, ...).
    pub fn join(&self, name: &str) -> Result<Self, Error> {
        if name.contains('/') || name.is_empty() {
            return Err(Error::InvalidCgroupPath {
                path: format!("{}/{}", self.0, name),
                reason: PathError::Empty,
            });
        }
        CgroupPath::parse(&format!("{}/{}", self.0, name))
    }

    /// The parent path, or `None` for the root.
    pub fn parent(&self) -> Option<CgroupPath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/').unwrap_or(0);
        Some(if cut == 0 {
            CgroupPath::root()
        } else {
            CgroupPath(self.0[..cut].to_owned())
        })
    }

    /// This path and its ancestors, from the root's child down to itself.
    pub fn ancestry(&self) -> Vec<CgroupPath> {
        let mut chain = Vec::new();
        let mut current = Some(self.clone());
        while let Some(p) = current {
            if p.is_root() {
                break;
            }
            current = p.parent();
            chain.push(p);
        }
        chain.reverse();
        chain
    }
}

impl fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CgroupPath {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        CgroupPath::parse(&s)
    }
}

impl From<CgroupPath> for String {
    fn from(p: CgroupPath) -> String {
        p.0
    }
}

/// The systemd cgroup driver's path form, `slice:prefix:name`, as used in
/// OCI `cgroupsPath` by runc, crun and Kata with `systemd_cgroup = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdCgroupPath {
    slice: String,
    prefix: String,
    name: String,
    path: CgroupPath,
}

/// The slice systemd places units in when none is given.
pub const DEFAULT_SYSTEMD_SLICE: &str = "system.slice";

impl SystemdCgroupPath {
    /// Parses `slice:prefix:name`. An empty slice means
    /// [`DEFAULT_SYSTEMD_SLICE`].
    pub fn parse(path: &str) -> Result<Self, Error> {
        let reject = |reason| {
            Err(Error::InvalidSystemdPath {
                path: path.to_owned(),
                reason,
            })
        };
        let parts: Vec<&str> = path.split(':').collect();
        let [slice, prefix, name] = parts.as_slice() else {
            return reject(SystemdPathError::NotThreeParts);
        };
        let slice = if slice.is_empty() {
            DEFAULT_SYSTEMD_SLICE
        } else {
            slice
        };
        if name.is_empty() {
            return reject(SystemdPathError::EmptyName);
        }
        for part in [slice, prefix, name] {
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@'))
            {
                return reject(SystemdPathError::BadCharacter);
            }
        }
        let unit = unit_name(prefix, name);
        let expanded = if unit.ends_with(".slice") {
            expand_slice(&unit)
        } else {
            expand_slice(slice).map(|parent| format!("{parent}/{unit}"))
        };
        let expanded = match expanded {
            Ok(expanded) => expanded,
            Err(reason) => return reject(reason),
        };
        Ok(SystemdCgroupPath {
            slice: slice.to_owned(),
            prefix: (*prefix).to_owned(),
            name: (*name).to_owned(),
            path: CgroupPath::parse(&expanded)?,
        })
    }

    /// The parent slice, e.g. `kubepods-burstable-pod1234.slice`.
    pub fn slice(&self) -> &str {
        &self.slice
    }

    /// The scope prefix, e.g. `cri-containerd`; may be empty.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The unit name part: an id (becoming `prefix-name.scope`) or a `.slice`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The systemd unit this path names: `prefix-name.scope`, `name.scope`
    /// without a prefix, or `name` itself when it is a slice.
    pub fn unit_name(&self) -> String {
        unit_name(&self.prefix, &self.name)
    }

    /// The cgroupfs path systemd gives the unit: the parent slice expanded
    /// into its ancestry (`a-b.slice` is `/a.slice/a-b.slice`), then the unit.
    pub fn cgroup_path(&self) -> &CgroupPath {
        &self.path
    }
}

fn unit_name(prefix: &str, name: &str) -> String {
    if name.ends_with(".slice") {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    }
}

impl fmt::Display for SystemdCgroupPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.slice, self.prefix, self.name)
    }
}

/// Expands a slice name into its cgroupfs path the way systemd does:
/// `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is
/// the root.
fn expand_slice(slice: &str) -> Result<String, SystemdPathError> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(SystemdPathError::NotASlice);
    };
    if stem == "-" {
        return Ok("/".to_owned());
    }
    if stem.is_empty() || stem.contains('/') {
        return Err(SystemdPathError::MalformedSlice);
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in stem.split('-') {
        if component.is_empty() {
            return Err(SystemdPathError::MalformedSlice);
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(component);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_canonical() {
        assert_eq!(CgroupPath::parse("/a/b").unwrap().as_str(), "/a/b");
        assert_eq!(CgroupPath::parse("a/b/").unwrap().as_str(), "/a/b");
        assert_eq!(CgroupPath::parse("//a/./b").unwrap().as_str(), "/a/b");
        assert_eq!(CgroupPath::parse("/").unwrap(), CgroupPath::root());
        assert_eq!(CgroupPath::parse("/a/b").unwrap().relative(), "a/b");
    }

    #[test]
    fn cgroup_paths_that_could_escape_are_rejected() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/a/../../etc", PathError::ParentComponent),
            ("..", PathError::ParentComponent),
            ("/a/..", PathError::ParentComponent),
            ("/a\0b", PathError::NulByte),
            ("/a\nb", PathError::ControlCharacter),
            ("/sys/fs/cgroup/cpu/x", PathError::MountPath),
            ("/proc/1/root", PathError::MountPath),
        ];
        for (bad, why) in cases {
            match CgroupPath::parse(bad) {
                Err(Error::InvalidCgroupPath { reason, path }) => {
                    assert_eq!(reason, *why, "{bad:?}");
                    assert_eq!(path, *bad);
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = format!("/{}", "x".repeat(256));
        assert!(matches!(
            CgroupPath::parse(&long),
            Err(Error::InvalidCgroupPath {
                reason: PathError::ComponentTooLong,
                ..
            })
        ));
    }

    #[test]
    fn parent_join_and_ancestry() {
        let p = CgroupPath::parse("/a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "/a/b");
        assert_eq!(
            CgroupPath::parse("/a").unwrap().parent(),
            Some(CgroupPath::root())
        );
        assert_eq!(CgroupPath::root().parent(), None);
        assert_eq!(p.join("d").unwrap().as_str(), "/a/b/c/d");
        assert!(p.join("..").is_err());
        assert!(p.join("x/y").is_err());
        let chain: Vec<String> = p.ancestry().iter().map(|p| p.to_string()).collect();
        assert_eq!(chain, ["/a", "/a/b", "/a/b/c"]);
        assert!(CgroupPath::root().ancestry().is_empty());
    }

    #[test]
    fn cgroup_path_serde_validates() {
        let p: CgroupPath = serde_json::from_str("\"/a/b\"").unwrap();
        assert_eq!(p.as_str(), "/a/b");
        assert!(serde_json::from_str::<CgroupPath>("\"/a/../b\"").is_err());
    }

    #[test]
    fn systemd_paths_expand_like_systemd() {
        let p = SystemdCgroupPath::parse("kubepods-burstable-pod1234.slice:cri-containerd:abc")
            .unwrap();
        assert_eq!(p.unit_name(), "cri-containerd-abc.scope");
        assert_eq!(
            p.cgroup_path().as_str(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abc.scope"
        );

        let default_slice = SystemdCgroupPath::parse(":vc:sb1").unwrap();
        assert_eq!(default_slice.slice(), DEFAULT_SYSTEMD_SLICE);
        assert_eq!(
            default_slice.cgroup_path().as_str(),
            "/system.slice/vc-sb1.scope"
        );

        let no_prefix = SystemdCgroupPath::parse("machine.slice::sb1").unwrap();
        assert_eq!(no_prefix.cgroup_path().as_str(), "/machine.slice/sb1.scope");

        let slice_unit = SystemdCgroupPath::parse("kubepods.slice::kubepods-pod1.slice").unwrap();
        assert_eq!(
            slice_unit.cgroup_path().as_str(),
            "/kubepods.slice/kubepods-pod1.slice"
        );

        let root = SystemdCgroupPath::parse("-.slice::sb").unwrap();
        assert_eq!(root.cgroup_path().as_str(), "/sb.scope");
        assert_eq!(root.to_string(), "-.slice::sb");
    }

    #[test]
    fn malformed_systemd_paths_are_rejected() {
        let cases: &[(&str, SystemdPathError)] = &[
            ("a.slice:b", SystemdPathError::NotThreeParts),
            ("a.slice:b:c:d", SystemdPathError::NotThreeParts),
            ("/kubepods/pod1", SystemdPathError::NotThreeParts),
            ("kubepods:cri:abc", SystemdPathError::NotASlice),
            ("a--b.slice:cri:abc", SystemdPathError::MalformedSlice),
            ("-a.slice:cri:abc", SystemdPathError::MalformedSlice),
            (".slice:cri:abc", SystemdPathError::MalformedSlice),
            ("a.slice:cri:", SystemdPathError::EmptyName),
            ("a.slice:cri:a/b", SystemdPathError::BadCharacter),
            ("a.slice:c ri:ab", SystemdPathError::BadCharacter),
            ("a.slice:cri:x--y.slice", SystemdPathError::MalformedSlice),
        ];
        for (bad, why) in cases {
            match SystemdCgroupPath::parse(bad) {
                Err(Error::InvalidSystemdPath { reason, .. }) => {
                    assert_eq!(reason, *why, "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
