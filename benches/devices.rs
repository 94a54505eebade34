//! The device manager's pure parts: EROFS layer discovery over mount
//! tables of 100 and 1000 mounts (beside parsing the table alone, the
//! floor any discovery pays), and VFIO attach ordering of 8 and 64 nodes
//! (beside a bare sort by PCI address).

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vc_device_manager::PciAddress;
use vc_device_manager::erofs::{MountTable, discover_in};
use vc_device_manager::vfio::{VfioAttachment, VfioFunction, VfioNode, order};

const LAYERS: usize = 10;
const SNAP: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.erofs/snapshots";
const ROOTFS: &str = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c0/rootfs";

/// A host's mountinfo: `mounts` unrelated mounts (other containers'
/// shm, secrets, ...), then the layers and the overlay; and a sysfs
/// fixture with the loop devices.
fn host(mounts: usize, sys: &Path) -> String {
    let mut text = String::from("22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n");
    for i in 0..mounts {
        writeln!(
            text,
            "{} 22 0:{} / /run/containerd/io.containerd.grpc.v1.cri/sandboxes/s{i}/shm rw,nosuid,nodev,noexec - tmpfs shm rw,size=65536k",
            100 + i,
            100 + i
        )
        .unwrap();
    }
    let mut lower = Vec::new();
    for l in 0..LAYERS {
        writeln!(
            text,
            "{} 22 7:{l} / {SNAP}/{l}/fs ro,relatime - erofs /dev/loop{l} ro,user_xattr,acl,cache_strategy=readaround",
            5000 + l
        )
        .unwrap();
        let dir = sys.join(format!("block/loop{l}/loop"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("backing_file"),
            format!("{SNAP}/{l}/layer.erofs\n"),
        )
        .unwrap();
        std::fs::write(dir.join("offset"), "0\n").unwrap();
        std::fs::write(dir.join("sizelimit"), "0\n").unwrap();
        lower.insert(0, format!("{SNAP}/{l}/fs"));
    }
    writeln!(
        text,
        "6000 22 0:900 / {ROOTFS} rw,relatime - overlay overlay rw,lowerdir={},upperdir={SNAP}/99/fs,workdir={SNAP}/99/work",
        lower.join(":")
    )
    .unwrap();
    text
}

fn discovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("erofs_discovery");
    for mounts in [100, 1000] {
        let sys = tempfile::tempdir().unwrap();
        let text = host(mounts, sys.path());
        let rootfs = PathBuf::from(ROOTFS);
        group.bench_with_input(BenchmarkId::new("parse_only", mounts), &text, |b, text| {
            b.iter(|| vc_mountinfo::parse_mountinfo(black_box(text)).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("parse_and_discover", mounts),
            &text,
            |b, text| {
                b.iter(|| {
                    let table = MountTable::parse_mountinfo(black_box(text)).unwrap();
                    let found = discover_in(&table, &rootfs, sys.path()).unwrap();
                    assert_eq!(found.layers.len(), LAYERS);
                    found
                })
            },
        );
    }
    group.finish();
}

/// `groups` IOMMU groups of two functions each, half cold-plugged, in a
/// scrambled order.
fn attachments(groups: usize) -> Vec<VfioAttachment> {
    let mut out: Vec<VfioAttachment> = (0..groups)
        .map(|g| {
            let bus = (g * 37 % 251) as u8;
            let f = |function| PciAddress {
                domain: 0,
                bus,
                device: 0,
                function,
            };
            VfioAttachment {
                host_path: format!("/dev/vfio/{g}").into(),
                node: VfioNode::Group { group: g as u32 },
                coldplug: g % 2 == 0,
                iommu_group: Some(g as u32),
                functions: vec![
                    VfioFunction {
                        address: f(0),
                        siblings: vec![f(1)],
                    },
                    VfioFunction {
                        address: f(1),
                        siblings: vec![f(0)],
                    },
                ],
            }
        })
        .collect();
    out.push(VfioAttachment {
        host_path: "/dev/vfio/vfio".into(),
        node: VfioNode::Control,
        coldplug: false,
        iommu_group: None,
        functions: Vec::new(),
    });
    out
}

fn ordering(c: &mut Criterion) {
    let mut group = c.benchmark_group("vfio_order");
    for groups in [8, 64] {
        let input = attachments(groups);
        group.bench_with_input(BenchmarkId::new("order", groups), &input, |b, input| {
            b.iter(|| order(black_box(input.clone())).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("bare_sort_by_address", groups),
            &input,
            |b, input| {
                b.iter(|| {
                    let mut v = black_box(input.clone());
                    v.sort_by_key(VfioAttachment::first_address);
                    v
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, discovery, ordering);
criterion_main!(benches);
