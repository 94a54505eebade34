//! The tests' images, made offline: one-layer OCI archives of the host's
//! static busybox (every applet a symlink to it), an `/etc/passwd` with
//! a user `vcuser` (uid 1000), and an image config with `PATH`,
//! `FOO=bar` and the working directory `/work`; the second image runs as
//! `vcuser`. Loaded with `ctr image import`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::containerd::Containerd;

/// The image.
pub const IMAGE: &str = "docker.io/vc-test/busybox:1";
/// The same, its config's `User` set to `vcuser`.
pub const USER_IMAGE: &str = "docker.io/vc-test/busybox-user:1";

fn sh(script: &str, dir: &Path) -> Result<String> {
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .context("running sh")?;
    if !out.status.success() {
        bail!("{script}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes `data` as a blob; returns its digest and size.
fn blob(oci: &Path, data: &[u8]) -> Result<(String, usize)> {
    let tmp = oci.join("blob.tmp");
    std::fs::write(&tmp, data)?;
    let hex = sh("sha256sum blob.tmp | cut -d' ' -f1", oci)?;
    std::fs::rename(&tmp, oci.join("blobs/sha256").join(&hex))?;
    Ok((format!("sha256:{hex}"), data.len()))
}

/// Builds both images and imports them into `containerd`.
pub fn import(containerd: &Containerd) -> Result<()> {
    let dir = containerd.scratch("image");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    for d in ["work", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("copying /bin/busybox (apt-get install busybox-static)")?;
    sh(
        "for a in $(./rootfs/bin/busybox --list); do \
           [ \"$a\" = busybox ] || ln -sf busybox rootfs/bin/$a; done",
        &dir,
    )?;
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nvcuser:x:1000:1000::/work:/bin/sh\n",
    )?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nvcuser:x:1000:\n")?;
    sh(
        "tar --numeric-owner --owner=0 --group=0 --sort=name -C rootfs -cf layer.tar .",
        &dir,
    )?;
    let layer_hex = sh("sha256sum layer.tar | cut -d' ' -f1", &dir)?;
    for (name, user) in [(IMAGE, ""), (USER_IMAGE, "vcuser")] {
        let oci = dir.join(if user.is_empty() { "oci" } else { "oci-user" });
        std::fs::create_dir_all(oci.join("blobs/sha256"))?;
        let layer = std::fs::read(dir.join("layer.tar"))?;
        let (layer_digest, layer_size) = blob(&oci, &layer)?;
        debug_assert_eq!(layer_digest, format!("sha256:{layer_hex}"));
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/bin", "FOO=bar"],
                "WorkingDir": "/work",
                "User": user,
                "Cmd": ["sh"],
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let (config_digest, config_size) = blob(&oci, config.to_string().as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }],
        });
        let (manifest_digest, manifest_size) = blob(&oci, manifest.to_string().as_bytes())?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"io.containerd.image.name": name},
            }],
        });
        std::fs::write(oci.join("index.json"), index.to_string())?;
        std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let archive = oci.with_extension("tar");
        sh(
            &format!("tar -C {} -cf {} .", oci.display(), archive.display()),
            &dir,
        )?;
        containerd.ctr_ok(&["image", "import", &archive.display().to_string()])?;
    }
    Ok(())
}
