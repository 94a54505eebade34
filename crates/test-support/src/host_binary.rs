//! A host executable carried into a test guest: the binary without its
//! debug info, the shared libraries it loads and its dynamic loader, each
//! at the path the loader looks for it. The guest kernel runs it as the
//! host does, so a test binary can run itself inside a VM (e.g. to test
//! what needs a kernel feature the host lacks) without a second, static
//! build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::require::{Need, require};

/// What [`host_binary_files`] runs: `objcopy` and `ldd`.
pub const HOST_BINARY_TOOLS: &[Need] = &[
    Need::Program {
        name: "objcopy",
        package: "binutils",
    },
    Need::Program {
        name: "ldd",
        package: "libc-bin",
    },
];

/// The files that run `binary` in a guest, as (image path, host file)
/// pairs for [`crate::busybox_image_with_files`]: a copy of `binary`
/// without debug info (written into `scratch`) at `image_path`, and every
/// shared library `ldd` lists, the dynamic loader included, at its host
/// path. Fails the test, naming the tool, when `objcopy` or `ldd` is
/// missing.
pub fn host_binary_files(
    binary: &Path,
    image_path: &str,
    scratch: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    require(HOST_BINARY_TOOLS);
    let stripped = scratch.join(binary.file_name().context("the binary has no file name")?);
    let out = Command::new("objcopy")
        .arg("--strip-debug")
        .args([binary, &stripped])
        .output()
        .context("running objcopy")?;
    ensure!(
        out.status.success(),
        "objcopy --strip-debug {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    ensure!(
        out.status.success(),
        "ldd {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = vec![(image_path.to_owned(), stripped)];
    for lib in ldd_libraries(&String::from_utf8_lossy(&out.stdout))? {
        files.push((lib.to_string_lossy().into_owned(), lib));
    }
    Ok(files)
}

/// The absolute library paths in `ldd` output: `name => /path (addr)`
/// lines and the loader's `/path (addr)` line; the vDSO has no file.
fn ldd_libraries(output: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let path = rest.split_whitespace().next().unwrap_or("");
                if !path.starts_with('/') {
                    bail!("ldd cannot find {}: {line:?}", name.trim());
                }
                path
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if target.starts_with('/') {
            libs.push(PathBuf::from(target));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f23)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f22)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f24)\n";
        assert_eq!(
            ldd_libraries(output).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(ldd_libraries("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn this_test_binary_with_its_libraries() {
        let scratch = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let files = host_binary_files(&me, "/bin/me", scratch.path()).unwrap();
        assert_eq!(files[0].0, "/bin/me");
        let stripped = std::fs::metadata(&files[0].1).unwrap().len();
        assert!(stripped > 0 && stripped <= std::fs::metadata(&me).unwrap().len());
        assert!(
            files.iter().any(|(p, _)| p.contains("libc.so")),
            "{files:?}"
        );
        assert!(
            files.iter().any(|(p, _)| p.contains("ld-linux")),
            "{files:?}"
        );
    }
}
