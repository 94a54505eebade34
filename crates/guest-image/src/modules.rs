//! Kernel modules: finding them, reading their dependencies from `.modinfo`
//! and ordering them so each loads after everything it depends on.
//!
//! Debian's kernel package does not ship `modules.dep` (depmod writes it at
//! install time), so the dependencies are read from each module's own
//! `.modinfo` section (`depends=a,b`). Modules built into the kernel, listed
//! in the package's `modules.builtin`, need no file and are skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;
use object::{Object, ObjectSection};

use crate::error::{Error, Result, io_err};

/// The modules a sandbox guest needs by default: virtio transports (PCI and
/// MMIO), the console (agent channel), block and net, 9p and virtio-fs
/// shares, overlay and EROFS for container rootfs, and vsock. Their
/// dependencies (`virtio_pci_modern_dev`, `netfs`, `failover`, ...) are
/// added by resolution.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "virtio_net",
    "9pnet",
    "9pnet_virtio",
    "9p",
    "overlay",
    // libcrc32c (a dependency of erofs) has `softdep pre: crc32c`, a crypto
    // alias that `depends=` does not name: without an implementation its
    // init fails with ENOENT, and erofs with it.
    "crc32c_generic",
    "erofs",
    // Block rootfs and volumes (ext4 needs crc32c too, for its checksums).
    "ext4",
    "fuse",
    "virtiofs",
    "vsock",
    "vmw_vsock_virtio_transport",
];

/// Module names use `_` and `-` interchangeably; the kernel reports `_`.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// What a module lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Built into the kernel image: nothing to load.
    Builtin,
    /// A loadable module with these direct dependencies.
    Loadable {
        /// Names from its `depends=` field.
        depends: Vec<String>,
    },
    /// Neither a file nor built in.
    Missing,
}

/// Orders `requested` and their dependencies so that each module comes
/// after all it depends on (pure: all facts come from `lookup`).
///
/// Built-in modules are left out. Requested modules keep their relative
/// order where dependencies allow it, so the output is deterministic.
pub fn resolve_load_order(
    requested: &[String],
    modules_dir: &Path,
    mut lookup: impl FnMut(&str) -> Result<Lookup>,
) -> Result<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    struct Walk<'a, F> {
        lookup: &'a mut F,
        marks: HashMap<String, Mark>,
        order: Vec<String>,
        modules_dir: &'a Path,
    }
    impl<F: FnMut(&str) -> Result<Lookup>> Walk<'_, F> {
        fn visit(&mut self, name: &str, needed_by: &str) -> Result<()> {
            let name = canonical_name(name);
            match self.marks.get(&name) {
                Some(Mark::Done) => return Ok(()),
                Some(Mark::Visiting) => return Err(Error::ModuleDependencyCycle { name }),
                None => {}
            }
            self.marks.insert(name.clone(), Mark::Visiting);
            match (self.lookup)(&name)? {
                Lookup::Builtin => {}
                Lookup::Missing => {
                    return Err(Error::ModuleNotFound {
                        name,
                        modules_dir: self.modules_dir.to_owned(),
                        needed_by: needed_by.to_owned(),
                    });
                }
                Lookup::Loadable { depends } => {
                    for dep in depends {
                        self.visit(&dep, &name)?;
                    }
                    self.order.push(name.clone());
                }
            }
            self.marks.insert(name, Mark::Done);
            Ok(())
        }
    }
    let mut walk = Walk {
        lookup: &mut lookup,
        marks: HashMap::new(),
        order: Vec::new(),
        modules_dir,
    };
    for name in requested {
        walk.visit(name, "requested")?;
    }
    Ok(walk.order)
}

