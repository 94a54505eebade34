//! The device program: a list of device rules turned into eBPF
//! instructions, with no I/O.
//!
//! The kernel calls a `BPF_PROG_TYPE_CGROUP_DEVICE` program with a
//! `struct bpf_cgroup_dev_ctx` in `r1`: `access_type` (the device type in
//! its low 16 bits, the requested accesses in its high 16), `major`,
//! `minor`, each a `u32`. The program returns 1 to allow, 0 to deny
//! (`EPERM`). Its shape is the one runc, crun and youki emit:
//!
//! ```text
//! r2 = type; r3 = access; r4 = major; r5 = minor
//! for each rule, last first:          (the last matching rule decides)
//!     if type  differs    goto next   (unless the rule is `a`)
//!     if access not covered goto next (unless the rule is `rwm`: an
//!                                      allow covers a request within its
//!                                      accesses, a deny one that has one)
//!     if major differs    goto next   (unless `*`)
//!     if minor differs    goto next   (unless `*`)
//!     return allow
//! next: ...
//! return 0                            (default deny)
//! ```

use std::fmt;

use crate::plan::{DeviceAccess, DeviceKind, DeviceRule};

/// `BPF_DEVCG_DEV_BLOCK` (`include/uapi/linux/bpf.h`).
pub const DEV_BLOCK: u32 = 1;
/// `BPF_DEVCG_DEV_CHAR`.
pub const DEV_CHAR: u32 = 2;
/// `BPF_DEVCG_ACC_MKNOD`.
pub const ACC_MKNOD: u32 = 1;
/// `BPF_DEVCG_ACC_READ`.
pub const ACC_READ: u32 = 2;
/// `BPF_DEVCG_ACC_WRITE`.
pub const ACC_WRITE: u32 = 4;

// Opcodes: class | operation | source (`include/uapi/linux/bpf_common.h`).
/// `BPF_LDX | BPF_MEM | BPF_W`: load a u32 from memory.
const LDX_W: u8 = 0x61;
/// `BPF_ALU | BPF_AND | BPF_K`: 32-bit and with an immediate.
const AND32_IMM: u8 = 0x54;
/// `BPF_ALU | BPF_RSH | BPF_K`: 32-bit shift right by an immediate.
const RSH32_IMM: u8 = 0x74;
/// `BPF_ALU | BPF_MOV | BPF_K`: 32-bit move of an immediate.
const MOV32_IMM: u8 = 0xb4;
/// `BPF_ALU | BPF_MOV | BPF_X`: 32-bit move of a register.
const MOV32_REG: u8 = 0xbc;
/// `BPF_JMP | BPF_JNE | BPF_K`: jump if a register differs from an
/// immediate (sign-extended to 64 bits).
const JNE_IMM: u8 = 0x55;
/// `BPF_JMP | BPF_JEQ | BPF_K`: jump if a register equals an immediate.
const JEQ_IMM: u8 = 0x15;
/// `BPF_JMP | BPF_JNE | BPF_X`: jump if two registers differ.
const JNE_REG: u8 = 0x5d;
/// `BPF_JMP | BPF_EXIT`: return `r0`.
const EXIT: u8 = 0x95;

/// Registers the program uses.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// The opcode.
    pub code: u8,
    /// Destination register.
    pub dst: u8,
    /// Source register.
    pub src: u8,
    /// Memory offset or jump distance (in instructions, from the next one).
    pub off: i16,
    /// Immediate operand.
    pub imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The instruction as the kernel reads it: opcode, registers (`dst` in
    /// the low nibble on little-endian machines), offset, immediate.
    pub fn to_bytes(self) -> [u8; 8] {
        let regs = if cfg!(target_endian = "little") {
            (self.src << 4) | (self.dst & 0x0f)
        } else {
            (self.dst << 4) | (self.src & 0x0f)
        };
        let [o0, o1] = self.off.to_ne_bytes();
        let [i0, i1, i2, i3] = self.imm.to_ne_bytes();
        [self.code, regs, o0, o1, i0, i1, i2, i3]
    }
}

