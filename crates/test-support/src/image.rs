//! Guest images for the tests: the one `make guest-image` builds, the
//! static agent built fresh from this tree with an image around it, and
//! small busybox images with a test init.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use vc_guest_image::{GuestImage, GuestImageBuilder, ImageCache};

use crate::init::{InitMode, init_script};
use crate::require::require_guest_kernel;

/// The target the static agent is built for (glibc, `+crt-static`).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The dir name of `make guest-image`'s output in the cargo target dir.
pub const GUEST_IMAGE_DIR_NAME: &str = "vc-guest-agent-image";

/// Where `make guest-image` puts the agent image (`vmlinux`,
/// `initramfs.cpio`, `manifest.json`): `vc-guest-agent-image` in the cargo
/// target dir, which honours `CARGO_TARGET_DIR`
/// ([`vc_guest_image::cargo_target_dir`]).
pub fn guest_image_dir() -> PathBuf {
    vc_guest_image::cargo_target_dir().join(GUEST_IMAGE_DIR_NAME)
}

/// The workspace root: the first dir above this crate whose `Cargo.toml`
/// has a `[workspace]` table.
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .find(|d| {
                std::fs::read_to_string(d.join("Cargo.toml"))
                    .is_ok_and(|t| t.lines().any(|l| l.trim() == "[workspace]"))
            })
            .expect("the workspace root above vc-test-support")
            .to_owned()
    })
}

/// Builds the static agent from this tree (`cargo build --release
/// --target x86_64-unknown-linux-gnu`, `+crt-static`, stripped: the same
/// command and flags as `make guest-image`, so a no-op after it) and
/// returns the binary's path. Built here rather than taken from an
/// earlier `make guest-image`, so that a test never boots a stale agent.
pub fn agent_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args(["build", "--release", "-p", "vc-guest-agent"])
            .args(["--bin", "vc-guest-agent", "--target", AGENT_TARGET])
            .arg("--message-format=json-render-diagnostics")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            )
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo to build the static guest agent");
        assert!(
            out.status.success(),
            "building the static guest agent failed"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no vc-guest-agent executable")
    })
}

/// The guest image with [`agent_binary`] as `/init` and the default
/// modules, built once per inputs and cached in the target dir.
pub fn agent_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        GuestImageBuilder::new(require_guest_kernel(), agent_binary().to_path_buf())
            .build_cached(&ImageCache::in_target_dir())
            .expect("building the agent guest image")
    })
}

/// A guest image like [`busybox_image`]`(mode, &[])` with `files` added
/// (image path, host file), built into `dir` and not cached: for files
/// that change with every build, such as a test binary
/// ([`crate::host_binary_files`]).
pub fn busybox_image_with_files(
    mode: InitMode,
    files: &[(String, PathBuf)],
    dir: &Path,
) -> GuestImage {
    let busybox = vc_guest_image::rootfs::DEFAULT_BUSYBOX;
    let builder = GuestImageBuilder::new(require_guest_kernel(), init_script(mode).into_bytes())
        .extra_file(busybox, PathBuf::from(busybox), 0o755);
    files
        .iter()
        .fold(builder, |b, (image_path, source)| {
            b.extra_file(image_path.clone(), source.clone(), 0o755)
        })
        .build_into(dir)
        .expect("building the test guest image")
}

/// A guest image whose `/init` is the busybox [`init_script`] for `mode`,
/// with `/bin/busybox` and the default modules plus `extra_modules` (e.g.
/// `ext4`), built once per inputs and cached in the target dir.
pub fn busybox_image(mode: InitMode, extra_modules: &[&str]) -> &'static GuestImage {
    type Key = (InitMode, Vec<String>);
    static IMAGES: OnceLock<Mutex<HashMap<Key, &'static GuestImage>>> = OnceLock::new();
    let key = (
        mode,
        extra_modules.iter().map(ToString::to_string).collect(),
    );
    let mut images = IMAGES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(image) = images.get(&key) {
        return image;
    }
    let modules = vc_guest_image::DEFAULT_MODULES
        .iter()
        .copied()
        .chain(extra_modules.iter().copied());
    let busybox = vc_guest_image::rootfs::DEFAULT_BUSYBOX;
    let image = GuestImageBuilder::new(require_guest_kernel(), init_script(mode).into_bytes())
        .modules(modules)
        .extra_file(busybox, PathBuf::from(busybox), 0o755)
        .build_cached(&ImageCache::in_target_dir())
        .expect("building the test guest image");
    // Built once per test process and used until it exits.
    let image: &'static GuestImage = Box::leak(Box::new(image));
    images.insert(key, image);
    image
}
