//! The accept loop every listener shares.

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use thingd_uring::Rings;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::socket::Socket;

/// Limits applied by every listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Concurrent connections a listener holds; further connections wait in the kernel backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake after accept.
    pub handshake_timeout: Duration,
    /// Where connections go once descriptors run short: into io_uring file tables, which the
    /// open-file limit does not count. `None`: past the limit, connections wait in the backlog
    /// until a descriptor is free.
    pub beyond_file_limit: Option<BeyondFileLimit>,
}

/// Connections held past the open-file limit (see `thingd-uring`).
#[derive(Debug, Clone)]
pub struct BeyondFileLimit {
    /// The rings that hold them.
    pub rings: Rings,
    /// An accepted connection whose descriptor is this or higher moves into a ring and gives
    /// its descriptor back, so that the descriptors above stay free for thingd's own files and
    /// listeners, and for busy ring-held connections moving out (`Rings::promote_below`).
    pub descriptor_ceiling: i32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 200_000,
            handshake_timeout: Duration::from_secs(10),
            beyond_file_limit: None,
        }
    }
}

/// Accepts connections until `shutdown` fires, running `handle` for each on its own task.
/// With `limits.beyond_file_limit`, a connection whose descriptor lands at or above the
/// ceiling moves into an io_uring file table first (on its own task), and when no descriptor
/// is left at all the next connection is accepted straight into a ring. Other accept errors
/// (and that one, without rings or with every ring full) are retried with a growing pause
/// instead of ending the listener.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: &ListenerLimits,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(Socket, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
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
        let mut accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted.map(|(stream, peer)| {
                let _ = stream.set_nodelay(true);
                (Socket::Tcp(stream), peer)
            }),
        };
        if let Some(beyond) = &limits.beyond_file_limit {
            accepted = match accepted {
                Ok((Socket::Tcp(stream), peer))
                    if stream.as_raw_fd() >= beyond.descriptor_ceiling =>
                {
                    // The move into a ring runs on the connection's task: the accept loop
                    // goes straight back to the backlog, which overflows when it waits.
                    backoff = Duration::from_millis(5);
                    let (handle, rings) = (handle.clone(), beyond.rings.clone());
                    tokio::spawn(async move {
                        match adopt(&rings, stream).await {
                            Ok(socket) => Box::pin(handle(socket, peer)).await,
                            Err(error) => tracing::warn!(
                                %error,
                                %peer,
                                "cannot move a connection into an io_uring; closing it"
                            ),
                        }
                        drop(permit);
                    });
                    continue;
                }
                Err(error) if out_of_descriptors(&error) => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = beyond.rings.accept(listener.as_raw_fd()) => {
                        accepted.map(|(stream, peer)| (Socket::Ring(stream), peer))
                    }
                },
                other => other,
            };
        }
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
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

/// Whether an accept failed for want of a file descriptor (the process's or the system's).
fn out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Moves an accepted TCP stream into an io_uring file table, giving its descriptor back; keeps
/// it as it is when every ring is full.
async fn adopt(rings: &Rings, stream: tokio::net::TcpStream) -> std::io::Result<Socket> {
    match rings.adopt(OwnedFd::from(stream.into_std()?)) {
        Ok(moving) => Ok(Socket::Ring(moving.await?)),
        Err(socket) => Ok(Socket::Tcp(tokio::net::TcpStream::from_std(socket.into())?)),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    const CONNECTIONS: usize = 8;
    /// Set in the child process that runs the test under a lowered open-file limit.
    const CHILD: &str = "THINGD_NET_ACCEPT_CHILD";

    /// The open-file limit is the whole process's, so the test runs in a child process of its
    /// own: the test binary again, asked for this test alone.
    #[test]
    fn with_no_descriptor_left_connections_are_accepted_into_a_ring() {
        if std::env::var_os(CHILD).is_none() {
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "accept::tests::with_no_descriptor_left_connections_are_accepted_into_a_ring",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .output()
                .expect("the test binary runs again");
            let stdout = String::from_utf8_lossy(&child.stdout);
            assert!(
                child.status.success() && stdout.contains("1 passed"),
                "the child process failed: {}\n{stdout}\n{}",
                child.status,
                String::from_utf8_lossy(&child.stderr)
            );
            return;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(in_child());
    }

    async fn in_child() {
        let rings = Rings::new(64, 1).expect("io_uring works here");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel completes the clients' handshakes in the backlog before any accept.
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        // About two descriptors left: the accepts after them fail with EMFILE.
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        rlimit::setrlimit(rlimit::Resource::NOFILE, open + 2, hard).unwrap();

        let limits = ListenerLimits {
            beyond_file_limit: Some(BeyondFileLimit {
                rings: rings.clone(),
                descriptor_ceiling: i32::MAX,
            }),
            ..ListenerLimits::default()
        };
        let (kinds, mut kind) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            accept_loop(listener, &limits, stop, move |mut socket: Socket, _| {
                let kinds = kinds.clone();
                async move {
                    let in_ring = matches!(socket, Socket::Ring(_));
                    let mut ping = [0u8; 4];
                    if socket.read_exact(&mut ping).await.is_ok() {
                        let _ = socket.write_all(&ping).await;
                        let _ = socket.flush().await;
                    }
                    let _ = kinds.send(in_ring);
                    // Hold the connection until the client closes it.
                    let _ = socket.read(&mut ping).await;
                }
            })
            .await;
        });
        for (i, client) in clients.iter_mut().enumerate() {
            let ping = [i as u8; 4];
            client.write_all(&ping).await.unwrap();
            let mut back = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut back))
                .await
                .unwrap_or_else(|_| panic!("connection {i} was never served"))
                .unwrap();
            assert_eq!(back, ping);
        }
        let mut in_ring = 0;
        for _ in 0..CONNECTIONS {
            in_ring += usize::from(kind.recv().await.unwrap());
        }
        // Two or three take the descriptors left (the runtime may open or close one of its
        // own meanwhile); the rest can only have come through the ring.
        assert!(
            in_ring >= CONNECTIONS / 2,
            "{in_ring} of {CONNECTIONS} connections accepted into the ring"
        );
        assert_eq!(rings.held(), in_ring);
        shutdown.cancel();
    }
}
