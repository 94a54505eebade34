//! Builds real images from the installed Debian kernel package and checks
//! what the guest will find in them.

use std::collections::HashMap;
use std::path::PathBuf;

use vc_guest_image::modules::{depends_of, modinfo};
use vc_guest_image::vmlinux::check_pvh_bootable;
use vc_guest_image::{GuestImage, GuestImageBuilder, ImageCache, LOAD_ORDER_PATH, read_archive};
use vc_test_support::require_guest_kernel;

fn archive(image: &GuestImage) -> HashMap<String, (u32, Vec<u8>)> {
    let bytes = std::fs::read(&image.initramfs).unwrap();
    read_archive(&bytes[..])
        .unwrap()
        .into_iter()
        .map(|e| (e.name, (e.mode, e.data)))
        .collect()
}

#[test]
fn image_from_the_installed_kernel_is_bootable_and_complete() {
    let cache_root = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_root.path());
    let init = b"#!/bin/sh\necho init\n".to_vec();
    let image = GuestImageBuilder::new(require_guest_kernel(), init.clone())
        .extra_file("/etc/hello", b"hello\n".to_vec(), 0o640)
        .build_cached(&cache)
        .unwrap();

    // The kernel is an uncompressed ELF with a PVH entry point.
    let vmlinux = std::fs::read(&image.vmlinux).unwrap();
    check_pvh_bootable(&vmlinux).unwrap();

    let files = archive(&image);
    assert_eq!(files["init"], (0o100755, init));
    assert_eq!(files["etc/hello"], (0o100640, b"hello\n".to_vec()));
    assert_eq!(files["dev/console"].0, 0o020600);

    // load-order lists every bundled module once, after its dependencies,
    // which are read back from the bundled files themselves.
    let order_text =
        String::from_utf8(files[LOAD_ORDER_PATH.trim_start_matches('/')].1.clone()).unwrap();
    let order: Vec<&str> = order_text.lines().collect();
    assert_eq!(order, image.manifest.modules);
    for wanted in [
        "virtio_pci.ko",
        "virtio_console.ko",
        "virtio_blk.ko",
        "9p.ko",
        "9pnet_virtio.ko",
        "overlay.ko",
        "erofs.ko",
        "virtiofs.ko",
        "vmw_vsock_virtio_transport.ko",
        // dependencies that were not asked for by name:
        "virtio_pci_modern_dev.ko",
        "netfs.ko",
        "vmw_vsock_virtio_transport_common.ko",
    ] {
        assert!(order.contains(&wanted), "{wanted} missing from {order:?}");
    }
    let bundled: Vec<_> = files
        .keys()
        .filter(|n| n.starts_with("lib/modules/vc/") && n.ends_with(".ko"))
        .collect();
    assert_eq!(bundled.len(), order.len());
    for (index, file) in order.iter().enumerate() {
        let object = &files[&format!("lib/modules/vc/{file}")].1;
        for dep in depends_of(&modinfo(object).unwrap()) {
            let dep_file = format!("{dep}.ko");
            let at = order.iter().position(|f| *f == dep_file);
            assert!(
                at.is_some_and(|at| at < index),
                "{dep_file} must load before {file}: {order:?}"
            );
        }
    }
}

#[test]
fn cache_hits_for_same_inputs_and_rebuilds_when_they_change() {
    let cache_root = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_root.path());
    let modules = ["virtio_console"];
    let builder =
        GuestImageBuilder::new(require_guest_kernel(), b"init-1".to_vec()).modules(modules);
    let first = builder.build_cached(&cache).unwrap();
    let mtime = std::fs::metadata(&first.vmlinux)
        .unwrap()
        .modified()
        .unwrap();

    let again = GuestImageBuilder::new(require_guest_kernel(), b"init-1".to_vec())
        .modules(modules)
        .build_cached(&cache)
        .unwrap();
    assert_eq!(again.dir, first.dir);
    assert_eq!(
        std::fs::metadata(&again.vmlinux)
            .unwrap()
            .modified()
            .unwrap(),
        mtime,
        "rebuilt on a hit"
    );

    let changed_init =
        GuestImageBuilder::new(require_guest_kernel(), b"init-2".to_vec()).modules(modules);
    let changed_modules =
        GuestImageBuilder::new(require_guest_kernel(), b"init-1".to_vec()).modules(["virtio_blk"]);
    let changed_file = builder.clone().extra_file("/x", b"x".to_vec(), 0o644);
    let changed_mode = builder.clone().extra_file("/x", b"x".to_vec(), 0o755);
    let keys: Vec<String> = [
        &builder,
        &changed_init,
        &changed_modules,
        &changed_file,
        &changed_mode,
    ]
    .iter()
    .map(|b| b.cache_key().unwrap())
    .collect();
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
    let other = changed_init.build_cached(&cache).unwrap();
    assert_ne!(other.dir, first.dir);
    assert_eq!(archive(&other)["init"].1, b"init-2");
    assert_eq!(
        other.manifest.modules,
        ["virtio_ring.ko", "virtio.ko", "virtio_console.ko"]
    );
}

#[test]
fn unknown_module_is_a_typed_error_and_publishes_nothing() {
    let cache_root = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(cache_root.path());
    let err = GuestImageBuilder::new(require_guest_kernel(), b"init".to_vec())
        .modules(["virtio_blk", "no_such_module_xyz"])
        .build_cached(&cache)
        .unwrap_err();
    assert!(
        matches!(&err, vc_guest_image::Error::ModuleNotFound { name, .. } if name == "no_such_module_xyz"),
        "{err}"
    );
    let left: Vec<PathBuf> = std::fs::read_dir(cache_root.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cli_writes_an_image_dir() {
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_vc-guest-image"))
        .args([
            "--no-install",
            "--init",
            "/bin/true",
            "--module",
            "virtio_blk",
            "--file",
        ])
        .arg("/etc/motd=/etc/hostname:0644")
        .arg("--out")
        .arg(out.path())
        .arg("--cache-dir")
        .arg(cache.path())
        .status()
        .unwrap();
    assert!(status.success());
    let image = GuestImage::open(out.path()).unwrap();
    assert_eq!(
        image.manifest.modules,
        ["virtio_ring.ko", "virtio.ko", "virtio_blk.ko"]
    );
    let files = archive(&image);
    assert_eq!(files["init"].1, std::fs::read("/bin/true").unwrap());
    assert_eq!(files["etc/motd"].0, 0o100644);
}
