//! The layer options of an overlay mount, as the mount table shows them.
//!
//! After the mount table's octal escapes are undone, overlayfs's own
//! escaping remains: in `lowerdir=`, `upperdir=` and `workdir=`, a
//! backslash escapes the next character (so `\:` is a colon inside a path
//! and `:` separates layers); `::` starts the data-only layers. Kernels
//! with the new mount API may instead show one `lowerdir+=` (and
//! `datadir+=`) option per layer, taken verbatim.

use std::path::PathBuf;

/// The layer options of an overlay mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayers {
    /// Lower dirs, topmost first, as overlayfs stacks them.
    pub lowerdirs: Vec<PathBuf>,
    /// The writable upper dir, if any.
    pub upperdir: Option<PathBuf>,
    /// The work dir, if any.
    pub workdir: Option<PathBuf>,
    /// Other overlay options that change how the layers are read
    /// (`redirect_dir=`, `metacopy=`, `index=`, `xino=`, `userxattr`, ...).
    pub features: Vec<String>,
}

/// Why the options cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayOptionsError {
    /// No lower dir at all.
    NoLowerDir,
    /// Data-only lower layers (`::` or `datadir+=`): their files are only
    /// reachable through metacopy redirects, which this crate does not follow.
    DataOnlyLayers,
    /// `lowerdir=` and `lowerdir+=` together (the kernel refuses this too).
    MixedLowerdirSyntax,
    /// A path ends in a lone backslash.
    DanglingEscape(String),
    /// A path is not valid UTF-8 (the mount table options lost bytes).
    NonUtf8(String),
}

impl std::fmt::Display for OverlayOptionsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoLowerDir => f.write_str("the overlay has no lowerdir"),
            Self::DataOnlyLayers => f.write_str(
                "data-only lower layers (`::` or datadir+) are reachable only through metacopy redirects",
            ),
            Self::MixedLowerdirSyntax => f.write_str("lowerdir= and lowerdir+= are mixed"),
            Self::DanglingEscape(s) => write!(f, "option {s:?} ends in a lone backslash"),
            Self::NonUtf8(s) => write!(f, "option {s:?} holds a path that is not valid UTF-8"),
        }
    }
}

/// Options that only say how the mount behaves for its users; the rest
/// (besides the layer dirs) describe the layers' on-disk format.
const MOUNT_FLAGS: &[&str] = &[
    "rw",
    "ro",
    "relatime",
    "noatime",
    "nodiratime",
    "strictatime",
    "lazytime",
    "nosuid",
    "nodev",
    "noexec",
    "sync",
    "dirsync",
    "mand",
    "silent",
];

/// Splits on unescaped `sep` (if any) and drops the escaping backslashes.
fn split_escaped(value: &str, sep: Option<char>) -> Result<Vec<String>, OverlayOptionsError> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let escaped = chars
                .next()
                .ok_or_else(|| OverlayOptionsError::DanglingEscape(value.to_owned()))?;
            parts.last_mut().expect("never empty").push(escaped);
        } else if Some(c) == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("never empty").push(c);
        }
    }
    Ok(parts)
}

fn checked(option: &str, path: String) -> Result<PathBuf, OverlayOptionsError> {
    if path.contains(char::REPLACEMENT_CHARACTER) {
        return Err(OverlayOptionsError::NonUtf8(option.to_owned()));
    }
    Ok(PathBuf::from(path))
}

fn single_dir(option: &str, value: &str) -> Result<PathBuf, OverlayOptionsError> {
    let mut parts = split_escaped(value, None)?;
    checked(option, parts.remove(0))
}

/// Reads the layer options out of an overlay mount's options.
pub fn parse(options: &[String]) -> Result<OverlayLayers, OverlayOptionsError> {
    let mut legacy: Option<Vec<PathBuf>> = None;
    let mut appended: Vec<PathBuf> = Vec::new();
    let mut upperdir = None;
    let mut workdir = None;
    let mut features = Vec::new();
    for option in options {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option.as_str(), None),
        };
        match (key, value) {
            ("lowerdir", Some(v)) => {
                let mut dirs = Vec::new();
                for part in split_escaped(v, Some(':'))? {
                    if part.is_empty() {
                        return Err(OverlayOptionsError::DataOnlyLayers);
                    }
                    dirs.push(checked(option, part)?);
                }
                legacy = Some(dirs);
            }
            ("lowerdir+", Some(v)) => appended.push(checked(option, v.to_owned())?),
            ("datadir+", _) => return Err(OverlayOptionsError::DataOnlyLayers),
            ("upperdir", Some(v)) => upperdir = Some(single_dir(option, v)?),
            ("workdir", Some(v)) => workdir = Some(single_dir(option, v)?),
            (flag, None) if MOUNT_FLAGS.contains(&flag) => {}
            _ => features.push(option.clone()),
        }
    }
    let lowerdirs = match (legacy, appended.is_empty()) {
        (Some(_), false) => return Err(OverlayOptionsError::MixedLowerdirSyntax),
        (Some(dirs), true) => dirs,
        (None, _) => appended,
    };
    if lowerdirs.is_empty() {
        return Err(OverlayOptionsError::NoLowerDir);
    }
    Ok(OverlayLayers {
        lowerdirs,
        upperdir,
        workdir,
        features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn legacy_lowerdir_with_overlay_escapes() {
        // What the kernel shows after the mount table's octal escapes are
        // undone: `\:` and `\,` are overlayfs escapes inside one path.
        let layers = parse(&opts(&[
            "rw",
            "lowerdir=/l/a b:/l/c\\:d:/l/e\\,f",
            "upperdir=/u/x\\:y",
            "workdir=/w",
            "uuid=on",
            "redirect_dir=on",
        ]))
        .unwrap();
        assert_eq!(
            layers.lowerdirs,
            [
                Path::new("/l/a b"),
                Path::new("/l/c:d"),
                Path::new("/l/e,f")
            ]
        );
        assert_eq!(layers.upperdir.as_deref(), Some(Path::new("/u/x:y")));
        assert_eq!(layers.workdir.as_deref(), Some(Path::new("/w")));
        assert_eq!(layers.features, ["uuid=on", "redirect_dir=on"]);
    }

    #[test]
    fn new_mount_api_lowerdir_plus_is_verbatim() {
        let layers = parse(&opts(&["lowerdir+=/l/top\\x", "lowerdir+=/l/a:b"])).unwrap();
        assert_eq!(
            layers.lowerdirs,
            [Path::new("/l/top\\x"), Path::new("/l/a:b")]
        );
        assert_eq!(layers.upperdir, None);
    }

    #[test]
    fn refuses_what_it_cannot_map() {
        let err = |o: &[&str]| parse(&opts(o)).unwrap_err();
        assert_eq!(err(&["upperdir=/u"]), OverlayOptionsError::NoLowerDir);
        assert_eq!(
            err(&["lowerdir=/a::/data"]),
            OverlayOptionsError::DataOnlyLayers
        );
        assert_eq!(
            err(&["lowerdir+=/a", "datadir+=/data"]),
            OverlayOptionsError::DataOnlyLayers
        );
        assert_eq!(
            err(&["lowerdir=/a", "lowerdir+=/b"]),
            OverlayOptionsError::MixedLowerdirSyntax
        );
        assert!(matches!(
            err(&["lowerdir=/a\\"]),
            OverlayOptionsError::DanglingEscape(_)
        ));
        assert!(matches!(
            err(&["lowerdir=/a\u{fffd}"]),
            OverlayOptionsError::NonUtf8(_)
        ));
    }
}
