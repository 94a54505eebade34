//! The containers' cgroups in the guest (cgroup v2, mounted by the agent at
//! `/sys/fs/cgroup`): one directory per container, its resources, stats and
//! freezer. Parsing is pure and unit-tested.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use protobuf::MessageField;
use vc_agent_protocol::agent as pb;

use crate::error::{Error, Result};

/// Parses `key value` lines (`cpu.stat`, `memory.stat`).
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Parses a single value that may be `max` (no limit: `None`).
pub fn parse_single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

fn read(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file)).ok()
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(Error::io("writing", path))
}

/// Builds Kata's `CgroupStats` from a v2 cgroup directory. Files that are
/// missing (controller not enabled) leave their part empty.
pub fn stats(dir: &Path) -> pb::CgroupStats {
    let mut out = pb::CgroupStats::new();
    if let Some(cpu) = read(dir, "cpu.stat").map(|t| parse_flat_keyed(&t)) {
        let mut usage = pb::CpuUsage::new();
        usage.total_usage = cpu.get("usage_usec").copied().unwrap_or(0) * 1000;
        usage.usage_in_usermode = cpu.get("user_usec").copied().unwrap_or(0) * 1000;
        usage.usage_in_kernelmode = cpu.get("system_usec").copied().unwrap_or(0) * 1000;
        let mut throttling = pb::ThrottlingData::new();
        throttling.periods = cpu.get("nr_periods").copied().unwrap_or(0);
        throttling.throttled_periods = cpu.get("nr_throttled").copied().unwrap_or(0);
        throttling.throttled_time = cpu.get("throttled_usec").copied().unwrap_or(0) * 1000;
        let mut cs = pb::CpuStats::new();
        cs.cpu_usage = MessageField::some(usage);
        cs.throttling_data = MessageField::some(throttling);
        out.cpu_stats = MessageField::some(cs);
    }
    if let Some(current) = read(dir, "memory.current").and_then(|t| parse_single(&t)) {
        let mut usage = pb::MemoryData::new();
        usage.usage = current;
        usage.max_usage = read(dir, "memory.peak")
            .and_then(|t| parse_single(&t))
            .unwrap_or(0);
        usage.limit = read(dir, "memory.max")
            .and_then(|t| parse_single(&t))
            .unwrap_or(u64::MAX);
        let mut ms = pb::MemoryStats::new();
        let stat = read(dir, "memory.stat")
            .map(|t| parse_flat_keyed(&t))
            .unwrap_or_default();
        ms.cache = stat.get("file").copied().unwrap_or(0);
        ms.usage = MessageField::some(usage);
        ms.use_hierarchy = true;
        ms.stats = stat;
        out.memory_stats = MessageField::some(ms);
    }
    if let Some(current) = read(dir, "pids.current").and_then(|t| parse_single(&t)) {
        let mut ps = pb::PidsStats::new();
        ps.current = current;
        ps.limit = read(dir, "pids.max")
            .and_then(|t| parse_single(&t))
            .unwrap_or(0);
        out.pids_stats = MessageField::some(ps);
    }
    out
}

/// A container's cgroup directory.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    /// Its ancestors below the agent's root (outermost first), removed
    /// after it when no other container uses them.
    parents: Vec<PathBuf>,
}

/// The container's cgroup, relative: the spec's `linux.cgroupsPath` (as
/// the runtime sends it, a cgroupfs path; taken from the top of the
/// hierarchy) or the container id when it has none (taken from the
/// agent's own directory). A path that could leave the hierarchy is
/// refused.
pub fn container_cgroup_path(container_id: &str, cgroups_path: Option<&Path>) -> Result<PathBuf> {
    let Some(path) = cgroups_path else {
        return Ok(PathBuf::from(container_id));
    };
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(n) => rel.push(n),
            _ => {
                return Err(Error::InvalidRequest {
                    container_id: container_id.to_owned(),
                    reason: format!(
                        "linux.cgroupsPath {} leaves the cgroup root",
                        path.display()
                    ),
                });
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(Error::InvalidRequest {
            container_id: container_id.to_owned(),
            reason: "linux.cgroupsPath names the cgroup root".into(),
        });
    }
    Ok(rel)
}