impl fmt::Display for Insn {
    /// The instruction in the kernel verifier's notation, e.g.
    /// `if r4 != 0x1 goto +3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Insn {
            code,
            dst,
            src,
            off,
            imm,
        } = *self;
        match code {
            LDX_W => write!(f, "r{dst} = *(u32 *)(r{src} {off:+})"),
            AND32_IMM => write!(f, "w{dst} &= {imm:#x}"),
            RSH32_IMM => write!(f, "w{dst} >>= {imm}"),
            MOV32_IMM => write!(f, "w{dst} = {imm}"),
            MOV32_REG => write!(f, "w{dst} = w{src}"),
            JNE_IMM => write!(f, "if r{dst} != {imm:#x} goto {off:+}"),
            JNE_REG => write!(f, "if r{dst} != r{src} goto {off:+}"),
            JEQ_IMM => write!(f, "if r{dst} == {imm:#x} goto {off:+}"),
            EXIT => write!(f, "exit"),
            _ => write!(f, "{code:#04x} {dst} {src} {off} {imm}"),
        }
    }
}

/// The type bits of `kind`; `None` for `a`, which matches both.
fn type_bits(kind: DeviceKind) -> Option<u32> {
    match kind {
        DeviceKind::Char => Some(DEV_CHAR),
        DeviceKind::Block => Some(DEV_BLOCK),
        DeviceKind::All => None,
    }
}

/// The kernel's access bits for `access`.
pub fn access_bits(access: DeviceAccess) -> u32 {
    [
        (DeviceAccess::READ, ACC_READ),
        (DeviceAccess::WRITE, ACC_WRITE),
        (DeviceAccess::MKNOD, ACC_MKNOD),
    ]
    .into_iter()
    .filter(|(a, _)| access.contains(*a))
    .fold(0, |bits, (_, b)| bits | b)
}

/// A u32 as the 32-bit immediate of a compare with a register holding it
/// zero-extended. Numbers above `i32::MAX` become negative and, being
/// sign-extended, never equal the register: no real device has them
/// (majors have 12 bits, minors 20), so such a rule matches nothing.
fn imm(value: u32) -> i32 {
    value as i32
}

/// Loads the context into `r2`..`r5`.
fn prologue() -> [Insn; 6] {
    [
        Insn::new(LDX_W, R2, R1, 0, 0),
        Insn::new(AND32_IMM, R2, 0, 0, 0xffff),
        Insn::new(LDX_W, R3, R1, 0, 0),
        Insn::new(RSH32_IMM, R3, 0, 0, 16),
        Insn::new(LDX_W, R4, R1, 4, 0),
        Insn::new(LDX_W, R5, R1, 8, 0),
    ]
}

/// Returns `verdict`.
fn verdict(allow: bool) -> [Insn; 2] {
    [
        Insn::new(MOV32_IMM, R0, 0, 0, i32::from(allow)),
        Insn::new(EXIT, 0, 0, 0, 0),
    ]
}

/// The instructions of one rule: its checks, each jumping past the block
/// when the access does not match, then its verdict.
fn block(rule: &DeviceRule) -> Vec<Insn> {
    // Jumps are written with offset 0 and fixed once the length is known.
    let mut insns = Vec::new();
    if let Some(bits) = type_bits(rule.kind) {
        insns.push(Insn::new(JNE_IMM, R2, 0, 0, imm(bits)));
    }
    if rule.access != DeviceAccess::RWM {
        let bits = imm(access_bits(rule.access));
        insns.extend([
            Insn::new(MOV32_REG, R1, R3, 0, 0),
            Insn::new(AND32_IMM, R1, 0, 0, bits),
            if rule.allow {
                // Allow: the requested accesses are all within the rule's.
                Insn::new(JNE_REG, R1, R3, 0, 0)
            } else {
                // Deny: one of them is.
                Insn::new(JEQ_IMM, R1, 0, 0, 0)
            },
        ]);
    }
    if let Some(major) = rule.major {
        insns.push(Insn::new(JNE_IMM, R4, 0, 0, imm(major)));
    }
    if let Some(minor) = rule.minor {
        insns.push(Insn::new(JNE_IMM, R5, 0, 0, imm(minor)));
    }
    insns.extend(verdict(rule.allow));
    let len = insns.len();
    for (i, insn) in insns.iter_mut().enumerate() {
        if matches!(insn.code, JNE_IMM | JNE_REG | JEQ_IMM) {
            // To the first instruction after the block.
            insn.off = i16::try_from(len - 1 - i).expect("a block is a few instructions");
        }
    }
    insns
}

