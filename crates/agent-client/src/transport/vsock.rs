//! `AF_VSOCK` to the guest (`vhost-vsock-pci` on the host).

use tokio_vsock::{VsockAddr, VsockStream};

use super::AgentStream;
use crate::AgentError;

pub(super) async fn dial(cid: u32, port: u32) -> crate::Result<AgentStream> {
    let stream = VsockStream::connect(VsockAddr::new(cid, port))
        .await
        .map_err(|source| AgentError::Connect {
            target: format!("vsock:{cid}:{port}"),
            source,
        })?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_vsock::{VMADDR_CID_LOCAL, VsockAddr, VsockListener};

    use crate::Transport;

    /// Through the kernel's vsock loopback (`vsock_loopback`), the same path
    /// a guest connection takes minus the VM.
    #[tokio::test]
    #[ignore = "needs AF_VSOCK (vsock_loopback / /dev/vhost-vsock), which this host lacks"]
    async fn carries_bytes_over_vsock_loopback() {
        let port = 40_000 + (std::process::id() % 10_000);
        let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_LOCAL, port)).unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut stream = Transport::Vsock {
            cid: VMADDR_CID_LOCAL,
            port,
        }
        .dial()
        .await
        .unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn unreachable_cid_is_a_connect_error() {
        // CID 2 is the host; nothing listens on this port there, or the
        // host has no vsock at all: either way a Connect error, no hang.
        let res = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            Transport::Vsock {
                cid: 2,
                port: 65_000,
            }
            .dial(),
        )
        .await
        .expect("vsock dial must not hang");
        assert!(matches!(res, Err(crate::AgentError::Connect { .. })));
    }
}
