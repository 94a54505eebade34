//! A host leak check: what the SDK can leave behind (cgroups, mounts,
//! `/run/vc` entries, loop devices, QEMU and virtiofsd processes),
//! recorded before and compared after.
//!
//! Per test: `let before = HostSnapshot::take();` first, and
//! [`assert_unchanged_since`]`(&before)` last. Tests of one binary run in
//! parallel and other users' tests may share the host, so a test that is
//! not alone on the host checks only what names it:
//! [`assert_unchanged_since_matching`]`(&before, &[&id, dir])`.
//!
//! Per suite: `vc-host-snapshot save FILE` before the suite and
//! `vc-host-snapshot check FILE` after it (the binary of this crate), or
//! [`HostSnapshot::to_text`] / [`HostSnapshot::from_text`] in a harness.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the SDK keeps its state, VM runtime dirs and shares by default.
pub const RUN_VC: &str = "/run/vc";

/// How deep [`HostSnapshot::take`] walks `/run/vc`.
const RUN_VC_DEPTH: usize = 4;

/// How long the assertions wait for the host to settle (a loop device's
/// autoclear and a killed process's exit are asynchronous).
pub const SETTLE: Duration = Duration::from_secs(3);

/// A kind of host resource the SDK creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// A cgroup dir, in any v1 hierarchy or the cgroup2 mount.
    Cgroup,
    /// A mount point (`/proc/self/mountinfo`).
    Mount,
    /// A file or dir under `/run/vc`.
    RunVc,
    /// A loop device with its backing file.
    LoopDevice,
    /// A `qemu-system-*` or `virtiofsd` process, with its command line.
    Process,
}

impl Resource {
    const ALL: [Resource; 5] = [
        Resource::Cgroup,
        Resource::Mount,
        Resource::RunVc,
        Resource::LoopDevice,
        Resource::Process,
    ];

    fn name(self) -> &'static str {
        match self {
            Resource::Cgroup => "cgroup",
            Resource::Mount => "mount",
            Resource::RunVc => "run-vc",
            Resource::LoopDevice => "loop-device",
            Resource::Process => "process",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// What kind of resource.
    pub resource: Resource,
    /// The entry, e.g. `/sys/fs/cgroup/cpu/vc/sandbox`.
    pub entry: String,
    /// `true` when it appeared, `false` when it went away.
    pub appeared: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.appeared { "left behind" } else { "gone" };
        write!(f, "{} {}: {}", self.resource, verb, self.entry)
    }
}

/// What the SDK could leave on this host, at one moment. Entries are
/// counted: a mount point mounted twice counts twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSnapshot {
    entries: BTreeMap<(Resource, String), usize>,
}

impl HostSnapshot {
    /// Records the host now: every cgroup dir of every v1 hierarchy and of
    /// the cgroup2 mount (recursively, names only), the mount points, the
    /// entries under `/run/vc` (a few levels, not crossing into mounts),
    /// the loop devices with a backing file, and the `qemu-system-*` and
    /// `virtiofsd` processes.
    pub fn take() -> Self {
        let mut snapshot = Self::default();
        let table = vc_mountinfo::read_mountinfo(Path::new(vc_mountinfo::PROC_SELF_MOUNTINFO))
            .expect("reading /proc/self/mountinfo");
        for m in &table {
            if m.fs_type == "cgroup" || m.fs_type == "cgroup2" {
                walk_dirs(&m.mount_point, &mut |d| {
                    snapshot.add(Resource::Cgroup, d.display().to_string())
                });
            }
            snapshot.add(
                Resource::Mount,
                format!("{} ({})", m.mount_point.display(), m.fs_type),
            );
        }
        walk_run_vc(Path::new(RUN_VC), &mut snapshot);
        for (dev, backing) in crate::host::loop_devices() {
            snapshot.add(
                Resource::LoopDevice,
                format!("{dev} -> {}", backing.display()),
            );
        }
        for (pid, cmdline) in vmm_processes() {
            snapshot.add(Resource::Process, format!("{pid} {cmdline}"));
        }
        snapshot
    }

    fn add(&mut self, resource: Resource, entry: String) {
        *self.entries.entry((resource, entry)).or_default() += 1;
    }

    /// Whether the snapshot holds `entry` of `resource`.
    pub fn contains(&self, resource: Resource, entry: &str) -> bool {
        self.entries.contains_key(&(resource, entry.to_owned()))
    }

    /// What differs between `before` and this snapshot.
    pub fn changes_since(&self, before: &HostSnapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        let keys = self.entries.keys().chain(before.entries.keys());
        let mut seen = std::collections::BTreeSet::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            let now = self.entries.get(key).copied().unwrap_or(0);
            let then = before.entries.get(key).copied().unwrap_or(0);
            for _ in then..now {
                changes.push(change(key, true));
            }
            for _ in now..then {
                changes.push(change(key, false));
            }
        }
        changes
    }

    /// The snapshot as text, one `resource<TAB>entry` line per entry.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for ((resource, entry), count) in &self.entries {
            for _ in 0..*count {
                text.push_str(&format!("{resource}\t{entry}\n"));
            }
        }
        text
    }

    /// Reads back [`HostSnapshot::to_text`]'s text.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let mut snapshot = Self::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (name, entry) = line
                .split_once('\t')
                .ok_or_else(|| format!("no tab in snapshot line {line:?}"))?;
            let resource = Resource::ALL
                .into_iter()
                .find(|r| r.name() == name)
                .ok_or_else(|| format!("unknown resource {name:?} in snapshot line {line:?}"))?;
            snapshot.add(resource, entry.to_owned());
        }
        Ok(snapshot)
    }
}

