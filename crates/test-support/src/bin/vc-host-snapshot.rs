//! `vc-host-snapshot save FILE` records what the SDK could leave on this
//! host (cgroups, mounts, `/run/vc`, loop devices, QEMU and virtiofsd
//! processes); `vc-host-snapshot check FILE` fails, naming each
//! difference, unless the host is back to what FILE recorded. Run one
//! before a test suite and the other after it.

use std::process::ExitCode;

use vc_test_support::HostSnapshot;

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [command, file] = args.as_slice() else {
        anyhow::bail!("usage: vc-host-snapshot save|check FILE");
    };
    match command.as_str() {
        "save" => {
            std::fs::write(file, HostSnapshot::take().to_text())?;
            Ok(ExitCode::SUCCESS)
        }
        "check" => {
            let text = std::fs::read_to_string(file)?;
            let before = HostSnapshot::from_text(&text).map_err(anyhow::Error::msg)?;
            // Give a killed process or a loop device's autoclear a moment.
            let deadline = std::time::Instant::now() + vc_test_support::SETTLE;
            let mut changes = HostSnapshot::take().changes_since(&before);
            while !changes.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(200));
                changes = HostSnapshot::take().changes_since(&before);
            }
            for c in &changes {
                eprintln!("{c}");
            }
            if changes.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "the host changed since {file}: {} difference(s)",
                    changes.len()
                );
                Ok(ExitCode::FAILURE)
            }
        }
        other => {
            anyhow::bail!("unknown command {other:?}: usage: vc-host-snapshot save|check FILE")
        }
    }
}
