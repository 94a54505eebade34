//! The guest's own view of its memory, read from the agent's `GetMetrics`
//! text: Kata's `kata_guest_meminfo` gauge, one `item` per
//! `/proc/meminfo` field, in bytes.

use serde::{Deserialize, Serialize};

/// The guest's memory as its kernel counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemory {
    /// `MemTotal`: the RAM the guest kernel manages (hot-plugged memory
    /// counts once onlined), bytes.
    pub total_bytes: u64,
    /// `MemFree`, bytes.
    pub free_bytes: u64,
    /// `MemAvailable`: what the guest could still hand out without
    /// swapping, bytes.
    pub available_bytes: u64,
}

impl GuestMemory {
    /// What the guest uses: total less available, bytes.
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.available_bytes)
    }
}

/// The `kata_guest_meminfo` items of a Prometheus text; `None` when it has
/// no `mem_total`.
pub fn parse_guest_memory(text: &str) -> Option<GuestMemory> {
    let item = |name: &str| -> Option<u64> {
        let key = format!("kata_guest_meminfo{{item=\"{name}\"}}");
        text.lines()
            .filter_map(|line| line.strip_prefix(key.as_str()))
            .filter_map(|rest| rest.split_whitespace().next())
            // Prometheus values are floats: Kata's agent writes them so.
            .find_map(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some(GuestMemory {
        total_bytes: item("mem_total")?,
        free_bytes: item("mem_free").unwrap_or(0),
        available_bytes: item("mem_available").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_katas_gauge_and_ignores_the_rest() {
        let text = "# HELP kata_guest_meminfo x\n# TYPE kata_guest_meminfo gauge\n\
                    kata_guest_meminfo{item=\"mem_total\"} 415682560\n\
                    kata_guest_meminfo{item=\"mem_free\"} 3.5e8\n\
                    kata_guest_meminfo{item=\"mem_available\"} 374784000\n\
                    kata_guest_meminfo{item=\"mem_total_x\"} 1\n\
                    kata_guest_load{item=\"load1\"} 0.5\n";
        let m = parse_guest_memory(text).unwrap();
        assert_eq!(
            m,
            GuestMemory {
                total_bytes: 415_682_560,
                free_bytes: 350_000_000,
                available_bytes: 374_784_000
            }
        );
        assert_eq!(m.used_bytes(), 415_682_560 - 374_784_000);
        assert_eq!(
            parse_guest_memory("kata_guest_meminfo{item=\"mem_free\"} 1\n"),
            None
        );
    }
}
