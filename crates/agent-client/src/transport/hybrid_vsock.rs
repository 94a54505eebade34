//! Hybrid vsock: a VMM that implements vsock in user space (Firecracker,
//! Cloud Hypervisor) exposes a unix socket; the host writes
//! `CONNECT <port>\n` and the VMM answers `OK <host-port>\n` once the guest
//! accepted, then the socket carries the guest stream.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::AgentStream;
use crate::AgentError;

/// The longest reply line we accept (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 64;

pub(super) async fn dial(socket: &Path, port: u32) -> crate::Result<AgentStream> {
    let target = format!("hvsock:{}:{port}", socket.display());
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| AgentError::Connect {
            target: target.clone(),
            source,
        })?;
    handshake(&mut stream, port, &target).await?;
    Ok(Box::new(stream))
}

/// Runs the `CONNECT <port>` handshake on `stream`, reading the reply one
/// byte at a time so that no byte of the guest stream after it is consumed.
/// Returns the host-side port number the VMM reported.
pub async fn handshake<S>(stream: &mut S, port: u32, target: &str) -> crate::Result<u32>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let io_err = |source| AgentError::Connect {
        target: target.to_owned(),
        source,
    };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io_err)?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.map_err(io_err)?;
        if n == 0 || line.len() >= MAX_REPLY {
            return Err(AgentError::Handshake {
                target: target.to_owned(),
                reply: String::from_utf8_lossy(&line).into_owned(),
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    reply
        .strip_prefix("OK ")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .ok_or(AgentError::Handshake {
            target: target.to_owned(),
            reply,
        })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use crate::{AgentError, Transport};

    /// A stand-in VMM: reads the CONNECT line, answers `reply`, then sends
    /// `payload` right after the reply (in the same write, as a fast guest
    /// would) and echoes one 4-byte message.
    fn stand_in(
        listener: UnixListener,
        reply: &'static str,
        payload: &'static [u8],
    ) -> tokio::task::JoinHandle<String> {
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            let mut out = reply.as_bytes().to_vec();
            out.extend_from_slice(payload);
            s.get_mut().write_all(&out).await.unwrap();
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).await.is_ok() {
                s.get_mut().write_all(&buf).await.unwrap();
            }
            line
        })
    }

    #[tokio::test]
    async fn handshake_then_stream_without_losing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let vmm = stand_in(UnixListener::bind(&path).unwrap(), "OK 1073741824\n", b"hi");
        let mut stream = Transport::HybridVsock {
            socket: path,
            port: 1024,
        }
        .dial()
        .await
        .unwrap();
        let mut first = [0u8; 2];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(
            &first, b"hi",
            "bytes right after the OK line belong to the stream"
        );
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(vmm.await.unwrap(), "CONNECT 1024\n");
    }

    #[tokio::test]
    async fn refused_handshake_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let _vmm = stand_in(UnixListener::bind(&path).unwrap(), "FAILURE\n", b"");
        let err = Transport::HybridVsock {
            socket: path,
            port: 1024,
        }
        .dial()
        .await
        .err()
        .unwrap();
        match err {
            AgentError::Handshake { reply, .. } => assert_eq!(reply, "FAILURE"),
            other => panic!("expected Handshake, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn vmm_closing_during_handshake_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let vmm = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            drop(s);
        });
        let err = Transport::HybridVsock {
            socket: path,
            port: 1024,
        }
        .dial()
        .await
        .err()
        .unwrap();
        assert!(
            matches!(err, AgentError::Handshake { ref reply, .. } if reply.is_empty()),
            "{err:?}"
        );
        vmm.await.unwrap();
    }
}
