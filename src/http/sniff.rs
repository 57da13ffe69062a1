//! The protocol sniff on client connections: etcd serves gRPC and HTTP/1.x
//! on the same port (cmux); so does cairn. The first bytes of a connection
//! decide: the HTTP/2 client preface goes to gRPC, anything else is an
//! HTTP/1.x request for the admin server. A function over any stream, so a
//! TLS stage can run before it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a connection speaks; the stream replays what was read.
pub enum Protocol<S> {
    /// HTTP/2 (gRPC).
    H2(Rewind<S>),
    /// Anything else: HTTP/1.x.
    Http1(Rewind<S>),
}

/// Reads just enough of `stream` to tell HTTP/2 from HTTP/1.x: until the
/// bytes stop matching the HTTP/2 preface, or all of it has arrived. `None`
/// when the client closed before saying anything decisive.
pub async fn sniff<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<Option<Protocol<S>>> {
    let mut seen = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        if !H2_PREFACE.starts_with(&seen) {
            return Ok(Some(Protocol::Http1(Rewind::new(seen.freeze(), stream))));
        }
        if seen.len() == H2_PREFACE.len() {
            return Ok(Some(Protocol::H2(Rewind::new(seen.freeze(), stream))));
        }
        // Never read past the preface: what follows belongs to the protocol.
        let mut chunk = [0u8; 24];
        let want = H2_PREFACE.len() - seen.len();
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok(None);
        }
        seen.extend_from_slice(&chunk[..n]);
    }
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for Rewind<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(first: &[u8]) -> (bool, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(first).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let (h2, mut stream) = match sniff(server).await.expect("sniff").expect("decided") {
            Protocol::H2(s) => (true, s),
            Protocol::Http1(s) => (false, s),
        };
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.expect("read");
        (h2, all)
    }

    #[tokio::test]
    async fn the_h2_preface_goes_to_grpc_and_everything_is_replayed() {
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend_from_slice(b"\x00\x00\x00\x04");
        assert_eq!(sniffed(&bytes).await, (true, bytes));
    }

    #[tokio::test]
    async fn an_http1_request_goes_to_the_admin_server() {
        for req in [
            &b"GET /health HTTP/1.1\r\n\r\n"[..],
            b"POST /v3/kv/range HTTP/1.1\r\n",
            b"PRX",
        ] {
            assert_eq!(sniffed(req).await, (false, req.to_vec()));
        }
    }

    #[tokio::test]
    async fn a_client_that_closes_early_is_dropped() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * ").await.expect("write");
        drop(client);
        assert!(sniff(server).await.expect("sniff").is_none());
    }
}
