//! The guest's CPUs and memory: bringing hot-plugged ones online (Kata's
//! `OnlineCPUMem`) and reporting memory (Kata's `GetMetrics`). Paths are
//! parameters so the logic is tested on temp dirs.
//!
//! `OnlineCPUMem` follows Kata's agent: `nb_cpus` is how many CPUs must be
//! online in the end; hot-plugged CPUs reach sysfs asynchronously (ACPI),
//! so the agent onlines what is there, waits a little and looks again,
//! [`ONLINE_RETRIES`] times [`ONLINE_WAIT`] at most, and fails if the
//! guest does not get there. Memory blocks are onlined once, all of the
//! offline ones: the host checks that the guest sees the memory.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// How many times CPUs are looked for (Kata's agent: 100).
pub const ONLINE_RETRIES: u32 = 100;
/// The pause between two looks (Kata's agent: 50 ms, so 5 s in all).
pub const ONLINE_WAIT: Duration = Duration::from_millis(50);

/// The numbered entries (`cpu3`, `memory12`) of a sysfs directory.
fn numbered(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// How many CPUs are online: those whose `online` says 1, and those
/// without the file (the boot CPU cannot go offline).
pub fn online_cpus(sys: &Path) -> u32 {
    numbered(&sys.join("devices/system/cpu"), "cpu")
        .iter()
        .filter(|cpu| match fs::read_to_string(cpu.join("online")) {
            Ok(s) => s.trim() == "1",
            Err(_) => true,
        })
        .count() as u32
}

/// Writes `on` to `file` in every numbered entry whose file says `off`;
/// returns how many it switched.
fn switch_on(dir: &Path, prefix: &str, file: &str, off: &str, on: &str, most: u32) -> Result<u32> {
    let mut switched = 0;
    for entry in numbered(dir, prefix) {
        if switched == most {
            break;
        }
        let path = entry.join(file);
        if fs::read_to_string(&path).is_ok_and(|s| s.trim() == off) {
            fs::write(&path, on).map_err(Error::io("onlining", &path))?;
            switched += 1;
        }
    }
    Ok(switched)
}

/// Onlines CPUs until `nb_cpus` are online, looking again `retries` times
/// `wait` apart for CPUs still on their way; [`Error::OnlineTimeout`] if
/// the guest does not get there.
pub fn online_cpus_until(sys: &Path, nb_cpus: u32, retries: u32, wait: Duration) -> Result<()> {
    let dir = sys.join("devices/system/cpu");
    for attempt in 0..=retries {
        let online = online_cpus(sys);
        if online >= nb_cpus {
            return Ok(());
        }
        switch_on(&dir, "cpu", "online", "0", "1", nb_cpus - online)?;
        if online_cpus(sys) >= nb_cpus {
            return Ok(());
        }
        if attempt < retries {
            std::thread::sleep(wait);
        }
    }
    Err(Error::OnlineTimeout {
        wanted: nb_cpus,
        online: online_cpus(sys),
        waited: wait * retries,
    })
}

/// Onlines every offline memory block; returns how many.
pub fn online_memory(sys: &Path) -> Result<u32> {
    switch_on(
        &sys.join("devices/system/memory"),
        "memory",
        "state",
        "offline",
        "online",
        u32::MAX,
    )
}

/// Kata's `OnlineCPUMem`: CPUs until `nb_cpus` are online (none asked
/// for with 0), then, unless `cpu_only`, every offline memory block.
pub fn online_cpu_mem(sys: &Path, nb_cpus: u32, cpu_only: bool) -> Result<()> {
    if nb_cpus > 0 {
        online_cpus_until(sys, nb_cpus, ONLINE_RETRIES, ONLINE_WAIT)?;
    }
    if !cpu_only {
        online_memory(sys)?;
    }
    Ok(())
}

/// `/proc/meminfo` as Kata's `GetMetrics` reports it: the gauge
/// `kata_guest_meminfo` with one `item` per field (snake case), in bytes.
pub fn meminfo_metrics(meminfo: &str) -> String {
    let mut out = String::from(
        "# HELP kata_guest_meminfo Statistics about memory usage in the system.\n\
         # TYPE kata_guest_meminfo gauge\n",
    );
    for line in meminfo.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(value) = words.next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = match words.next() {
            Some("kB") => value * 1024,
            _ => value,
        };
        out.push_str(&format!(
            "kata_guest_meminfo{{item=\"{}\"}} {bytes}\n",
            snake_case(key)
        ));
    }
    out
}