impl Cgroup {
    /// Creates `<root>/<container_id>`.
    pub fn create(root: &Path, container_id: &str) -> Result<Cgroup> {
        Self::create_at(root, Path::new(container_id))
    }

    /// Creates `<root>/<rel>`, making the missing parents with the
    /// controllers `root` gives its children enabled for theirs (cgroup v2
    /// hands a controller down one level at a time). An existing cgroup is
    /// an error: one container per cgroup.
    pub fn create_at(root: &Path, rel: &Path) -> Result<Cgroup> {
        let controllers = read(root, "cgroup.subtree_control").unwrap_or_default();
        let enable: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        let mut parents = Vec::new();
        let mut dir = root.to_path_buf();
        let components: Vec<_> = rel.components().collect();
        for (i, c) in components.iter().enumerate() {
            dir.push(c);
            let last = i + 1 == components.len();
            if last {
                if let Err(e) = fs::create_dir(&dir) {
                    let cg = Cgroup {
                        dir: dir.clone(),
                        parents,
                    };
                    cg.remove_parents();
                    return Err(Error::io("creating cgroup", &dir)(e));
                }
                break;
            }
            // Parents another container made count too: the agent owns
            // everything below its root, and the last one out removes them.
            parents.push(dir.clone());
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    let cg = Cgroup {
                        dir: dir.clone(),
                        parents,
                    };
                    cg.remove_parents();
                    return Err(Error::io("creating cgroup", &dir)(e));
                }
            }
            if !enable.is_empty() {
                // Already enabled is fine; a failure shows when limits are
                // written.
                let _ = write(&dir, "cgroup.subtree_control", &enable.join(" "));
            }
        }
        Ok(Cgroup { dir, parents })
    }

    /// Removes its ancestors below the root, innermost first, stopping at
    /// one another container still uses.
    pub(crate) fn remove_parents(&self) {
        for p in self.parents.iter().rev() {
            if fs::remove_dir(p).is_err() {
                break;
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Moves a process in.
    pub fn add(&self, pid: libc::pid_t) -> Result<()> {
        write(&self.dir, "cgroup.procs", &pid.to_string())
    }

    /// The pids in it.
    pub fn pids(&self) -> Vec<libc::pid_t> {
        read(&self.dir, "cgroup.procs")
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Applies memory, CPU and pids limits (the controllers the agent enables).
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
            write(
                &self.dir,
                "memory.max",
                &if limit < 0 {
                    "max".into()
                } else {
                    limit.to_string()
                },
            )?;
        }
        if let Some(cpu) = r.cpu() {
            if cpu.quota().is_some() || cpu.period().is_some() {
                let quota = cpu
                    .quota()
                    .filter(|q| *q > 0)
                    .map_or("max".to_owned(), |q| q.to_string());
                let period = cpu.period().unwrap_or(100_000);
                write(&self.dir, "cpu.max", &format!("{quota} {period}"))?;
            }
            if let Some(shares) = cpu.shares() {
                // The runc/crun conversion of v1 shares [2, 262144] to v2 weight [1, 10000].
                let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
                write(&self.dir, "cpu.weight", &weight.to_string())?;
            }
        }
        if let Some(p) = r.pids() {
            write(
                &self.dir,
                "pids.max",
                &if p.limit() > 0 {
                    p.limit().to_string()
                } else {
                    "max".into()
                },
            )?;
        }
        Ok(())
    }

    /// Freezes or thaws every process in it.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        write(&self.dir, "cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// The statistics.
    pub fn stats(&self) -> pb::CgroupStats {
        stats(&self.dir)
    }

    /// Removes the directory (it must be empty of processes).
    pub fn remove(self) -> Result<()> {
        fs::remove_dir(&self.dir).map_err(Error::io("removing cgroup", &self.dir))?;
        self.remove_parents();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroups_path_is_made_below_the_root_and_its_parents_go_with_it() {
        let root = tempfile::tempdir().unwrap();
        // A plain directory stands in for cgroupfs: mkdir/rmdir are what count.
        fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let rel = container_cgroup_path("c1", Some(Path::new("/kubepods/pod1/c1"))).unwrap();
        assert_eq!(rel, Path::new("kubepods/pod1/c1"));
        let a = Cgroup::create_at(root.path(), &rel).unwrap();
        assert_eq!(a.path(), root.path().join("kubepods/pod1/c1"));
        let rel_b = container_cgroup_path("c2", Some(Path::new("kubepods/pod1/c2"))).unwrap();
        let b = Cgroup::create_at(root.path(), &rel_b).unwrap();
        assert!(
            Cgroup::create_at(root.path(), &rel).is_err(),
            "one container per cgroup"
        );
        assert!(
            root.path().join("kubepods/pod1").is_dir(),
            "a failed create keeps parents in use"
        );
        a.remove().unwrap();
        assert!(
            root.path().join("kubepods/pod1").is_dir(),
            "c2 still uses the parents"
        );
        b.remove().unwrap();
        assert!(
            !root.path().join("kubepods").exists(),
            "the last one out removes them"
        );
    }

    #[test]
    fn a_cgroups_path_that_leaves_the_root_is_refused() {
        assert_eq!(container_cgroup_path("c1", None).unwrap(), Path::new("c1"));
        for bad in ["/a/../../x", "/", "..", "a/./../b"] {
            assert!(
                matches!(
                    container_cgroup_path("c1", Some(Path::new(bad))),
                    Err(Error::InvalidRequest { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn stats_from_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n").unwrap();
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        fs::write(d.join("memory.max"), "max\n").unwrap();
        fs::write(d.join("memory.stat"), "anon 1024\nfile 2048\n").unwrap();
        fs::write(d.join("pids.current"), "2\n").unwrap();
        fs::write(d.join("pids.max"), "64\n").unwrap();
        let s = stats(d);
        let cpu = s.cpu_stats.cpu_usage.as_ref().unwrap();
        assert_eq!(
            (
                cpu.total_usage,
                cpu.usage_in_usermode,
                cpu.usage_in_kernelmode
            ),
            (1_500_000, 1_000_000, 500_000)
        );
        assert_eq!(s.cpu_stats.throttling_data.throttled_periods, 1);
        let mem = s.memory_stats.as_ref().unwrap();
        assert_eq!(mem.usage.usage, 4096);
        assert_eq!(mem.usage.limit, u64::MAX, "max means no limit");
        assert_eq!(mem.cache, 2048);
        assert_eq!(mem.stats.get("anon"), Some(&1024));
        assert_eq!((s.pids_stats.current, s.pids_stats.limit), (2, 64));
    }

    #[test]
    fn missing_controllers_leave_parts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let s = stats(dir.path());
        assert!(s.cpu_stats.is_none() && s.memory_stats.is_none() && s.pids_stats.is_none());
    }

    #[test]
    fn resources_are_written_as_v2_values() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::create(dir.path(), "c1").unwrap();
        let r = oci_spec::runtime::LinuxResourcesBuilder::default()
            .memory(
                oci_spec::runtime::LinuxMemoryBuilder::default()
                    .limit(1i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                oci_spec::runtime::LinuxCpuBuilder::default()
                    .quota(50_000i64)
                    .period(100_000u64)
                    .shares(1024u64)
                    .build()
                    .unwrap(),
            )
            .pids(
                oci_spec::runtime::LinuxPidsBuilder::default()
                    .limit(10i64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        cg.apply(&r).unwrap();
        let get = |f: &str| fs::read_to_string(cg.path().join(f)).unwrap();
        assert_eq!(get("memory.max"), "1048576");
        assert_eq!(get("cpu.max"), "50000 100000");
        assert_eq!(get("cpu.weight"), "39");
        assert_eq!(get("pids.max"), "10");
    }
}
