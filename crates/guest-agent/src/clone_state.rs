//! What a VM cloned from a template must not keep from its template: the
//! kernel's random state (every clone starts with its template's entropy
//! pool and generator keys) and the wall clock (every clone wakes up at
//! the instant its template was saved). The host sends fresh entropy and
//! the time right after the clone resumes (Kata's `ReseedRandomDev` and
//! `SetGuestDateTime`).

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// The entropy device.
pub const RANDOM_DEV: &str = "/dev/random";
/// Most entropy one request carries (the kernel's input pool holds 256 bits;
/// more is mixed in but buys nothing).
pub const MAX_SEED_BYTES: usize = 4096;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`, mixes a buffer into the
/// input pool and credits the entropy it claims.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`, reseeds the generator from the pool
/// now instead of at its next scheduled reseed.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The `struct rand_pool_info` for `data`: the entropy it credits in bits,
/// its length in bytes, then the bytes.
pub fn rand_pool_info(data: &[u8]) -> Result<Vec<u8>> {
    if data.is_empty() || data.len() > MAX_SEED_BYTES {
        return Err(Error::InvalidRequest {
            container_id: String::new(),
            reason: format!(
                "ReseedRandomDev carries {} bytes; 1 to {MAX_SEED_BYTES} allowed",
                data.len()
            ),
        });
    }
    let bytes = i32::try_from(data.len()).unwrap_or(i32::MAX);
    let mut info = Vec::with_capacity(8 + data.len());
    info.extend_from_slice(&(bytes * 8).to_ne_bytes());
    info.extend_from_slice(&bytes.to_ne_bytes());
    info.extend_from_slice(data);
    // The kernel reads the buffer as `__u32` words: pad to a whole one.
    info.resize(8 + data.len().div_ceil(4) * 4, 0);
    Ok(info)
}

/// Mixes `data` into the kernel's entropy pool through `device` (the
/// host's randomness, credited as such) and reseeds the generator, so that
/// `/dev/urandom` and `getrandom` differ from every other clone's at once.
pub fn reseed(device: &Path, data: &[u8]) -> Result<()> {
    let info = rand_pool_info(data)?;
    let dev = OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(Error::io("opening", device))?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes
    // follow its two ints; `info` holds exactly that and outlives the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if r < 0 {
        return Err(Error::sys("RNDADDENTROPY")(std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG, 0) };
    if r < 0 {
        return Err(Error::sys("RNDRESEEDCRNG")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The `timespec` for `sec` seconds and `usec` microseconds since the
/// Epoch; microseconds outside 0..1000000 are an invalid request.
pub fn wall_clock(sec: i64, usec: i64) -> Result<libc::timespec> {
    if !(0..1_000_000).contains(&usec) {
        return Err(Error::InvalidRequest {
            container_id: String::new(),
            reason: format!("SetGuestDateTime: {usec} microseconds"),
        });
    }
    Ok(libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: (usec * 1000) as libc::c_long,
    })
}

/// Sets the wall clock (`CLOCK_REALTIME`; the monotonic clocks go on).
pub fn set_wall_clock(sec: i64, usec: i64) -> Result<()> {
    let ts = wall_clock(sec, usec)?;
    // SAFETY: clock_settime reads one valid timespec.
    let r = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if r < 0 {
        return Err(Error::sys("clock_settime")(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_info_credits_every_bit_and_pads_to_words() {
        let info = rand_pool_info(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(&info[..4], 40i32.to_ne_bytes());
        assert_eq!(&info[4..8], 5i32.to_ne_bytes());
        assert_eq!(&info[8..], [1, 2, 3, 4, 5, 0, 0, 0]);
        assert!(matches!(
            rand_pool_info(&[]),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(rand_pool_info(&[0; MAX_SEED_BYTES + 1]).is_err());
        assert!(rand_pool_info(&[0; MAX_SEED_BYTES]).is_ok());
    }

    #[test]
    fn clock_values_are_checked() {
        let ts = wall_clock(1_700_000_000, 999_999).unwrap();
        assert_eq!((ts.tv_sec, ts.tv_nsec), (1_700_000_000, 999_999_000));
        assert!(matches!(
            wall_clock(1, 1_000_000),
            Err(Error::InvalidRequest { .. })
        ));
        assert!(wall_clock(1, -1).is_err());
    }

    #[test]
    fn a_missing_device_is_named() {
        let err = reseed(Path::new("/nonexistent/random"), b"x").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
