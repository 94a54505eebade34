//! A container's stats from the guest agent (Kata's `CgroupStats`) in
//! containerd's format: cgroup v1 `Metrics` (type URL
//! `io.containerd.cgroups.v1.Metrics`), what `ctr task metrics` prints
//! and the CRI's stats read. The guest's memory.stat keys fill the memory
//! counters of the same names.

use std::collections::HashMap;

use virtcontainers::vc_agent_client::protocol::agent as pb;

use crate::protocol::cgroups_v1 as m;

/// The metrics of a stats answer.
pub fn from_agent(stats: &pb::StatsContainerResponse) -> m::Metrics {
    let mut metrics = m::Metrics::new();
    let cgroup = stats.cgroup_stats.as_ref();
    let cpu = cgroup.and_then(|c| c.cpu_stats.as_ref());
    metrics.cpu = Some(cpu_of(cpu)).into();
    let memory = cgroup.and_then(|c| c.memory_stats.as_ref());
    metrics.memory = Some(memory_of(memory)).into();
    let mut pids = m::PidsStat::new();
    if let Some(p) = cgroup.and_then(|c| c.pids_stats.as_ref()) {
        pids.current = p.current;
        pids.limit = p.limit;
    }
    metrics.pids = Some(pids).into();
    if let Some(b) = cgroup.and_then(|c| c.blkio_stats.as_ref()) {
        metrics.blkio = Some(blkio_of(b)).into();
    }
    if let Some(c) = cgroup {
        let mut sizes: Vec<_> = c.hugetlb_stats.iter().collect();
        sizes.sort_by(|a, b| a.0.cmp(b.0));
        metrics.hugetlb = sizes
            .into_iter()
            .map(|(size, h)| {
                let mut s = m::HugetlbStat::new();
                s.pagesize = size.clone();
                s.usage = h.usage;
                s.max = h.max_usage;
                s.failcnt = h.failcnt;
                s
            })
            .collect();
    }
    metrics.network = stats.network_stats.iter().map(network_of).collect();
    metrics
}

/// Zeroed metrics with every part containerd's clients read present (a
/// pod's sandbox container runs nothing to measure).
pub fn empty() -> m::Metrics {
    from_agent(&pb::StatsContainerResponse::new())
}

fn cpu_of(cpu: Option<&pb::CpuStats>) -> m::CPUStat {
    let mut out = m::CPUStat::new();
    let mut usage = m::CPUUsage::new();
    if let Some(u) = cpu.and_then(|c| c.cpu_usage.as_ref()) {
        usage.total = u.total_usage;
        usage.kernel = u.usage_in_kernelmode;
        usage.user = u.usage_in_usermode;
        usage.per_cpu = u.percpu_usage.clone();
    }
    out.usage = Some(usage).into();
    let mut throttling = m::Throttle::new();
    if let Some(t) = cpu.and_then(|c| c.throttling_data.as_ref()) {
        throttling.periods = t.periods;
        throttling.throttled_periods = t.throttled_periods;
        throttling.throttled_time = t.throttled_time;
    }
    out.throttling = Some(throttling).into();
    out
}

fn entry(data: Option<&pb::MemoryData>) -> m::MemoryEntry {
    let mut e = m::MemoryEntry::new();
    if let Some(d) = data {
        e.usage = d.usage;
        e.max = d.max_usage;
        e.failcnt = d.failcnt;
        e.limit = d.limit;
    }
    e
}

fn memory_of(memory: Option<&pb::MemoryStats>) -> m::MemoryStat {
    let mut out = m::MemoryStat::new();
    out.usage = Some(entry(memory.and_then(|m| m.usage.as_ref()))).into();
    out.swap = Some(entry(memory.and_then(|m| m.swap_usage.as_ref()))).into();
    out.kernel = Some(entry(memory.and_then(|m| m.kernel_usage.as_ref()))).into();
    out.kernel_tcp = Some(m::MemoryEntry::new()).into();
    let empty = HashMap::new();
    let stats = memory.map_or(&empty, |m| &m.stats);
    let get = |key: &str| stats.get(key).copied().unwrap_or_default();
    out.cache = memory.map_or(0, |m| m.cache).max(get("cache"));
    out.rss = get("rss");
    out.rss_huge = get("rss_huge");
    out.mapped_file = get("mapped_file");
    out.dirty = get("dirty");
    out.writeback = get("writeback");
    out.pg_pg_in = get("pgpgin");
    out.pg_pg_out = get("pgpgout");
    out.pg_fault = get("pgfault");
    out.pg_maj_fault = get("pgmajfault");
    out.inactive_anon = get("inactive_anon");
    out.active_anon = get("active_anon");
    out.inactive_file = get("inactive_file");
    out.active_file = get("active_file");
    out.unevictable = get("unevictable");
    out.hierarchical_memory_limit = get("hierarchical_memory_limit");
    out.hierarchical_swap_limit = get("hierarchical_memsw_limit");
    out.total_cache = get("total_cache");
    out.total_rss = get("total_rss");
    out.total_rss_huge = get("total_rss_huge");
    out.total_mapped_file = get("total_mapped_file");
    out.total_dirty = get("total_dirty");
    out.total_writeback = get("total_writeback");
    out.total_pg_pg_in = get("total_pgpgin");
    out.total_pg_pg_out = get("total_pgpgout");
    out.total_pg_fault = get("total_pgfault");
    out.total_pg_maj_fault = get("total_pgmajfault");
    out.total_inactive_anon = get("total_inactive_anon");
    out.total_active_anon = get("total_active_anon");
    out.total_inactive_file = get("total_inactive_file");
    out.total_active_file = get("total_active_file");
    out.total_unevictable = get("total_unevictable");
    out
}

