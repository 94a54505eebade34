//! What `/proc/<pid>/stat` says about a process: its state, parent and
//! start time. The parser allocates nothing and cannot panic, so the
//! keeper (a forked child) uses it too.

use std::io;

/// The fields of `/proc/<pid>/stat` this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: u8,
    /// Field 4: the parent's pid.
    pub ppid: u32,
    /// Fields 14 and 15: clock ticks spent in user and kernel mode, all
    /// threads together.
    pub cpu_ticks: u64,
    /// Field 22: clock ticks after boot.
    pub start_time: u64,
}

impl Stat {
    /// A zombie (`Z`) or dead (`X`) process: it has exited, only its
    /// parent's reaping is pending.
    pub fn has_exited(&self) -> bool {
        matches!(self.state, b'Z' | b'X')
    }
}

/// Parses a `/proc/<pid>/stat` line. The command (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub(crate) fn parse(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = stat.get(close + 1..)?;
    let mut fields = rest
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty());
    // Field 3 is the first after the command.
    let state = *fields.next()?.first()?;
    let ppid = parse_u64(fields.next()?)?;
    // Field 14 is the 10th after field 4.
    let utime = parse_u64(fields.nth(9)?)?;
    let stime = parse_u64(fields.next()?)?;
    // Field 22 is the 7th after field 15.
    let start_time = parse_u64(fields.nth(6)?)?;
    Some(Stat {
        state,
        ppid: u32::try_from(ppid).ok()?,
        cpu_ticks: utime.checked_add(stime)?,
        start_time,
    })
}

/// A decimal number, without allocating.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Reads and parses `/proc/<pid>/stat`.
pub(crate) fn read(pid: u32) -> io::Result<Stat> {
    let stat = std::fs::read(format!("/proc/{pid}/stat"))?;
    parse(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/pid/stat"))
}

/// The process's start time (clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`): with the pid, it identifies a process for good.
/// A zombie still has one.
pub fn start_time(pid: u32) -> io::Result<u64> {
    read(pid).map(|s| s.start_time)
}

/// Whether the process `pid` started at `start_time` is alive: `false`
/// when it is gone, when the pid now belongs to another process (another
/// start time), and when it is a zombie. A zombie has exited: whoever must
/// reap it, it is dead for everyone else.
pub fn is_alive(pid: u32, start_time: u64) -> bool {
    read(pid).is_ok_and(|s| s.start_time == start_time && !s.has_exited())
}

/// The CPU time the process `pid` started at `start_time` has used, all
/// its threads together (for a VMM under TCG: how far its guest got).
/// `None` when it is gone or the pid is another process's now.
pub fn cpu_time(pid: u32, start_time: u64) -> Option<std::time::Duration> {
    let stat = read(pid).ok().filter(|s| s.start_time == start_time)?;
    ticks_to_duration(stat.cpu_ticks)
}

/// The CPU time thread `tid` of process `pid` has used (fields 14 and 15
/// of `/proc/<pid>/task/<tid>/stat`); `None` when it is gone.
pub fn thread_cpu_time(pid: u32, tid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    ticks_to_duration(parse(&stat)?.cpu_ticks)
}

fn ticks_to_duration(ticks: u64) -> Option<std::time::Duration> {
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_second = u64::try_from(ticks_per_second).ok().filter(|&t| t > 0)?;
    Some(std::time::Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000 / ticks_per_second),
    ))
}

/// `pid` and every process descending from it, `pid` first (a daemon that
/// forks, as virtiofsd's namespace sandbox does, must be placed in a
/// cgroup whole). Empty-handed `/proc` reads give just `[pid]`.
pub fn with_descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let child: u32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read(e.path().join("stat")).ok()?;
                    Some((child, parse(&stat)?.ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while let Some(&parent) = tree.get(i) {
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn fields_are_counted_from_the_last_parenthesis() {
        let stat =
            b"4242 (qemu (x) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 3 0 987654 123 45\n";
        assert_eq!(
            parse(stat),
            Some(Stat {
                state: b'S',
                ppid: 1,
                cpu_ticks: 8,
                start_time: 987654
            })
        );
        assert_eq!(parse(b"9 (a) b) Z 42 9 9"), None, "too short");
        let odd = b"9 (a) b) S 42 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0";
        assert_eq!(parse(odd).map(|s| (s.ppid, s.start_time)), Some((42, 77)));
        assert_eq!(parse(b"garbage"), None);
        assert_eq!(parse_u64(b"12x"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
        let own = read(std::process::id()).unwrap();
        assert!(own.start_time > 0);
        assert!(is_alive(std::process::id(), own.start_time));
        assert!(!is_alive(std::process::id(), own.start_time + 1));
    }

    #[test]
    fn cpu_time_counts_what_the_process_used() {
        let own = read(std::process::id()).unwrap();
        let before = cpu_time(std::process::id(), own.start_time).unwrap();
        // Spin until the kernel has charged 200 ms: on a loaded host that
        // takes longer than 200 ms of wall time, never forever.
        let spin = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after < before + Duration::from_millis(200)
            && spin.elapsed() < Duration::from_secs(30)
        {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            after = cpu_time(std::process::id(), own.start_time).unwrap();
        }
        assert!(
            after >= before + Duration::from_millis(200),
            "{before:?} -> {after:?} in {:?}",
            spin.elapsed()
        );
        assert_eq!(cpu_time(std::process::id(), own.start_time + 1), None);
        let me = std::process::id();
        let main_thread = thread_cpu_time(me, me).unwrap();
        assert!(main_thread <= after, "{main_thread:?} of {after:?}");
        assert_eq!(thread_cpu_time(me, u32::MAX), None);
    }

    #[test]
    fn finds_a_process_tree() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 100 & sleep 100 & wait"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut tree = Vec::new();
        while Instant::now() < deadline {
            tree = with_descendants(sh.id());
            if tree.len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(tree.len(), 3, "{tree:?}");
        assert_eq!(tree[0], sh.id());
        for p in &tree[1..] {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(*p as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        sh.wait().unwrap();
    }
}
