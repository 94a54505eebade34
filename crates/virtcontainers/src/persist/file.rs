//! Versioned JSON files written atomically: what every record of a
//! sandbox (its state, its cgroups) is stored as.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Version of the record format this build writes and reads.
///
/// 2: host cgroups moved out of `state.json` into `cgroups.json`, ids
/// checked when read.
pub const STATE_VERSION: u32 = 2;

/// Reads a versioned record, `None` when the file does not exist.
pub fn read_versioned<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::StateIo {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |source| Error::StateCorrupt {
        path: path.to_owned(),
        source,
    };
    #[derive(serde::Deserialize)]
    struct Header {
        version: u32,
    }
    let header: Header = serde_json::from_slice(&text).map_err(corrupt)?;
    if header.version != STATE_VERSION {
        return Err(Error::UnsupportedStateVersion {
            path: path.to_owned(),
            found: header.version,
            supported: STATE_VERSION,
        });
    }
    #[derive(serde::Deserialize)]
    struct Body<T> {
        state: T,
    }
    let body: Body<T> = serde_json::from_slice(&text).map_err(corrupt)?;
    Ok(Some(body.state))
}

/// Writes a versioned record atomically: a temporary file, fsync, rename,
/// fsync of the directory. A reader sees the old record or the new one,
/// never a torn one, and a crash keeps one of the two.
pub fn write_versioned<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    #[derive(Serialize)]
    struct Versioned<'a, T> {
        version: u32,
        state: &'a T,
    }
    let bytes = serde_json::to_vec_pretty(&Versioned {
        version: STATE_VERSION,
        state: value,
    })
    .map_err(|source| Error::StateCorrupt {
        path: path.to_owned(),
        source,
    })?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::StateIo { path, source }
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}
