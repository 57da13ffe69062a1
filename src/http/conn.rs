//! Noticing that an HTTP client went away while its answer streams.
//!
//! actix-web learns that a connection closed only when it next writes to it
//! (actix-web issue 1313), and a quiet gateway watch may write nothing for
//! minutes. etcd (Go's server) cancels the request as soon as its client
//! closes. So every admin connection gets a [`ClientGone`] (actix-web's
//! `on_connect` hook): a task waits for the connection to become readable
//! and peeks (never consumes) at it; end of stream or an error means the
//! client is gone. A streaming handler ends its answer then, which drops
//! the gRPC stream behind it.

use std::any::Any;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use actix_web::dev::Extensions;
use tokio::io::Interest;
use tokio::sync::watch;

/// Resolves when the connection's client has closed it.
#[derive(Clone)]
pub struct ClientGone(watch::Receiver<bool>);

impl ClientGone {
    pub async fn wait(mut self) {
        // An error: the watching task ended without seeing the client go
        // (the connection is being dropped): gone too.
        let _ = self.0.wait_for(|gone| *gone).await;
    }
}

/// actix-web's `on_connect` hook for the admin servers.
pub fn on_connect(io: &dyn Any, ext: &mut Extensions) {
    let watched = if let Some(s) = io.downcast_ref::<tokio::net::UnixStream>() {
        s.as_fd()
            .try_clone_to_owned()
            .and_then(|fd| {
                let std = std::os::unix::net::UnixStream::from(fd);
                std.set_nonblocking(true)?;
                tokio::net::UnixStream::from_std(std)
            })
            .map(Watched::Unix)
    } else if let Some(s) = io.downcast_ref::<tokio::net::TcpStream>() {
        s.as_fd()
            .try_clone_to_owned()
            .and_then(|fd| {
                let std = std::net::TcpStream::from(fd);
                std.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(std)
            })
            .map(Watched::Tcp)
    } else {
        return;
    };
    let Ok(watched) = watched else { return };
    let (tx, rx) = watch::channel(false);
    ext.insert(ClientGone(rx));
    actix_web::rt::spawn(async move {
        tokio::select! {
            _ = watched.closed() => { let _ = tx.send(true); }
            // The connection's extensions were dropped: actix is done with
            // it; stop holding its descriptor.
            _ = tx.closed() => {}
        }
    });
}

/// A second descriptor of an admin connection, only ever peeked at.
enum Watched {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Watched {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Watched::Unix(s) => s.readable().await,
            Watched::Tcp(s) => s.readable().await,
        }
    }

    /// Peeks at one byte: `Ok(())` is end of stream. Data waiting for
    /// actix to read counts as WouldBlock, so that tokio clears the
    /// readiness and only a later event (more data, or the close) wakes
    /// the watcher again.
    fn try_peek(&self) -> io::Result<()> {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let peek = || match socket2::SockRef::from(self).peek(&mut byte)? {
            0 => Ok(()),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        };
        match self {
            Watched::Unix(s) => s.try_io(Interest::READABLE, peek),
            Watched::Tcp(s) => s.try_io(Interest::READABLE, peek),
        }
    }

    /// Waits until the peer closed the connection (or it failed).
    async fn closed(&self) {
        loop {
            if self.readable().await.is_err() {
                return;
            }
            match self.try_peek() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => return,
            }
        }
    }
}

impl AsFd for Watched {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Watched::Unix(s) => s.as_fd(),
            Watched::Tcp(s) => s.as_fd(),
        }
    }
}
