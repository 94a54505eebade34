//! Writes settings and device rules through `cgroups-rs` controllers.

use std::path::Path;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::devices::{DevicePermissions, DeviceType, DevicesController};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Cgroup, Controller, MaxValue};

use crate::error::Error;
use crate::plan::{CgroupVersion, DeviceAccess, DeviceKind, DeviceRule, FileValue, Setting};

fn controller<'a, T>(cgroup: &'a Cgroup, name: &'static str, dir: &Path) -> Result<&'a T, Error>
where
    &'a T: From<&'a cgroups_rs::fs::Subsystem>,
    T: Controller + cgroups_rs::fs::ControllIdentifier,
{
    cgroup
        .controller_of::<T>()
        .ok_or_else(|| Error::ControllerMissing {
            controller: name,
            root: dir.to_owned(),
        })
}

/// Writes one setting into the cgroup whose directory (for this setting's
/// controller) is `dir`.
pub(crate) fn write_setting(
    cgroup: &Cgroup,
    setting: &Setting,
    version: CgroupVersion,
    dir: &Path,
) -> Result<(), Error> {
    let files = setting.files(version);
    let describe = |i: usize| -> (&'static str, String) {
        match files.get(i) {
            Some((f, FileValue::Text(t))) => (f, t.clone()),
            Some((f, FileValue::CopyFromParent)) => (f, "<parent's value>".to_owned()),
            None => ("?", String::new()),
        }
    };
    let fail = |i: usize, e: cgroups_rs::fs::error::Error| {
        let (file, value) = describe(i);
        Error::WriteSetting {
            path: dir.to_owned(),
            file,
            value,
            source: Box::new(e),
        }
    };
    match setting {
        Setting::CpuBandwidth { quota, period } => {
            let cpu: &CpuController = controller(cgroup, "cpu", dir)?;
            let quota = quota.map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX));
            match version {
                CgroupVersion::V1 => {
                    cpu.set_cfs_period(*period).map_err(|e| fail(0, e))?;
                    cpu.set_cfs_quota(quota).map_err(|e| fail(1, e))?;
                }
                CgroupVersion::V2 => cpu
                    .set_cfs_quota_and_period(Some(quota), Some(*period))
                    .map_err(|e| fail(0, e))?,
            }
        }
        Setting::CpuShares(_) => {
            let cpu: &CpuController = controller(cgroup, "cpu", dir)?;
            // The value is already converted to cpu.weight for v2.
            let value = match &files[0].1 {
                FileValue::Text(t) => t.parse::<u64>().unwrap_or(0),
                FileValue::CopyFromParent => 0,
            };
            cpu.set_shares(value).map_err(|e| fail(0, e))?;
        }
        Setting::Cpus(_) | Setting::Mems(_) => {
            let cpuset: &CpuSetController = controller(cgroup, "cpuset", dir)?;
            let (file, value) = &files[0];
            let text = match value {
                FileValue::Text(t) => t.clone(),
                FileValue::CopyFromParent => {
                    let parent = dir.parent().unwrap_or(dir).join(file);
                    std::fs::read_to_string(&parent)
                        .map_err(|source| Error::ReadCgroupFile {
                            path: parent,
                            source,
                        })?
                        .trim()
                        .to_owned()
                }
            };
            let result = if matches!(setting, Setting::Cpus(_)) {
                cpuset.set_cpus(&text)
            } else {
                cpuset.set_mems(&text)
            };
            result.map_err(|e| Error::WriteSetting {
                path: dir.to_owned(),
                file,
                value: text.clone(),
                source: Box::new(e),
            })?;
        }
        Setting::MemoryMax(limit) => {
            let mem: &MemController = controller(cgroup, "memory", dir)?;
            let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
            mem.set_limit(limit).map_err(|e| fail(0, e))?;
        }
        Setting::PidsMax(limit) => {
            let pids: &PidController = controller(cgroup, "pids", dir)?;
            let value = limit.map_or(MaxValue::Max, |l| {
                MaxValue::Value(i64::try_from(l).unwrap_or(i64::MAX))
            });
            pids.set_pid_max(value).map_err(|e| fail(0, e))?;
        }
    }
    Ok(())
}

const RWM: [DevicePermissions; 3] = [
    DevicePermissions::Read,
    DevicePermissions::Write,
    DevicePermissions::MkNod,
];

