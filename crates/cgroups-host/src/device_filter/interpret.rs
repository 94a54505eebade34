//! A tiny eBPF interpreter for the instructions the device program uses,
//! to check what a generated program decides for any access against
//! [`crate::plan::permits`] (the kernel itself runs it in the applier's
//! tests on real cgroup2 hierarchies).

use proptest::prelude::*;

use super::program::*;
use crate::plan::{DeviceAccess, DeviceKind, DeviceRule, permits};

/// Runs `insns` on a `bpf_cgroup_dev_ctx`; `r0` at `exit`. Panics on an
/// instruction it does not know, a jump out of the program, or a loop.
fn run(insns: &[Insn], access_type: u32, major: u32, minor: u32) -> u64 {
    let ctx = [access_type, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    for _ in 0..=insns.len() {
        let i = insns[pc];
        let (dst, src) = (usize::from(i.dst), usize::from(i.src));
        // ALU32 results are zero-extended; immediates of 64-bit compares
        // are sign-extended.
        let imm64 = i64::from(i.imm) as u64;
        let mut next = pc + 1;
        match i.code {
            0x61 => {
                assert_eq!(src, 1, "loads only from the context");
                let field = usize::try_from(i.off).unwrap() / 4;
                r[dst] = u64::from(ctx[field]);
            }
            0x54 => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
            0x74 => r[dst] = u64::from((r[dst] as u32) >> i.imm),
            0xb4 => r[dst] = u64::from(i.imm as u32),
            0xbc => r[dst] = u64::from(r[src] as u32),
            0x55 | 0x5d | 0x15 => {
                let other = if i.code == 0x5d { r[src] } else { imm64 };
                if (r[dst] != other) == (i.code != 0x15) {
                    next = (pc as i64 + 1 + i64::from(i.off)) as usize;
                }
            }
            0x95 => return r[0],
            code => panic!("unexpected opcode {code:#x}"),
        }
        assert!(next > pc && next < insns.len(), "jump out of the program");
        pc = next;
    }
    panic!("no exit")
}

fn kind_strategy() -> impl Strategy<Value = DeviceKind> {
    prop_oneof![
        Just(DeviceKind::Char),
        Just(DeviceKind::Block),
        Just(DeviceKind::All)
    ]
}

fn access_strategy() -> impl Strategy<Value = DeviceAccess> {
    (1u8..8).prop_map(|bits| {
        [DeviceAccess::READ, DeviceAccess::WRITE, DeviceAccess::MKNOD]
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, a)| a)
            .reduce(DeviceAccess::union)
            .unwrap()
    })
}

fn rule_strategy() -> impl Strategy<Value = DeviceRule> {
    // Few numbers, so that rules overlap and accesses hit them.
    (
        kind_strategy(),
        proptest::option::of(0u32..3),
        proptest::option::of(0u32..3),
        access_strategy(),
        any::<bool>(),
    )
        .prop_map(|(kind, major, minor, access, allow)| DeviceRule {
            kind,
            major,
            minor,
            access,
            allow,
        })
}

proptest! {
    #[test]
    fn the_program_decides_every_access_as_permits_does(
        rules in proptest::collection::vec(rule_strategy(), 0..6),
    ) {
        let program = device_program(&rules);
        for (kind, type_bits) in [(DeviceKind::Char, DEV_CHAR), (DeviceKind::Block, DEV_BLOCK)] {
            for bits in 1u8..8 {
                let access = [DeviceAccess::READ, DeviceAccess::WRITE, DeviceAccess::MKNOD]
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| bits & (1 << i) != 0)
                    .map(|(_, a)| a)
                    .reduce(DeviceAccess::union)
                    .unwrap();
                let access_type = type_bits | (access_bits(access) << 16);
                for major in 0..3 {
                    for minor in 0..3 {
                        let expected = permits(&rules, kind, major, minor, access);
                        let got = run(&program, access_type, major, minor);
                        prop_assert_eq!(
                            got,
                            u64::from(expected),
                            "{:?} {}:{} {} under {:?}",
                            kind, major, minor, access, rules
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn numbers_beyond_i32_match_no_device() {
    let huge = DeviceRule::char(u32::MAX, 0);
    let program = device_program(&[huge]);
    let access_type = DEV_CHAR | (ACC_READ << 16);
    assert_eq!(run(&program, access_type, u32::MAX, 0), 0);
    assert_eq!(run(&program, access_type, 1, 0), 0);
}
