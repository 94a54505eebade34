//! Host cgroup partitioning for VM sandboxes (being written: see issue 2).