fn blkio_entries(entries: &[pb::BlkioStatsEntry]) -> Vec<m::BlkIOEntry> {
    entries
        .iter()
        .map(|e| {
            let mut out = m::BlkIOEntry::new();
            out.op = e.op.clone();
            out.major = e.major;
            out.minor = e.minor;
            out.value = e.value;
            out
        })
        .collect()
}

fn blkio_of(b: &pb::BlkioStats) -> m::BlkIOStat {
    let mut out = m::BlkIOStat::new();
    out.io_service_bytes_recursive = blkio_entries(&b.io_service_bytes_recursive);
    out.io_serviced_recursive = blkio_entries(&b.io_serviced_recursive);
    out.io_queued_recursive = blkio_entries(&b.io_queued_recursive);
    out.io_service_time_recursive = blkio_entries(&b.io_service_time_recursive);
    out.io_wait_time_recursive = blkio_entries(&b.io_wait_time_recursive);
    out.io_merged_recursive = blkio_entries(&b.io_merged_recursive);
    out.io_time_recursive = blkio_entries(&b.io_time_recursive);
    out.sectors_recursive = blkio_entries(&b.sectors_recursive);
    out
}

fn network_of(n: &pb::NetworkStats) -> m::NetworkStat {
    let mut out = m::NetworkStat::new();
    out.name = n.name.clone();
    out.rx_bytes = n.rx_bytes;
    out.rx_packets = n.rx_packets;
    out.rx_errors = n.rx_errors;
    out.rx_dropped = n.rx_dropped;
    out.tx_bytes = n.tx_bytes;
    out.tx_packets = n.tx_packets;
    out.tx_errors = n.tx_errors;
    out.tx_dropped = n.tx_dropped;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_cgroup_stats_become_containerds_metrics() {
        let mut usage = pb::CpuUsage::new();
        usage.total_usage = 1_000;
        usage.percpu_usage = vec![600, 400];
        usage.usage_in_kernelmode = 300;
        usage.usage_in_usermode = 700;
        let mut cpu = pb::CpuStats::new();
        cpu.cpu_usage = Some(usage).into();
        let mut mem_usage = pb::MemoryData::new();
        mem_usage.usage = 4096;
        mem_usage.limit = 1 << 30;
        let mut memory = pb::MemoryStats::new();
        memory.usage = Some(mem_usage).into();
        memory.stats.insert("total_cache".into(), 512);
        memory.stats.insert("rss".into(), 2048);
        let mut pids = pb::PidsStats::new();
        pids.current = 3;
        pids.limit = 100;
        let mut cgroup = pb::CgroupStats::new();
        cgroup.cpu_stats = Some(cpu).into();
        cgroup.memory_stats = Some(memory).into();
        cgroup.pids_stats = Some(pids).into();
        let mut net = pb::NetworkStats::new();
        net.name = "eth0".into();
        net.rx_bytes = 10;
        let mut stats = pb::StatsContainerResponse::new();
        stats.cgroup_stats = Some(cgroup).into();
        stats.network_stats.push(net);

        let metrics = from_agent(&stats);
        let cpu = metrics.cpu.usage.as_ref().unwrap();
        assert_eq!(
            (cpu.total, cpu.kernel, cpu.user, cpu.per_cpu.clone()),
            (1_000, 300, 700, vec![600, 400])
        );
        let memory = metrics.memory.as_ref().unwrap();
        let usage = memory.usage.as_ref().unwrap();
        assert_eq!((usage.usage, usage.limit), (4096, 1 << 30));
        assert_eq!((memory.total_cache, memory.rss), (512, 2048));
        assert_eq!((metrics.pids.current, metrics.pids.limit), (3, 100));
        assert_eq!(metrics.network[0].name, "eth0");
        assert_eq!(metrics.network[0].rx_bytes, 10);
    }

    #[test]
    fn empty_metrics_still_carry_what_ctr_prints() {
        // `ctr task metrics` reads memory.usage and cpu.usage unchecked.
        let metrics = empty();
        assert!(metrics.memory.usage.is_some());
        assert!(metrics.cpu.usage.is_some());
        assert!(metrics.pids.is_some());
    }
}
