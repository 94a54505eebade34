//! A `cgroups-rs` hierarchy rooted where we are told, not where the crate
//! guesses: its own `V1`/`V2` read `/proc/self/mountinfo` and hard-code
//! `/sys/fs/cgroup`, which would defeat the roots our factory takes.

use std::path::{Path, PathBuf};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::devices::DevicesController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Hierarchy, Subsystem};

use super::mounts::V1Mounts;

/// A cgroup hierarchy at explicit mount points.
#[derive(Debug, Clone)]
pub(crate) enum FixedHierarchy {
    /// cgroup v1: one mount per controller.
    V1(V1Mounts),
    /// cgroup v2: one mount, with the controllers we drive.
    V2 {
        /// The cgroup2 mount point.
        root: PathBuf,
        /// Controllers to expose (those available at the root).
        controllers: Vec<String>,
    },
}

impl FixedHierarchy {
    /// A handle on the cgroup at `path` (relative to the hierarchy root).
    pub(crate) fn cgroup(&self, path: &str) -> Cgroup {
        Cgroup::load(Box::new(self.clone()), path)
    }
}

fn v1_subsystem(controller: &str, point: &Path) -> Option<Subsystem> {
    let p = point.to_path_buf();
    let root = point.to_path_buf();
    Some(match controller {
        "cpu" => Subsystem::Cpu(CpuController::new(p, root, false)),
        "cpuacct" => Subsystem::CpuAcct(CpuAcctController::new(p, root)),
        "cpuset" => Subsystem::CpuSet(CpuSetController::new(p, root, false)),
        "memory" => Subsystem::Mem(MemController::new(p, root, false)),
        "pids" => Subsystem::Pid(PidController::new(p, root, false)),
        "devices" => Subsystem::Devices(DevicesController::new(p, root)),
        _ => return None,
    })
}

fn v2_subsystem(controller: &str, root: &Path) -> Option<Subsystem> {
    let p = root.to_path_buf();
    let base = root.to_path_buf();
    Some(match controller {
        "cpu" => Subsystem::Cpu(CpuController::new(p, base, true)),
        "cpuset" => Subsystem::CpuSet(CpuSetController::new(p, base, true)),
        "memory" => Subsystem::Mem(MemController::new(p, base, true)),
        "pids" => Subsystem::Pid(PidController::new(p, base, true)),
        _ => return None,
    })
}

impl Hierarchy for FixedHierarchy {
    fn subsystems(&self) -> Vec<Subsystem> {
        match self {
            FixedHierarchy::V1(mounts) => mounts
                .iter()
                .filter_map(|(c, point)| v1_subsystem(c, point))
                .collect(),
            FixedHierarchy::V2 { root, controllers } => {
                // cgroups-rs reaches cgroup.procs, cgroup.threads and
                // cgroup.type through the first subsystem, which must know
                // it is on v2 (its freezer does not) and must exist even
                // where no controller is enabled: a pids handle does both,
                // as those files are in every cgroup.
                std::iter::once("pids")
                    .chain(
                        controllers
                            .iter()
                            .map(String::as_str)
                            .filter(|c| *c != "pids"),
                    )
                    .filter_map(|c| v2_subsystem(c, root))
                    .collect()
            }
        }
    }

    fn root(&self) -> PathBuf {
        match self {
            FixedHierarchy::V1(mounts) => mounts
                .iter()
                .next()
                .and_then(|(_, p)| p.parent())
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            FixedHierarchy::V2 { root, .. } => root.clone(),
        }
    }

    fn root_control_group(&self) -> Cgroup {
        self.cgroup("")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.cgroup(&parent)
    }

    fn v2(&self) -> bool {
        matches!(self, FixedHierarchy::V2 { .. })
    }
}
