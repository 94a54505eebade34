//! Unpacking the uncompressed `vmlinux` ELF from an x86 bzImage, for PVH
//! direct boot.
//!
//! A bzImage is a real-mode setup block followed by the protected-mode
//! part; the setup header (boot protocol >= 2.08) gives the offset and
//! length of the compressed kernel inside the latter. Debian compresses it
//! with xz (with the x86 BCJ filter, so a full xz decoder is needed), and
//! appends the 4-byte uncompressed size after the xz stream.

use std::io::{self, Write};
use std::path::Path;

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};

use crate::error::{Error, Result};

/// Offsets and sizes in the bzImage setup header (Documentation/x86/boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const PROTOCOL_VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// Protocol 2.08 added `payload_offset`/`payload_length`.
const MIN_PROTOCOL: u16 = 0x0208;

/// Xen ELF note type of the 32-bit PVH entry point that QEMU jumps to.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The compressed kernel inside a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The compressed bytes (possibly followed by a size trailer).
    pub data: &'a [u8],
    /// The compression, from the payload's magic bytes.
    pub compression: Compression,
}

/// Compressions a kernel payload may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// xz (what Debian uses).
    Xz,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// lz4.
    Lz4,
    /// lzma.
    Lzma,
    /// Anything else.
    Unknown,
}

impl Compression {
    fn from_magic(data: &[u8]) -> Self {
        match data {
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Self::Xz,
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            [0x02, 0x21, 0x4c, 0x18, ..] => Self::Lz4,
            [0x5d, 0x00, 0x00, ..] => Self::Lzma,
            _ => Self::Unknown,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Xz => "xz",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
            Self::Lzma => "lzma",
            Self::Unknown => "an unknown format",
        }
    }
}

/// Finds the compressed kernel in a bzImage (pure: parses the setup header).
///
/// The error is the reason the bytes are not a usable bzImage.
pub fn find_payload(bzimage: &[u8]) -> std::result::Result<Payload<'_>, String> {
    let le16 = |at: usize| {
        bzimage
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let le32 = |at: usize| {
        bzimage
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bzimage.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS") {
        return Err("no HdrS setup header magic".into());
    }
    let protocol = le16(PROTOCOL_VERSION).ok_or("truncated setup header")?;
    if protocol < MIN_PROTOCOL {
        return Err(format!(
            "boot protocol {}.{:02} has no payload fields (needs 2.08)",
            protocol >> 8,
            protocol & 0xff
        ));
    }
    // A zero setup_sects means 4, for historical reasons.
    let setup_sects = match bzimage[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = le32(PAYLOAD_OFFSET).ok_or("truncated setup header")? as usize;
    let length = le32(PAYLOAD_LENGTH).ok_or("truncated setup header")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let data = start
        .checked_add(length)
        .and_then(|end| bzimage.get(start..end))
        .ok_or_else(|| {
            format!(
                "payload {start}+{length} lies outside the {}-byte file",
                bzimage.len()
            )
        })?;
    Ok(Payload {
        data,
        compression: Compression::from_magic(data),
    })
}

/// Decompresses one xz stream from `compressed` into `out`, ignoring what
/// follows the stream (the kernel's size trailer). Returns the bytes written.
pub fn decompress_xz(compressed: &[u8], out: &mut impl Write) -> io::Result<u64> {
    use xz2::stream::{Action, Status, Stream};
    // Not CONCATENATED: the decoder reports StreamEnd after the first stream.
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut input = compressed;
    loop {
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        let action = if input.is_empty() {
            Action::Finish
        } else {
            Action::Run
        };
        let status = stream
            .process(input, &mut buf, action)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let consumed = (stream.total_in() - in_before) as usize;
        let produced = (stream.total_out() - out_before) as usize;
        input = &input[consumed..];
        out.write_all(&buf[..produced])?;
        if status == Status::StreamEnd {
            return Ok(stream.total_out());
        }
        if consumed == 0 && produced == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "xz stream ends before its end marker",
            ));
        }
    }
}

/// Checks that `vmlinux` is an x86-64 ELF with a PVH entry note.
pub fn check_pvh_bootable(vmlinux: &[u8]) -> std::result::Result<(), String> {
    let elf = ElfFile64::<object::Endianness>::parse(vmlinux)
        .map_err(|e| format!("not a 64-bit ELF: {e}"))?;
    let endian = elf.endian();
    if elf.elf_header().e_machine(endian) != object::elf::EM_X86_64 {
        return Err("not an x86-64 ELF".into());
    }
    for segment in elf.elf_program_headers() {
        let Ok(Some(mut notes)) = segment.notes(endian, vmlinux) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian).0 == XEN_ELFNOTE_PHYS32_ENTRY {
                return Ok(());
            }
        }
    }
    Err("no XEN_ELFNOTE_PHYS32_ENTRY note (kernel built without CONFIG_PVH)".into())
}