/// The modules of one installed kernel, indexed by canonical name.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    modules_dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Indexes `<modules_dir>/kernel/**.ko[.xz]` and `modules.builtin`.
    pub fn scan(modules_dir: &Path) -> Result<Self> {
        let mut files = BTreeMap::new();
        let mut dirs = vec![modules_dir.join("kernel")];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(io_err("read dir", &dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err("read dir", &dir))?;
                let path = entry.path();
                let file_type = entry.file_type().map_err(io_err("stat", &path))?;
                if file_type.is_dir() {
                    dirs.push(path);
                } else if let Some(name) = module_name_of_file(&path) {
                    files.insert(name, path);
                }
            }
        }
        let builtin_path = modules_dir.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => parse_builtin(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io_err("read", builtin_path)(e)),
        };
        Ok(Self {
            modules_dir: modules_dir.to_owned(),
            files,
            builtin,
        })
    }

    /// The kernel's modules dir.
    pub fn modules_dir(&self) -> &Path {
        &self.modules_dir
    }

    /// The file of a loadable module, if there is one.
    pub fn file(&self, name: &str) -> Option<&Path> {
        self.files.get(&canonical_name(name)).map(PathBuf::as_path)
    }

    /// Whether the module is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical_name(name))
    }

    /// Looks a module up, reading its `.modinfo` for dependencies.
    pub fn lookup(&self, name: &str) -> Result<Lookup> {
        if let Some(path) = self.file(name) {
            let object = read_module_object(path)?;
            let info = modinfo(&object).map_err(|reason| Error::ModuleInfo {
                path: path.to_owned(),
                reason,
            })?;
            return Ok(Lookup::Loadable {
                depends: depends_of(&info),
            });
        }
        if self.is_builtin(name) {
            return Ok(Lookup::Builtin);
        }
        Ok(Lookup::Missing)
    }

    /// Resolves `requested` to a load order (see [`resolve_load_order`]).
    pub fn resolve(&self, requested: &[String]) -> Result<Vec<String>> {
        resolve_load_order(requested, &self.modules_dir, |name| self.lookup(name))
    }

    /// The module's ELF object, decompressed when it is `.ko.xz`.
    pub fn read_object(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.file(name).ok_or_else(|| Error::ModuleNotFound {
            name: name.to_owned(),
            modules_dir: self.modules_dir.clone(),
            needed_by: "requested".to_owned(),
        })?;
        read_module_object(path)
    }
}

/// `foo-bar.ko` or `foo-bar.ko.xz` -> `foo_bar`.
fn module_name_of_file(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))?;
    Some(canonical_name(stem))
}

/// Names from `modules.builtin` lines such as `kernel/fs/ext4/ext4.ko`.
fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| module_name_of_file(Path::new(line.trim())))
        .collect()
}

fn read_module_object(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(io_err("read", path))?;
    if path.extension().is_some_and(|e| e == "xz") {
        let mut out = Vec::with_capacity(raw.len() * 3);
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io_err("decompress", path))?;
        return Ok(out);
    }
    Ok(raw)
}

/// The `key=value` strings of a module's `.modinfo` section.
pub fn modinfo(object: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    let elf = ElfFile64::<object::Endianness>::parse(object)
        .map_err(|e| format!("not a 64-bit ELF: {e}"))?;
    let section = elf
        .section_by_name(".modinfo")
        .ok_or("no .modinfo section")?;
    let data = section
        .data()
        .map_err(|e| format!("bad .modinfo section: {e}"))?;
    Ok(parse_modinfo(data))
}

