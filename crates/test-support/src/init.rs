//! Busybox `/init` scripts for test images (the real guest agent replaces
//! them in the SDK). Each follows the initramfs contract of
//! `vc-guest-image`: it mounts the pseudo filesystems, loads
//! `/lib/modules/vc/load-order`, and finds the virtio-serial port named
//! `agent.channel.0`; then, by [`InitMode`], it serves shell commands on
//! that port or writes one line there and idles.

/// The first line the guest writes on the agent channel once it serves
/// (`VC-TEST-READY <uptime>` in [`InitMode::Serve`], `VC-TEST-READY` alone
/// in [`InitMode::ReadyLine`]).
pub const READY: &str = "VC-TEST-READY";
/// The line that ends each answer of [`InitMode::Serve`]:
/// `VC-TEST-END <exit status>`.
pub const END: &str = "VC-TEST-END";
/// What the init writes on the console before it serves:
/// `vc-test-init: serving on /dev/vportNpM`.
pub const SERVING: &str = "vc-test-init: serving on";

/// What the init does once it has found the agent channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitMode {
    /// Installs the busybox applets, then, on every host connection,
    /// writes [`READY`] and runs each line it reads as a shell command,
    /// answering with its output and `VC-TEST-END <status>`
    /// ([`crate::GuestShell`] is the host end).
    Serve,
    /// Writes [`READY`] as soon as the channel can carry a line, then
    /// sleeps: the floor any agent could reach, for the benches. Calls
    /// busybox by path and installs no applets, to spend nothing else.
    ReadyLine,
}

/// The `/init` script for `mode` (needs `/bin/busybox` in the image).
pub fn init_script(mode: InitMode) -> String {
    let install = match mode {
        InitMode::Serve => "$B --install -s /bin\nexport PATH=/bin\n",
        InitMode::ReadyLine => "",
    };
    let serve = match mode {
        InitMode::Serve => SERVE_LOOP,
        InitMode::ReadyLine => READY_LINE,
    };
    format!("{HEAD}{install}{FIND_CHANNEL}{serve}")
}

const HEAD: &str = r#"#!/bin/busybox sh
# vc-test-support test init: not the guest agent.
B=/bin/busybox
"#;

const FIND_CHANNEL: &str = r#"$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
while read -r m; do
  $B insmod "/lib/modules/vc/$m" || echo "vc-test-init: insmod $m failed"
done < /lib/modules/vc/load-order
port=""
for _ in $($B seq 1 500); do
  for p in /sys/class/virtio-ports/*; do
    [ "$($B cat "$p/name" 2>/dev/null)" = agent.channel.0 ] && port="/dev/${p##*/}"
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  port=""
  $B sleep 0.02
done
if [ -z "$port" ]; then
  echo "vc-test-init: no agent.channel.0 port"
  $B poweroff -f
fi
"#;

const SERVE_LOOP: &str = r#"echo "vc-test-init: serving on $port"
while true; do
  exec 3<>"$port"
  # Blocks until the host connects to the channel.
  echo "VC-TEST-READY $(cat /proc/uptime)" >&3
  while IFS= read -r line <&3; do
    out=$(sh -c "$line" 2>&1)
    rc=$?
    printf '%s\nVC-TEST-END %s\n' "$out" "$rc" >&3
  done
  exec 3>&-
  sleep 0.1
done
"#;

const READY_LINE: &str = r#"echo VC-TEST-READY > "$port"
exec $B sleep 3600
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_valid_shell_and_speak_the_markers() {
        for mode in [InitMode::Serve, InitMode::ReadyLine] {
            let script = init_script(mode);
            assert!(script.starts_with("#!/bin/busybox sh\n"), "{mode:?}");
            assert!(script.contains("agent.channel.0"), "{mode:?}");
            assert!(script.contains(READY), "{mode:?}");
            let check = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{mode:?}: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let serve = init_script(InitMode::Serve);
        assert!(serve.contains(END) && serve.contains(SERVING));
        assert!(serve.contains("--install"));
        assert!(!init_script(InitMode::ReadyLine).contains("--install"));
    }
}