/// Unpacks `vmlinux` from the bzImage at `bzimage` into `out`, and checks
/// that it can be PVH-booted.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<u64> {
    let data = std::fs::read(bzimage).map_err(crate::error::io_err("read", bzimage))?;
    let payload = find_payload(&data).map_err(|reason| Error::NotBzImage {
        path: bzimage.to_owned(),
        reason,
    })?;
    if payload.compression != Compression::Xz {
        return Err(Error::UnsupportedKernelCompression {
            path: bzimage.to_owned(),
            format: payload.compression.name(),
        });
    }
    let mut vmlinux = Vec::with_capacity(payload.data.len() * 8);
    decompress_xz(payload.data, &mut vmlinux).map_err(|source| Error::KernelDecompress {
        path: bzimage.to_owned(),
        source,
    })?;
    check_pvh_bootable(&vmlinux).map_err(|reason| Error::NotPvhBootable {
        path: bzimage.to_owned(),
        reason,
    })?;
    std::fs::write(out, &vmlinux).map_err(crate::error::io_err("write", out))?;
    Ok(vmlinux.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A minimal bzImage: setup header fields plus a payload after the setup sectors.
    fn fake_bzimage(setup_sects: u8, protocol: u16, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 {
            4
        } else {
            usize::from(setup_sects)
        };
        let mut img = vec![0u8; (sects + 1) * 512 + 16];
        img[SETUP_SECTS] = setup_sects;
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&protocol.to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&16u32.to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        img
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        xz2::read::XzEncoder::new(data, 1)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn finds_payload_after_setup_sectors() {
        let mut payload = xz(b"kernel bytes");
        let img = fake_bzimage(3, 0x020f, &payload);
        let found = find_payload(&img).unwrap();
        assert_eq!(found.compression, Compression::Xz);
        assert_eq!(found.data, &payload[..]);
        payload.clear();
    }

    #[test]
    fn zero_setup_sects_means_four() {
        let payload = [0x1f, 0x8b, 1, 2];
        let img = fake_bzimage(0, 0x020f, &payload);
        let found = find_payload(&img).unwrap();
        assert_eq!(found.data, &payload[..]);
        assert_eq!(found.compression, Compression::Gzip);
    }

    #[test]
    fn rejects_non_bzimage_and_old_protocol() {
        assert!(find_payload(&[0u8; 4096]).unwrap_err().contains("HdrS"));
        let img = fake_bzimage(3, 0x0206, b"x");
        assert!(find_payload(&img).unwrap_err().contains("2.08"));
        let mut img = fake_bzimage(3, 0x020f, b"xyz");
        img.truncate(img.len() - 2);
        assert!(find_payload(&img).unwrap_err().contains("outside"));
    }

    #[test]
    fn xz_decoding_stops_at_stream_end_and_ignores_size_trailer() {
        let mut payload = xz(b"hello vmlinux");
        payload.extend_from_slice(&13u32.to_le_bytes());
        let mut out = Vec::new();
        let n = decompress_xz(&payload, &mut out).unwrap();
        assert_eq!(n, 13);
        assert_eq!(out, b"hello vmlinux");
    }

    #[test]
    fn corrupt_xz_is_an_error() {
        let mut payload = xz(b"hello vmlinux");
        let mid = payload.len() / 2;
        payload[mid] ^= 0xff;
        assert!(decompress_xz(&payload, &mut Vec::new()).is_err());
    }

    #[test]
    fn non_elf_is_not_pvh_bootable() {
        assert!(
            check_pvh_bootable(b"not an elf")
                .unwrap_err()
                .contains("ELF")
        );
    }

    #[test]
    fn unsupported_compression_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinuz");
        std::fs::write(&path, fake_bzimage(3, 0x020f, &[0x28, 0xb5, 0x2f, 0xfd, 0])).unwrap();
        let err = extract_vmlinux(&path, &dir.path().join("vmlinux")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedKernelCompression { format: "zstd", .. }
            ),
            "{err}"
        );
        assert!(!dir.path().join("vmlinux").exists());
    }
}
