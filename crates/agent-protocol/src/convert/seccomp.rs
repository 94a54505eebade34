//! `linux.seccomp` both ways. Actions, architectures, flags and operators
//! travel as their OCI names (`SCMP_ACT_ERRNO`, `SCMP_ARCH_X86_64`, ...), as
//! in Kata's protocol; a name `oci-spec` does not know is a typed error.

use oci_spec::runtime as spec;

use super::{ConvertError, enum_name, enum_value};
use crate::oci;

fn arg_to_proto(a: &spec::LinuxSeccompArg) -> oci::LinuxSeccompArg {
    let mut out = oci::LinuxSeccompArg::new();
    out.Index = a.index() as u64;
    out.Value = a.value();
    out.ValueTwo = a.value_two().unwrap_or(0);
    out.Op = enum_name(&a.op());
    out
}

fn arg_from_proto(a: &oci::LinuxSeccompArg) -> Result<spec::LinuxSeccompArg, ConvertError> {
    let index = usize::try_from(a.Index).map_err(|_| ConvertError::OutOfRange {
        field: "linux.seccomp.syscalls.args.index",
        value: i64::try_from(a.Index).unwrap_or(i64::MAX),
    })?;
    let mut out = spec::LinuxSeccompArgBuilder::default()
        .index(index)
        .value(a.Value)
        .op(enum_value::<spec::LinuxSeccompOperator>(
            "linux.seccomp.syscalls.args.op",
            &a.Op,
        )?);
    // Kata's field has no presence: 0 and "not set" are the same, and both
    // mean 0 to libseccomp.
    if a.ValueTwo != 0 {
        out = out.value_two(a.ValueTwo);
    }
    out.build().map_err(|source| ConvertError::Build {
        what: "linux.seccomp.syscalls.args",
        source,
    })
}

fn syscall_to_proto(s: &spec::LinuxSyscall) -> oci::LinuxSyscall {
    let mut out = oci::LinuxSyscall::new();
    out.Names = s.names().clone();
    out.Action = enum_name(&s.action());
    if let Some(errno) = s.errno_ret() {
        out.set_errnoret(errno);
    }
    out.Args = s.args().iter().flatten().map(arg_to_proto).collect();
    out
}

fn syscall_from_proto(s: &oci::LinuxSyscall) -> Result<spec::LinuxSyscall, ConvertError> {
    let mut out = spec::LinuxSyscall::default();
    out.set_names(s.Names.clone());
    out.set_action(enum_value("linux.seccomp.syscalls.action", &s.Action)?);
    out.set_errno_ret(s.has_errnoret().then(|| s.errnoret()));
    out.set_args(
        (!s.Args.is_empty())
            .then(|| s.Args.iter().map(arg_from_proto).collect::<Result<_, _>>())
            .transpose()?,
    );
    Ok(out)
}

/// `linux.seccomp` to its message. The listener fields (`listenerPath`,
/// `listenerMetadata`, for `SCMP_ACT_NOTIFY`) are not carried: Kata's
/// protocol has no place for them, and the guest has no seccomp agent.
pub fn seccomp_to_proto(s: &spec::LinuxSeccomp) -> oci::LinuxSeccomp {
    let mut out = oci::LinuxSeccomp::new();
    out.DefaultAction = enum_name(&s.default_action());
    out.DefaultErrnoRet = s.default_errno_ret();
    out.Architectures = s.architectures().iter().flatten().map(enum_name).collect();
    out.Flags = s.flags().iter().flatten().map(enum_name).collect();
    out.Syscalls = s
        .syscalls()
        .iter()
        .flatten()
        .map(syscall_to_proto)
        .collect();
    out
}

/// A seccomp message back to `linux.seccomp`; every name must be one the
/// OCI spec defines.
pub fn seccomp_from_proto(s: &oci::LinuxSeccomp) -> Result<spec::LinuxSeccomp, ConvertError> {
    let mut out = spec::LinuxSeccomp::default();
    out.set_default_action(enum_value("linux.seccomp.defaultAction", &s.DefaultAction)?);
    out.set_default_errno_ret(s.DefaultErrnoRet);
    out.set_architectures(
        (!s.Architectures.is_empty())
            .then(|| {
                s.Architectures
                    .iter()
                    .map(|a| enum_value("linux.seccomp.architectures", a))
                    .collect::<Result<_, _>>()
            })
            .transpose()?,
    );
    out.set_flags(
        (!s.Flags.is_empty())
            .then(|| {
                s.Flags
                    .iter()
                    .map(|f| enum_value("linux.seccomp.flags", f))
                    .collect::<Result<_, _>>()
            })
            .transpose()?,
    );
    out.set_syscalls(
        (!s.Syscalls.is_empty())
            .then(|| {
                s.Syscalls
                    .iter()
                    .map(syscall_from_proto)
                    .collect::<Result<_, _>>()
            })
            .transpose()?,
    );
    Ok(out)
}
