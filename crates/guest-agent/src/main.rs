//! The guest agent of virtcontainers-rs: PID 1 inside the sandbox VM.
//!
//! It will mount the pseudo filesystems, load the kernel modules bundled in
//! the initramfs, serve the agent protocol on the virtio-serial port and run
//! containers from their OCI spec. It is filled by the agent issue; until then
//! it only says so and exits with an error.

fn main() -> std::process::ExitCode {
    eprintln!("vc-guest-agent is not built yet: see the agent issue");
    std::process::ExitCode::FAILURE
}