/// `MemTotal` → `mem_total`, `Active(anon)` → `active_anon`,
/// `HugePages_Total` → `huge_pages_total`.
fn snake_case(key: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            prev_lower = true;
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
            prev_lower = false;
        }
    }
    out.trim_end_matches('_').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(sys: &Path, states: &[Option<&str>]) {
        for (i, state) in states.iter().enumerate() {
            let dir = sys.join(format!("devices/system/cpu/cpu{i}"));
            fs::create_dir_all(&dir).unwrap();
            if let Some(s) = state {
                fs::write(dir.join("online"), s).unwrap();
            }
        }
    }

    #[test]
    fn cpus_are_onlined_up_to_the_number_asked_for() {
        let sys = tempfile::tempdir().unwrap();
        cpus(sys.path(), &[None, Some("1"), Some("0"), Some("0")]);
        fs::create_dir_all(sys.path().join("devices/system/cpu/cpufreq")).unwrap();
        assert_eq!(online_cpus(sys.path()), 2);
        online_cpus_until(sys.path(), 3, 0, Duration::ZERO).unwrap();
        assert_eq!(
            online_cpus(sys.path()),
            3,
            "one more, not every offline CPU"
        );
        // Already there: nothing to do.
        online_cpus_until(sys.path(), 2, 0, Duration::ZERO).unwrap();
        assert_eq!(online_cpus(sys.path()), 3);
    }

    #[test]
    fn cpus_that_never_come_are_an_online_timeout() {
        let sys = tempfile::tempdir().unwrap();
        cpus(sys.path(), &[None]);
        let err = online_cpus_until(sys.path(), 3, 2, Duration::from_millis(1)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OnlineTimeout {
                    wanted: 3,
                    online: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.code(), ttrpc::Code::DEADLINE_EXCEEDED);
    }

    #[test]
    fn cpus_arriving_late_are_waited_for() {
        let sys = tempfile::tempdir().unwrap();
        cpus(sys.path(), &[None]);
        let late = sys.path().to_owned();
        let arrive = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            cpus(&late, &[None, Some("0")]);
        });
        online_cpus_until(sys.path(), 2, 100, Duration::from_millis(5)).unwrap();
        arrive.join().unwrap();
        assert_eq!(online_cpus(sys.path()), 2);
    }

    #[test]
    fn every_offline_memory_block_is_onlined_unless_cpu_only() {
        let sys = tempfile::tempdir().unwrap();
        cpus(sys.path(), &[None]);
        let mem = sys.path().join("devices/system/memory");
        for (n, state) in [
            ("memory0", "online\n"),
            ("memory32", "offline\n"),
            ("memory33", "offline\n"),
        ] {
            fs::create_dir_all(mem.join(n)).unwrap();
            fs::write(mem.join(n).join("state"), state).unwrap();
        }
        online_cpu_mem(sys.path(), 1, true).unwrap();
        assert_eq!(
            fs::read_to_string(mem.join("memory32/state")).unwrap(),
            "offline\n"
        );
        online_cpu_mem(sys.path(), 1, false).unwrap();
        for n in ["memory32", "memory33"] {
            assert_eq!(
                fs::read_to_string(mem.join(n).join("state")).unwrap(),
                "online"
            );
        }
        assert_eq!(online_memory(sys.path()).unwrap(), 0);
    }

    #[test]
    fn meminfo_becomes_katas_gauge_in_bytes() {
        let text = meminfo_metrics(
            "MemTotal:         405940 kB\nMemAvailable:     366000 kB\nActive(anon):       1234 kB\nHugePages_Total:       0\n",
        );
        assert!(text.contains("# TYPE kata_guest_meminfo gauge\n"), "{text}");
        assert!(
            text.contains("kata_guest_meminfo{item=\"mem_total\"} 415682560\n"),
            "{text}"
        );
        assert!(
            text.contains("kata_guest_meminfo{item=\"mem_available\"} 374784000\n"),
            "{text}"
        );
        assert!(
            text.contains("kata_guest_meminfo{item=\"active_anon\"} 1263616\n"),
            "{text}"
        );
        assert!(
            text.contains("kata_guest_meminfo{item=\"huge_pages_total\"} 0\n"),
            "{text}"
        );
    }
}