/// The device program enforcing `rules`: the last rule that matches an
/// access decides it, and an access no rule matches is denied (see
/// [`crate::plan::permits`], which computes the same answer).
///
/// Rules before the last one that matches everything (`a *:* rwm`) can
/// never decide and are left out, and so is the default verdict after such
/// a rule: the kernel's verifier refuses unreachable instructions.
pub fn device_program(rules: &[DeviceRule]) -> Vec<Insn> {
    let first_live = rules
        .iter()
        .rposition(DeviceRule::matches_everything)
        .unwrap_or(0);
    let live = &rules[first_live..];
    let mut insns: Vec<Insn> = prologue().to_vec();
    for rule in live.iter().rev() {
        insns.extend(block(rule));
    }
    if !live.first().is_some_and(DeviceRule::matches_everything) {
        insns.extend(verdict(false));
    }
    insns
}

/// The program as the kernel loads it: the instructions' bytes, in order.
pub fn program_bytes(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(rules: &[DeviceRule]) -> Vec<String> {
        device_program(rules)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const PROLOGUE: [&str; 6] = [
        "r2 = *(u32 *)(r1 +0)",
        "w2 &= 0xffff",
        "r3 = *(u32 *)(r1 +0)",
        "w3 >>= 16",
        "r4 = *(u32 *)(r1 +4)",
        "r5 = *(u32 *)(r1 +8)",
    ];

    fn with_prologue(body: &[&str]) -> Vec<String> {
        PROLOGUE.iter().chain(body).map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_rules_deny_everything() {
        assert_eq!(listing(&[]), with_prologue(&["w0 = 0", "exit"]));
    }

    #[test]
    fn one_device_with_every_access() {
        assert_eq!(
            listing(&[DeviceRule::char(1, 3)]),
            with_prologue(&[
                "if r2 != 0x2 goto +4",
                "if r4 != 0x1 goto +3",
                "if r5 != 0x3 goto +2",
                "w0 = 1",
                "exit",
                "w0 = 0",
                "exit",
            ])
        );
    }

    #[test]
    fn wildcards_and_partial_access_and_the_last_rule_first() {
        let loops = DeviceRule::allow_rwm(DeviceKind::Block, 7, None);
        let deny_read_any_minor_9 = DeviceRule {
            kind: DeviceKind::All,
            major: None,
            minor: Some(9),
            access: DeviceAccess::READ.union(DeviceAccess::MKNOD),
            allow: false,
        };
        assert_eq!(
            listing(&[loops, deny_read_any_minor_9]),
            with_prologue(&[
                // The deny rule, last in the list, is checked first.
                "w1 = w3",
                "w1 &= 0x3",
                "if r1 == 0x0 goto +3",
                "if r5 != 0x9 goto +2",
                "w0 = 0",
                "exit",
                "if r2 != 0x1 goto +3",
                "if r4 != 0x7 goto +2",
                "w0 = 1",
                "exit",
                "w0 = 0",
                "exit",
            ])
        );
    }

    #[test]
    fn a_rule_matching_everything_ends_the_program() {
        let everything = DeviceRule {
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: DeviceAccess::RWM,
            allow: true,
        };
        let deny_zero = DeviceRule {
            allow: false,
            ..DeviceRule::char(1, 5)
        };
        // Rules before it are dead; no default verdict after it.
        assert_eq!(
            listing(&[DeviceRule::char(1, 3), everything, deny_zero]),
            with_prologue(&[
                "if r2 != 0x2 goto +4",
                "if r4 != 0x1 goto +3",
                "if r5 != 0x5 goto +2",
                "w0 = 0",
                "exit",
                "w0 = 1",
                "exit",
            ])
        );
        assert_eq!(listing(&[everything]), with_prologue(&["w0 = 1", "exit"]));
    }

    #[test]
    fn instructions_encode_as_struct_bpf_insn() {
        // `if r4 != 0x1 goto +3`: code, dst in the low nibble, off, imm.
        assert_eq!(
            Insn::new(JNE_IMM, R4, 0, 3, 1).to_bytes(),
            [0x55, 0x04, 3, 0, 1, 0, 0, 0]
        );
        // `w1 = w3`: src in the high nibble.
        assert_eq!(
            Insn::new(MOV32_REG, R1, R3, 0, 0).to_bytes(),
            [0xbc, 0x31, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Insn::new(LDX_W, R5, R1, 8, 0).to_bytes(),
            [0x61, 0x15, 8, 0, 0, 0, 0, 0]
        );
        assert_eq!(program_bytes(&device_program(&[])).len(), 8 * 8);
    }
}
