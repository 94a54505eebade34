//! virtio-9p: QEMU's built-in 9p server exports the directory.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use vc_agent_client::protocol::agent::Storage;
use vc_hypervisor::{Device, ShareBackend, SharedDir};

use super::{FsShare, GUEST_SHARED_DIR, SHARE_MOUNT_TAG, ShareKind};
use crate::error::Error;
use crate::state::ProcessRecord;

/// 9p needs no helper process: QEMU serves it.
#[derive(Debug)]
pub struct NinePShare {
    host_dir: PathBuf,
}

impl NinePShare {
    /// Shares `host_dir`.
    pub fn new(host_dir: PathBuf) -> Self {
        NinePShare { host_dir }
    }
}

#[async_trait]
impl FsShare for NinePShare {
    fn kind(&self) -> ShareKind {
        ShareKind::NineP
    }

    fn host_dir(&self) -> &Path {
        &self.host_dir
    }

    async fn start(&mut self) -> Result<Vec<ProcessRecord>, Error> {
        Ok(Vec::new())
    }

    fn device(&self) -> Device {
        Device::SharedDir(SharedDir {
            id: "share0".into(),
            mount_tag: SHARE_MOUNT_TAG.into(),
            backend: ShareBackend::NineP {
                host_path: self.host_dir.clone(),
                read_only: false,
            },
        })
    }

    fn needs_shared_memory(&self) -> bool {
        false
    }

    fn guest_storage(&self) -> Storage {
        let mut s = Storage::new();
        s.driver = "9p".into();
        s.source = SHARE_MOUNT_TAG.into();
        s.fstype = "9p".into();
        // msize: 512 KiB transfers instead of the 8 KiB default.
        s.options = vec![
            "trans=virtio".into(),
            "version=9p2000.L".into(),
            "msize=524288".into(),
            "cache=mmap".into(),
        ];
        s.mount_point = GUEST_SHARED_DIR.into();
        s
    }

    async fn stop(&mut self) -> Result<(), Error> {
        Ok(())
    }
}