fn change((resource, entry): &(Resource, String), appeared: bool) -> Change {
    Change {
        resource: *resource,
        entry: entry.clone(),
        appeared,
    }
}

/// Fails the test, naming each difference, unless the host holds what it
/// held at `before` (waiting up to [`SETTLE`] for it to settle).
pub fn assert_unchanged_since(before: &HostSnapshot) {
    assert_settles(before, |_| true, "");
}

/// Like [`assert_unchanged_since`] for the changes whose entry contains
/// one of `markers` (a test's unique id, its temp dir): what other tests
/// running meanwhile do is not this test's leak.
pub fn assert_unchanged_since_matching(before: &HostSnapshot, markers: &[&str]) {
    assert_settles(
        before,
        |c| markers.iter().any(|m| c.entry.contains(m)),
        &format!(" (entries naming {markers:?})"),
    );
}

fn assert_settles(before: &HostSnapshot, relevant: impl Fn(&Change) -> bool, scope: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let changes: Vec<Change> = HostSnapshot::take()
            .changes_since(before)
            .into_iter()
            .filter(&relevant)
            .collect();
        if changes.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
            panic!("the host changed{scope}:\n  {}", list.join("\n  "));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Calls `found` with every dir below `root` (not `root` itself).
fn walk_dirs(root: &Path, found: &mut impl FnMut(&Path)) {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let path = entry.path();
                found(&path);
                stack.push(path);
            }
        }
    }
}

fn walk_run_vc(root: &Path, snapshot: &mut HostSnapshot) {
    let Ok(meta) = std::fs::metadata(root) else {
        return;
    };
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_owned(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            snapshot.add(Resource::RunVc, path.display().to_string());
            let Ok(m) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            // A share's bind mount is on another device: its contents are
            // the source's, not ours.
            if m.is_dir() && m.dev() == meta.dev() && depth + 1 < RUN_VC_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
}

/// Whether `/proc/<pid>` is a zombie that init must reap: it holds
/// nothing, and its parent, the process that should have reaped it, is
/// gone. (Some container hosts' PID 1 reaps late or never; a zombie whose
/// parent still runs is that parent's leak and does count.)
fn orphaned_zombie(proc_dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut fields = after.split_whitespace();
    let state = fields.next();
    let ppid = fields.next();
    matches!(state, Some("Z" | "X")) && ppid == Some("1")
}

/// `(pid, command line)` of the `qemu-system-*` and `virtiofsd` processes
/// (orphaned zombies aside).
fn vmm_processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if (comm.starts_with("qemu-system-") || comm == "virtiofsd")
            && !orphaned_zombie(&entry.path())
        {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push((pid, cmdline.trim_end().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_what_appeared_and_what_went() {
        let mut before = HostSnapshot::default();
        before.add(Resource::Mount, "/a (tmpfs)".into());
        before.add(Resource::Cgroup, "/sys/fs/cgroup/cpu/old".into());
        let mut after = before.clone();
        after.add(Resource::Mount, "/a (tmpfs)".into());
        after.add(
            Resource::Process,
            "42 qemu-system-x86_64 -name vct-x".into(),
        );
        after
            .entries
            .remove(&(Resource::Cgroup, "/sys/fs/cgroup/cpu/old".into()));
        let mut changes: Vec<String> = after
            .changes_since(&before)
            .iter()
            .map(ToString::to_string)
            .collect();
        changes.sort();
        assert_eq!(
            changes,
            [
                "cgroup gone: /sys/fs/cgroup/cpu/old",
                "mount left behind: /a (tmpfs)",
                "process left behind: 42 qemu-system-x86_64 -name vct-x",
            ]
        );
        assert!(before.changes_since(&before).is_empty());
        assert_eq!(HostSnapshot::from_text(&after.to_text()).unwrap(), after);
        assert!(HostSnapshot::from_text("bogus\tx\n").is_err());
    }

    /// Root needed: a real tmpfs mount is seen, named, and its removal too.
    #[test]
    fn a_leaked_mount_fails_the_check_naming_it() {
        crate::require_root();
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().to_str().unwrap().to_owned();
        let before = HostSnapshot::take();
        assert_unchanged_since_matching(&before, &[&marker]);
        let mut mounts = crate::HostMounts::default();
        mounts.mount_tmpfs(&dir.path().join("m")).unwrap();
        let panic = std::panic::catch_unwind(|| {
            assert_unchanged_since_matching(&before, &[&marker]);
        })
        .expect_err("a leaked mount must fail the check");
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains(&format!("mount left behind: {marker}/m (tmpfs)")),
            "{message}"
        );
        mounts.unmount_all().unwrap();
        assert_unchanged_since_matching(&before, &[&marker]);
    }
}
