//! virtio-serial through QEMU's unix-socket chardev.
//!
//! QEMU listens on the socket and relays bytes to the guest's port once the
//! agent has opened it; until then they wait in the socket buffer. So a
//! connection here succeeds as soon as QEMU runs, and the first request is
//! answered once the agent is up.

use std::path::Path;

use tokio::net::UnixStream;

use super::AgentStream;
use crate::AgentError;

pub(super) async fn dial(socket: &Path) -> crate::Result<AgentStream> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| AgentError::Connect {
            target: format!("serial:{}", socket.display()),
            source,
        })?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use crate::{AgentError, Transport};

    #[tokio::test]
    async fn carries_bytes_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .unwrap();
        });
        let mut stream = Transport::Serial { socket: path }.dial().await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PING");
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let err = Transport::Serial {
            socket: path.clone(),
        }
        .dial()
        .await
        .err()
        .unwrap();
        match err {
            AgentError::Connect { target, source } => {
                assert!(target.contains("nope.sock"), "{target}");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    }
}
