//! `vc-guest-image`: builds a guest image (vmlinux + initramfs) into a dir.
//!
//! Without `--init`, `/init` is a small busybox shell script that mounts the
//! pseudo filesystems, loads the bundled modules and opens a shell on the
//! console: handy to boot the image by hand and look around.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use vc_guest_image::{Error, GuestImageBuilder, ImageCache, KernelPackage};

/// The debug init used without `--init` (needs `/bin/busybox` in the image).
const DEBUG_SHELL_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/lib/modules/vc/$m" || echo "insmod $m failed"; done < /lib/modules/vc/load-order
echo "vc-guest-image debug shell; exit to power off"
setsid cttyhack sh
poweroff -f
"#;

/// Builds the kernel and initramfs a sandbox VM boots.
#[derive(Debug, Parser)]
#[command(name = "vc-guest-image", version)]
struct Args {
    /// Dir to put vmlinux, initramfs.cpio and manifest.json in.
    #[arg(long)]
    out: PathBuf,
    /// The init binary (the guest agent). Default: a busybox debug shell.
    #[arg(long)]
    init: Option<PathBuf>,
    /// A module to bundle (repeatable; replaces the default set).
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
    /// An extra file: IMAGE_PATH=HOST_PATH[:MODE], MODE in octal (default 0755).
    #[arg(long = "file", value_name = "SPEC")]
    files: Vec<String>,
    /// Busybox binary for the default init.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Kernel release to use (default: the newest installed).
    #[arg(long)]
    kernel_version: Option<String>,
    /// Do not install linux-image-amd64 with apt-get when no kernel is found.
    #[arg(long)]
    no_install: bool,
    /// Cache dir (default: vc-guest-image/ in the cargo target dir).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

fn parse_file_spec(spec: &str) -> anyhow::Result<(String, PathBuf, u32)> {
    let (image_path, host) = spec
        .split_once('=')
        .with_context(|| format!("--file {spec}: expected IMAGE_PATH=HOST_PATH[:MODE]"))?;
    let (host, mode) = match host.rsplit_once(':') {
        Some((host, mode)) if !mode.is_empty() && mode.chars().all(|c| c.is_digit(8)) => {
            (host, u32::from_str_radix(mode, 8)?)
        }
        _ => (host, 0o755),
    };
    Ok((image_path.to_owned(), PathBuf::from(host), mode))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kernel = match &args.kernel_version {
        Some(version) => KernelPackage::with_version(version)?,
        None => match KernelPackage::find_installed() {
            Ok(kernel) => kernel,
            Err(Error::KernelNotFound { .. }) if !args.no_install => {
                eprintln!(
                    "no kernel installed: installing {}",
                    vc_guest_image::KERNEL_PACKAGE
                );
                KernelPackage::install_with_apt()?
            }
            Err(e) => return Err(e.into()),
        },
    };
    let mut builder = match &args.init {
        Some(init) => GuestImageBuilder::new(kernel, init.clone()),
        None => {
            if !args.busybox.is_file() {
                bail!(
                    "the default init needs busybox at {} (install busybox-static, or pass --init)",
                    args.busybox.display()
                );
            }
            GuestImageBuilder::new(kernel, DEBUG_SHELL_INIT.as_bytes().to_vec()).extra_file(
                "/bin/busybox",
                args.busybox.clone(),
                0o755,
            )
        }
    };
    if !args.modules.is_empty() {
        builder = builder.modules(args.modules.clone());
    }
    for spec in &args.files {
        let (image_path, host, mode) = parse_file_spec(spec)?;
        builder = builder.extra_file(image_path, host, mode);
    }
    let cache = args
        .cache_dir
        .clone()
        .map_or_else(ImageCache::in_target_dir, ImageCache::new);
    let image = builder.build_cached(&cache)?.copy_to(&args.out)?;
    println!("kernel {}", image.manifest.kernel_version);
    println!("vmlinux {}", image.vmlinux.display());
    println!("initramfs {}", image.initramfs.display());
    println!("modules {}", image.manifest.modules.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_specs() {
        let (p, h, m) = parse_file_spec("/bin/x=/usr/bin/x:0644").unwrap();
        assert_eq!(
            (p.as_str(), h, m),
            ("/bin/x", PathBuf::from("/usr/bin/x"), 0o644)
        );
        let (_, h, m) = parse_file_spec("/bin/x=/a:b").unwrap();
        assert_eq!((h, m), (PathBuf::from("/a:b"), 0o755));
        assert!(parse_file_spec("/bin/x").is_err());
    }
}
