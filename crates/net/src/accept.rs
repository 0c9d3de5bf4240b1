//! The accept loop every listener shares.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Limits applied by every listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Concurrent connections a listener holds; further connections wait in the kernel backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake after accept.
    pub handshake_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 200_000,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts connections until `shutdown` fires, running `handle` for each on its own task.
/// Accept errors (for example running out of file descriptors) are retried with a growing
/// pause instead of ending the listener.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: &ListenerLimits,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                // The permit rides in `map`'s closure: an `async` block awaiting the
                // connection's future would hold it twice (captured and being awaited), and
                // for a plain TCP connection that future is most of its memory.
                tokio::spawn(handle(stream, peer).map(move |()| drop(permit)));
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