/// Splits NUL-separated `key=value` strings.
pub fn parse_modinfo(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (key, value) = entry.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The names in the `depends=` field (empty when it is empty or absent).
pub fn depends_of(info: &[(String, String)]) -> Vec<String> {
    info.iter()
        .filter(|(key, _)| key == "depends")
        .flat_map(|(_, value)| value.split(','))
        .filter(|dep| !dep.is_empty())
        .map(canonical_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn fake(table: &[(&str, Option<&[&str]>)]) -> impl FnMut(&str) -> Result<Lookup> + use<> {
        let table: HashMap<String, Option<Vec<String>>> = table
            .iter()
            .map(|(n, d)| (n.to_string(), d.map(names)))
            .collect();
        move |name| {
            Ok(match table.get(name) {
                Some(Some(depends)) => Lookup::Loadable {
                    depends: depends.clone(),
                },
                Some(None) => Lookup::Builtin,
                None => Lookup::Missing,
            })
        }
    }

    fn position(order: &[String], name: &str) -> usize {
        order.iter().position(|n| n == name).unwrap()
    }

    #[test]
    fn dependencies_come_first() {
        let lookup = fake(&[
            ("virtio", Some(&[])),
            ("virtio_ring", Some(&[])),
            ("virtio_pci_modern_dev", Some(&[])),
            (
                "virtio_pci",
                Some(&["virtio_ring", "virtio_pci_modern_dev", "virtio"]),
            ),
            ("9p", Some(&["9pnet", "netfs", "fscache"])),
            ("9pnet", Some(&[])),
            ("netfs", Some(&[])),
            ("fscache", Some(&["netfs"])),
        ]);
        let order =
            resolve_load_order(&names(&["virtio_pci", "9p"]), Path::new("/m"), lookup).unwrap();
        assert_eq!(order.len(), 8);
        for (module, dep) in [
            ("virtio_pci", "virtio_ring"),
            ("virtio_pci", "virtio"),
            ("virtio_pci", "virtio_pci_modern_dev"),
            ("9p", "fscache"),
            ("fscache", "netfs"),
            ("9p", "9pnet"),
        ] {
            assert!(
                position(&order, dep) < position(&order, module),
                "{dep} before {module}: {order:?}"
            );
        }
    }

    #[test]
    fn each_module_once_and_dashes_canonical() {
        let lookup = fake(&[
            ("a", Some(&["b_c"])),
            ("b_c", Some(&[])),
            ("d", Some(&["b-c"])),
        ]);
        let order =
            resolve_load_order(&names(&["a", "d", "a", "b-c"]), Path::new("/m"), lookup).unwrap();
        assert_eq!(order, names(&["b_c", "a", "d"]));
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let lookup = fake(&[("a", Some(&["crc"])), ("crc", None)]);
        let order = resolve_load_order(&names(&["a", "crc"]), Path::new("/m"), lookup).unwrap();
        assert_eq!(order, names(&["a"]));
    }

    #[test]
    fn missing_dependency_names_who_needs_it() {
        let lookup = fake(&[("a", Some(&["gone"]))]);
        let err = resolve_load_order(&names(&["a"]), Path::new("/m"), lookup).unwrap_err();
        assert!(
            matches!(&err, Error::ModuleNotFound { name, needed_by, .. } if name == "gone" && needed_by == "a"),
            "{err}"
        );
    }

    #[test]
    fn cycles_are_errors() {
        let lookup = fake(&[("a", Some(&["b"])), ("b", Some(&["a"]))]);
        let err = resolve_load_order(&names(&["a"]), Path::new("/m"), lookup).unwrap_err();
        assert!(matches!(err, Error::ModuleDependencyCycle { .. }), "{err}");
    }

    #[test]
    fn modinfo_strings_and_depends() {
        let info = parse_modinfo(
            b"license=GPL\0depends=virtio,virtio_ring\0\0name=virtio_blk\0vermagic=6.1\0",
        );
        assert_eq!(depends_of(&info), names(&["virtio", "virtio_ring"]));
        assert!(depends_of(&parse_modinfo(b"depends=\0name=x\0")).is_empty());
        assert!(depends_of(&parse_modinfo(b"name=x\0")).is_empty());
    }

    #[test]
    fn builtin_list_and_file_names() {
        let set = parse_builtin("kernel/lib/crc32c.ko\nkernel/drivers/foo-bar.ko\n\n");
        assert!(set.contains("crc32c") && set.contains("foo_bar"));
        assert_eq!(
            module_name_of_file(Path::new("/x/nf-nat.ko.xz")).as_deref(),
            Some("nf_nat")
        );
        assert_eq!(module_name_of_file(Path::new("/x/readme.txt")), None);
    }

    #[test]
    fn scans_a_modules_tree() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("kernel/drivers/x");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("virtio-blk.ko"), b"not elf").unwrap();
        std::fs::write(dir.path().join("modules.builtin"), "kernel/lib/crc32c.ko\n").unwrap();
        let index = ModuleIndex::scan(dir.path()).unwrap();
        assert_eq!(
            index.file("virtio_blk"),
            Some(sub.join("virtio-blk.ko").as_path())
        );
        assert!(index.is_builtin("crc32c"));
        assert_eq!(index.lookup("crc32c").unwrap(), Lookup::Builtin);
        assert_eq!(index.lookup("nope").unwrap(), Lookup::Missing);
        // A .ko that is not ELF is a typed error naming the file.
        assert!(matches!(
            index.lookup("virtio_blk"),
            Err(Error::ModuleInfo { .. })
        ));
    }
}
