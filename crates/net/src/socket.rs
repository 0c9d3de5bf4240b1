//! A connection's socket: an ordinary TCP stream, or one held as an io_uring direct
//! descriptor once the process has no file descriptor left to give it (see `thingd-uring`).
//! A ring-held connection that turns busy moves onto a descriptor of its own when one is
//! free below the rings' promotion ceiling, before its next read or write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use thingd_uring::RingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The socket of an accepted connection.
#[derive(Debug)]
pub enum Socket {
    /// A TCP stream with a file descriptor of its own.
    Tcp(TcpStream),
    /// A TCP connection accepted into an io_uring's file table, beyond the open-file limit.
    Ring(RingStream),
}

impl Socket {
    /// Moves a busy ring-held connection onto a descriptor of its own, when its ring allows
    /// it (see `RingStream::poll_promote`); waits while such a move is under way.
    fn poll_promote(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Socket::Ring(ring) = self {
            match ring.poll_promote(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(tcp)) => *self = Socket::Tcp(tcp),
                Poll::Ready(None) => {}
            }
        }
        Poll::Ready(())
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_promote(cx));
        match this {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Ring(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_promote(cx));
        match this {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Socket::Ring(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_promote(cx));
        match this {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Ring(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Ring(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Ring(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Ring(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plain-TCP connection's task holds a `Socket`: the choice costs it nothing.
    #[test]
    fn a_socket_is_no_larger_than_a_tcp_stream() {
        assert_eq!(
            std::mem::size_of::<Socket>(),
            std::mem::size_of::<TcpStream>()
        );
    }
}
