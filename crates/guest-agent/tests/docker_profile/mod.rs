//! Docker's default seccomp profile (`tests/fixtures/docker-default-seccomp.json`)
//! as the OCI `linux.seccomp` Docker hands runc for a container on x86-64
//! with Docker's default capabilities: the native architecture and its
//! sub-architectures from `archMap`, and the rules whose `includes` hold
//! and whose `excludes` do not (architecture, capabilities, kernel version).
//! Shared by the agent's unit tests and its VM tests.

#![allow(dead_code)]

use oci_spec::runtime::LinuxSeccomp;
use serde_json::{Value, json};

/// The profile in Docker's format.
pub const DOCKER_PROFILE: &str = include_str!("../fixtures/docker-default-seccomp.json");

/// Docker's default capabilities (what `docker run` grants without `--cap-add`).
pub const DOCKER_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Kernel version `a.b` as a pair, for `minKernel`.
fn version(s: &str) -> (u32, u32) {
    let mut it = s
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The OCI profile for `caps` on amd64 under a kernel of version `kernel`.
pub fn oci_profile(caps: &[&str], kernel: (u32, u32)) -> LinuxSeccomp {
    let docker: Value = serde_json::from_str(DOCKER_PROFILE).expect("the fixture is JSON");
    let arch = "amd64";
    let mut architectures = Vec::new();
    for m in docker["archMap"].as_array().into_iter().flatten() {
        if m["architecture"] == "SCMP_ARCH_X86_64" {
            architectures.push(json!("SCMP_ARCH_X86_64"));
            architectures.extend(
                strings(&m["subArchitectures"])
                    .into_iter()
                    .map(|s| json!(s)),
            );
        }
    }
    let mut syscalls = Vec::new();
    for rule in docker["syscalls"].as_array().into_iter().flatten() {
        let inc = &rule["includes"];
        let exc = &rule["excludes"];
        let inc_arches = strings(&inc["arches"]);
        if !inc_arches.is_empty() && !inc_arches.contains(&arch) {
            continue;
        }
        if !strings(&inc["caps"]).iter().all(|c| caps.contains(c)) {
            continue;
        }
        if let Some(min) = inc["minKernel"].as_str()
            && kernel < version(min)
        {
            continue;
        }
        if strings(&exc["arches"]).contains(&arch) {
            continue;
        }
        if strings(&exc["caps"]).iter().any(|c| caps.contains(c)) {
            continue;
        }
        let mut oci = json!({ "names": rule["names"], "action": rule["action"] });
        if !rule["args"].is_null() {
            oci["args"] = rule["args"].clone();
        }
        if !rule["errnoRet"].is_null() {
            oci["errnoRet"] = rule["errnoRet"].clone();
        }
        syscalls.push(oci);
    }
    serde_json::from_value(json!({
        "defaultAction": docker["defaultAction"],
        "defaultErrnoRet": docker["defaultErrnoRet"],
        "architectures": architectures,
        "syscalls": syscalls,
    }))
    .expect("an OCI seccomp profile")
}

/// The profile for Docker's default capabilities under the 6.1 guest kernel.
pub fn docker_default() -> LinuxSeccomp {
    oci_profile(&DOCKER_CAPS, (6, 1))
}