fn permissions(access: DeviceAccess) -> Vec<DevicePermissions> {
    [
        (DeviceAccess::READ, DevicePermissions::Read),
        (DeviceAccess::WRITE, DevicePermissions::Write),
        (DeviceAccess::MKNOD, DevicePermissions::MkNod),
    ]
    .into_iter()
    .filter(|(bit, _)| access.contains(*bit))
    .map(|(_, p)| p)
    .collect()
}

fn access_of(permissions: &[DevicePermissions]) -> Option<DeviceAccess> {
    permissions
        .iter()
        .map(|p| match p {
            DevicePermissions::Read => DeviceAccess::READ,
            DevicePermissions::Write => DeviceAccess::WRITE,
            DevicePermissions::MkNod => DeviceAccess::MKNOD,
        })
        .reduce(DeviceAccess::union)
}

fn device_type(kind: DeviceKind) -> DeviceType {
    match kind {
        DeviceKind::Char => DeviceType::Char,
        DeviceKind::Block => DeviceType::Block,
        DeviceKind::All => DeviceType::All,
    }
}

/// A `devices.list` entry as an allow rule; `None` for `a *:* rwm`.
fn listed_rule(d: &cgroups_rs::fs::DeviceResource) -> Option<DeviceRule> {
    let kind = match d.devtype {
        DeviceType::Char => DeviceKind::Char,
        DeviceType::Block => DeviceKind::Block,
        DeviceType::All => return None,
    };
    Some(DeviceRule {
        kind,
        major: u32::try_from(d.major).ok(),
        minor: u32::try_from(d.minor).ok(),
        access: access_of(&d.access)?,
        allow: true,
    })
}

/// Makes the v1 `devices` controller of `cgroup` enforce `rules`.
///
/// A list of allow rules (what the planner makes): a fresh cgroup
/// (allow-all) gets `a` denied, then each rule allowed; a cgroup that
/// already has an allowlist gets the difference only, so tasks inside never
/// lose a device that stays allowed; a rule allowing everything puts the
/// cgroup in allow-all mode. A list with deny rules is written whole, in
/// order, after `a` is denied, and the kernel's v1 semantics apply to it (a
/// deny removes only an exception that matches it exactly, where the v2
/// program lets the last matching rule decide).
pub(crate) fn write_device_rules(
    cgroup: &Cgroup,
    rules: &[DeviceRule],
    dir: &Path,
) -> Result<(), Error> {
    let devices: &DevicesController = controller(cgroup, "devices", dir)?;
    let fail = |file: &'static str, value: String| {
        let dir = dir.to_owned();
        move |e: cgroups_rs::fs::error::Error| Error::WriteSetting {
            path: dir,
            file,
            value,
            source: Box::new(e),
        }
    };
    let write = |rule: &DeviceRule| {
        let (major, minor) = (
            rule.major.map_or(-1, i64::from),
            rule.minor.map_or(-1, i64::from),
        );
        let perms = permissions(rule.access);
        let kind = device_type(rule.kind);
        if rule.allow {
            devices
                .allow_device(kind, major, minor, &perms)
                .map_err(fail("devices.allow", rule.to_string()))
        } else {
            devices
                .deny_device(kind, major, minor, &perms)
                .map_err(fail("devices.deny", rule.to_string()))
        }
    };
    let deny_all = || {
        devices
            .deny_device(DeviceType::All, -1, -1, &RWM)
            .map_err(fail("devices.deny", "a *:* rwm".to_owned()))
    };
    if rules.iter().any(|r| !r.allow) {
        deny_all()?;
        return rules.iter().try_for_each(write);
    }
    if let Some(everything) = rules.iter().find(|r| r.matches_everything()) {
        return write(everything);
    }
    let current = devices.allowed_devices().map_err(|e| Error::WriteSetting {
        path: dir.to_owned(),
        file: "devices.list",
        value: String::new(),
        source: Box::new(e),
    })?;
    let existing: Vec<DeviceRule> = if current.iter().any(|d| d.devtype == DeviceType::All) {
        deny_all()?;
        Vec::new()
    } else {
        current.iter().filter_map(listed_rule).collect()
    };
    for rule in rules.iter().filter(|r| !existing.contains(r)) {
        write(rule)?;
    }
    for stale in existing.iter().filter(|r| !rules.contains(r)) {
        write(&DeviceRule {
            allow: false,
            ..*stale
        })?;
    }
    Ok(())
}
