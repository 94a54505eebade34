//! OCI mount options (`"ro"`, `"nosuid"`, `"rbind"`, `"mode=755"`, ...) to
//! `mount(2)` flags and data. Pure.

/// Flags and the filesystem-specific data string of one mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// `MS_*` flags for the mount itself.
    pub flags: libc::c_ulong,
    /// Propagation flags (`MS_PRIVATE`, `MS_SLAVE`, ... with `MS_REC`),
    /// applied by a second `mount(2)` call.
    pub propagation: libc::c_ulong,
    /// Options the kernel does not know as flags, comma-joined, for the
    /// filesystem (`mode=755,size=65536k`).
    pub data: String,
}

impl MountOptions {
    /// Whether this is a bind mount (`bind` or `rbind`).
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }

    /// Whether it must end read-only (bind mounts need a remount for that).
    pub fn is_readonly(&self) -> bool {
        self.flags & libc::MS_RDONLY != 0
    }
}

/// Parses OCI mount options.
pub fn parse(options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "defaults" | "rw" => (0, libc::MS_RDONLY),
            "ro" => (libc::MS_RDONLY, 0),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let base = match opt.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                out.propagation |= base
                    | if opt.starts_with('r') {
                        libc::MS_REC
                    } else {
                        0
                    };
                continue;
            }
            other => {
                data.push(other.to_owned());
                continue;
            }
        };
        out.flags = (out.flags | set) & !clear;
    }
    out.data = data.join(",");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_data_and_propagation() {
        let o = parse(&opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]));
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, 0);

        let o = parse(&opts(&["rbind", "ro", "rprivate"]));
        assert!(o.is_bind() && o.is_readonly());
        assert_eq!(o.flags & libc::MS_REC, libc::MS_REC);
        assert_eq!(o.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(o.data, "");
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let o = parse(&opts(&["ro", "rw", "noexec", "exec"]));
        assert_eq!(o.flags, 0);
        assert!(!o.is_readonly());
    }

    #[test]
    fn unknown_options_go_to_the_filesystem() {
        let o = parse(&opts(&["trans=virtio", "version=9p2000.L", "msize=262144"]));
        assert_eq!(o.flags, 0);
        assert_eq!(o.data, "trans=virtio,version=9p2000.L,msize=262144");
    }
}
