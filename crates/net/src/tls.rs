//! TLS for the MQTT listener on rustls's unbuffered API, so that the connection owns its
//! buffers.
//!
//! rustls's buffered connection (what tokio-rustls wraps) keeps a 4 KiB receive buffer for
//! the life of every connection. Most MQTT connections are idle devices; here an idle
//! connection keeps a 256-byte receive buffer, grown to the size of a record only while one
//! arrives, and nothing else between reads and writes. rustls still does all of TLS: the
//! handshake, record protection, alerts, key updates.
//!
//! [`TlsStream`] is an `AsyncRead + AsyncWrite` over a [`Socket`]: reads decrypt whatever
//! complete records have arrived; writes encrypt into an outgoing buffer that `flush` sends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use crate::socket::Socket;
use bytes::{Buf, BytesMut};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Receive buffer of a connection that reads little.
const IDLE_BUFFER: usize = 256;
/// Receive buffer of a connection whose reads fill the buffer.
const BUSY_BUFFER: usize = 16 * 1024;
/// Encrypted bytes gathered before a write waits for the socket.
const OUTGOING_LIMIT: usize = 256 * 1024;
/// Buffers larger than this are freed once empty.
const KEEP_CAPACITY: usize = 1024;
/// A flush at least this large keeps the send buffer for the next one: the connection is
/// writing in bulk, and a new buffer each time costs page faults and zeroing.
const BULK_FLUSH: usize = 16 * 1024;
/// TLS record header length.
const HEADER: usize = 5;

/// A server-side TLS connection over TCP.
pub(crate) struct TlsStream {
    tcp: Socket,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed (at most one incomplete record between reads).
    incoming: BytesMut,
    /// Decrypted application data not yet read.
    plain: BytesMut,
    /// TLS bytes to send.
    outgoing: Outgoing,
    /// The last read filled the room it had: the next one gets a larger buffer.
    busy: bool,
    /// The peer closed (close_notify or end of stream): reads return 0.
    eof: bool,
    close_sent: bool,
}

/// What the connection asks of rustls beyond processing what arrived.
enum Write<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Where processing stopped.
enum Step {
    /// Everything that arrived is processed; more input is needed to go on.
    Blocked,
    /// The requested write was encrypted into `outgoing`.
    Written,
    /// Both sides have sent close_notify.
    Closed,
}

/// Runs the server handshake on `tcp`. A refused handshake sends rustls's alert first.
pub(crate) async fn accept(
    tcp: Socket,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut tls = TlsStream {
        tcp,
        conn,
        incoming: BytesMut::with_capacity(BUSY_BUFFER),
        plain: BytesMut::new(),
        outgoing: Outgoing::default(),
        busy: false,
        eof: false,
        close_sent: false,
    };
    loop {
        let step = match tls.process(Write::Nothing, None) {
            Ok(step) => step,
            Err(error) => {
                tls.send_alert().await;
                return Err(error);
            }
        };
        std::future::poll_fn(|cx| tls.poll_send(cx)).await?;
        if !tls.conn.is_handshaking() {
            tls.shrink_incoming();
            return Ok(tls);
        }
        if matches!(step, Step::Closed) || tls.eof {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        tls.reserve_incoming();
        if std::future::poll_fn(|cx| tls.poll_receive(cx)).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

impl TlsStream {
    /// The certificates the client presented, leaf first.
    pub(crate) fn peer_certificates(
        &self,
    ) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Processes every complete record received, then performs `write` if given (which
    /// needs the handshake to be complete). Application data goes to `read` while it has
    /// room and nothing waits in `plain` before it (one copy fewer per byte received), the
    /// rest to `plain`.
    fn process(
        &mut self,
        mut write: Write<'_>,
        mut read: Option<&mut ReadBuf<'_>>,
    ) -> io::Result<Step> {
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming);
            let discard = status.discard;
            let mut stop = None;
            match status.state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let payload = record.map_err(tls_error)?.payload;
                        let direct = match read.as_deref_mut() {
                            Some(buf) if self.plain.is_empty() => {
                                let n = payload.len().min(buf.remaining());
                                buf.put_slice(&payload[..n]);
                                n
                            }
                            _ => 0,
                        };
                        self.plain.extend_from_slice(&payload[direct..]);
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    self.outgoing.append(1024, |out| {
                        data.encode(out).map_err(|e| match e {
                            EncodeError::InsufficientSize(s) => Some(s.required_size),
                            _ => None,
                        })
                    })?;
                }
                // `outgoing` is sent, in order, before the connection waits for anything.
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::PeerClosed => self.eof = true,
                ConnectionState::Closed => stop = Some(Step::Closed),
                ConnectionState::BlockedHandshake => stop = Some(Step::Blocked),
                ConnectionState::WriteTraffic(mut traffic) => {
                    let write = std::mem::replace(&mut write, Write::Nothing);
                    stop = Some(match write {
                        Write::Nothing => Step::Blocked,
                        Write::Data(data) => {
                            let guess = data.len() + 64 + data.len() / 4096 * 32;
                            self.outgoing.append(guess, |out| {
                                traffic.encrypt(data, out).map_err(encrypt_room)
                            })?;
                            Step::Written
                        }
                        Write::CloseNotify => {
                            self.outgoing.append(64, |out| {
                                traffic.queue_close_notify(out).map_err(encrypt_room)
                            })?;
                            Step::Written
                        }
                    });
                }
                _ => return Err(io::Error::other("unexpected TLS state")),
            }
            self.incoming.advance(discard);
            if let Some(step) = stop {
                return Ok(step);
            }
        }
    }

    /// Sends the alert rustls queued after a failed handshake, if it can within a second.
    async fn send_alert(&mut self) {
        let _ = self.process(Write::Nothing, None);
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            std::future::poll_fn(|cx| self.poll_send(cx)),
        )
        .await;
    }

    /// Makes room in `incoming` for the rest of the record being received (at least its
    /// header), and more when the connection is busy.
    fn reserve_incoming(&mut self) {
        let record = match self.incoming.get(..HEADER) {
            Some(h) => HEADER + usize::from(u16::from_be_bytes([h[3], h[4]])),
            None => HEADER,
        };
        let want = record.max(if self.busy { BUSY_BUFFER } else { IDLE_BUFFER });
        if self.incoming.capacity() < want {
            self.incoming.reserve(want - self.incoming.len());
        }
    }

    /// Back to a small receive buffer when nothing waits in it and reads are small.
    fn shrink_incoming(&mut self) {
        if self.incoming.is_empty() && !self.busy && self.incoming.capacity() > IDLE_BUFFER {
            self.incoming = BytesMut::new();
        }
    }

    /// Reads from the socket into `incoming`'s spare room; 0 at the end of the stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = self.incoming.capacity() - self.incoming.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.tcp),
            cx,
            &mut self.incoming
        ))?;
        self.busy = n >= room;
        Poll::Ready(Ok(n))
    }

    /// Writes all of `outgoing` to the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, self.outgoing.unsent()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.sent += n;
        }
        self.outgoing.all_sent();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = buf.remaining().min(this.plain.len());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                if this.plain.is_empty() && this.plain.capacity() > KEEP_CAPACITY {
                    this.plain = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let filled = buf.filled().len();
            if let Step::Closed = this.process(Write::Nothing, Some(buf))? {
                this.eof = true;
            }
            if buf.filled().len() > filled {
                return Poll::Ready(Ok(()));
            }
            if !this.plain.is_empty() || this.eof {
                continue;
            }
            // Records rustls produced while reading (a key update's answer) go out now, or
            // with the next flush if the socket is full: the read does not wait for them.
            if !this.outgoing.is_empty() {
                let _sent_or_later = this.poll_send(cx)?;
            }
            this.shrink_incoming();
            this.reserve_incoming();
            if ready!(this.poll_receive(cx))? == 0 {
                this.eof = true;
                if !this.incoming.is_empty() {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outgoing.filled >= OUTGOING_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        match this.process(Write::Data(data), None)? {
            Step::Written => Poll::Ready(Ok(data.len())),
            Step::Blocked => Poll::Ready(Err(io::Error::other("TLS handshake not complete"))),
            Step::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            // Closed already: nothing to say.
            let _ = this.process(Write::CloseNotify, None)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Encrypted bytes waiting for the socket: `buf[sent..filled]`. The length of `buf` is the
/// room made so far, zeroed once: a connection writing in bulk reuses it from one flush to
/// the next; after a smaller flush it is given back.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    sent: usize,
    filled: usize,
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.sent == self.filled
    }

    fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..self.filled]
    }

    /// Appends what `write` puts into the room after the filled part, starting with `guess`
    /// bytes of room and retrying with the room it asks for (`Err(Some(size))`).
    fn append(
        &mut self,
        guess: usize,
        mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
    ) -> io::Result<()> {
        let mut room = guess;
        loop {
            let end = self.filled + room;
            if self.buf.len() < end {
                self.buf.resize(end, 0);
            }
            match write(&mut self.buf[self.filled..end]) {
                Ok(n) => {
                    self.filled += n;
                    return Ok(());
                }
                Err(Some(required)) if required > room => room = required,
                Err(_) => return Err(io::Error::other("TLS record could not be written")),
            }
        }
    }

    /// Everything went out: the next records start at the front; the room is kept only
    /// after a bulk flush.
    fn all_sent(&mut self) {
        let flushed = self.filled;
        (self.sent, self.filled) = (0, 0);
        if flushed < BULK_FLUSH && self.buf.len() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }
}

fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// A rustls error as an I/O error (callers downcast it back for metrics).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use thingd_auth::CertificateAuthority;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct Pki {
        _dir: tempfile::TempDir,
        ca: CertificateAuthority,
    }

    fn new_pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path(), &[]).unwrap();
        Pki { _dir: dir, ca }
    }

    fn server_config(pki: &Pki) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(pki.ca.root_store()),
            provider,
        )
        .build()
        .unwrap();
        pki.ca.server_config(verifier, Vec::new()).unwrap()
    }

    /// Accepts one connection with `pki`'s server config and runs `body` on the outcome.
    async fn accept_one<T, Fut>(
        pki: &Pki,
        body: impl FnOnce(io::Result<TlsStream>) -> Fut + Send + 'static,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<T>)
    where
        Fut: std::future::Future<Output = T> + Send,
        T: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = server_config(pki);
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            body(accept(Socket::Tcp(tcp), config).await).await
        });
        (addr, task)
    }

    /// A client with a certificate from `issuer` (which may not be the server's CA).
    async fn client(
        pki: &Pki,
        issuer: &CertificateAuthority,
        addr: std::net::SocketAddr,
    ) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        client_with(pki, issuer, addr, rustls::DEFAULT_VERSIONS).await
    }

    async fn client_with(
        pki: &Pki,
        issuer: &CertificateAuthority,
        addr: std::net::SocketAddr,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let device = issuer.issue_device_certificate("dev", false).unwrap();
        let chain =
            vec![CertificateDer::from_pem_slice(device.certificate_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(device.private_key_pem.as_bytes()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(pki.ca.root_store())
        .with_client_auth_cert(chain, key)
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    #[tokio::test]
    async fn echoes_data_across_many_records_and_sees_close_notify_tls13() {
        echo(&[&rustls::version::TLS13]).await;
    }

    #[tokio::test]
    async fn echoes_data_across_many_records_and_sees_close_notify_tls12() {
        echo(&[&rustls::version::TLS12]).await;
    }

    async fn echo(versions: &[&'static rustls::SupportedProtocolVersion]) {
        let pki = new_pki();
        let (addr, server) = accept_one(&pki, |accepted| async move {
            let mut tls = accepted.unwrap();
            assert!(tls.peer_certificates().is_some_and(|c| c.len() == 1));
            let mut got = Vec::new();
            let mut buf = [0u8; 1000];
            loop {
                let n = tls.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                // Echo in odd pieces, flushing now and then.
                tls.write_all(&buf[..n]).await.unwrap();
                if got.len() % 7 == 0 {
                    tls.flush().await.unwrap();
                }
            }
            tls.flush().await.unwrap();
            tls.shutdown().await.unwrap();
            got
        })
        .await;
        let mut client = client_with(&pki, &pki.ca, addr, versions).await.unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let writer = async {
            for chunk in sent.chunks(3_333) {
                wr.write_all(chunk).await.unwrap();
            }
            wr.flush().await.unwrap();
            wr.shutdown().await.unwrap();
        };
        let reader = async {
            let mut echoed = Vec::new();
            rd.read_to_end(&mut echoed).await.unwrap();
            echoed
        };
        let ((), echoed) = tokio::join!(writer, reader);
        assert_eq!(echoed, sent, "the echo came back whole and in order");
        assert_eq!(server.await.unwrap(), sent);
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed_both_ways() {
        let pki = new_pki();
        let (addr, server) = accept_one(&pki, |accepted| async move {
            let mut tls = accepted.unwrap();
            let mut buf = [0u8; 5];
            for _ in 0..2 {
                tls.read_exact(&mut buf).await.unwrap();
                tls.write_all(&buf).await.unwrap();
                tls.flush().await.unwrap();
            }
        })
        .await;
        let mut client = client(&pki, &pki.ca, addr).await.unwrap();
        let mut echoed = [0u8; 5];
        client.write_all(b"first").await.unwrap();
        client.flush().await.unwrap();
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"first");
        // New keys for what the client sends, and a request that the server update its own.
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"again").await.unwrap();
        client.flush().await.unwrap();
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"again");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_a_small_receive_buffer() {
        let pki = new_pki();
        let (addr, server) = accept_one(&pki, |accepted| async move {
            let mut tls = accepted.unwrap();
            let mut buf = [0u8; 64];
            let n = tls.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"ping");
            (
                tls.incoming.capacity(),
                tls.plain.capacity(),
                tls.outgoing.buf.capacity(),
            )
        })
        .await;
        let mut client = client(&pki, &pki.ca, addr).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let (incoming, plain, outgoing) = server.await.unwrap();
        assert!(incoming <= IDLE_BUFFER, "receive buffer {incoming}");
        assert!(plain <= KEEP_CAPACITY && outgoing <= KEEP_CAPACITY);
    }

    /// A connection writing in bulk keeps its send buffer from one flush to the next; the
    /// first small flush after that gives it back.
    #[tokio::test]
    async fn the_send_buffer_is_kept_while_writing_in_bulk_only() {
        let pki = new_pki();
        let bulk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = bulk.clone();
        let (addr, server) = accept_one(&pki, |accepted| async move {
            let mut tls = accepted.unwrap();
            let mut kept = Vec::new();
            for _ in 0..2 {
                tls.write_all(&sent).await.unwrap();
                tls.flush().await.unwrap();
                kept.push(tls.outgoing.buf.capacity());
            }
            tls.write_all(b"done").await.unwrap();
            tls.flush().await.unwrap();
            (kept, tls.outgoing.buf.capacity())
        })
        .await;
        let mut client = client(&pki, &pki.ca, addr).await.unwrap();
        let mut got = vec![0u8; 2 * bulk.len() + 4];
        client.read_exact(&mut got).await.unwrap();
        assert!(got[..bulk.len()] == bulk[..] && got[bulk.len()..2 * bulk.len()] == bulk[..]);
        assert_eq!(&got[2 * bulk.len()..], b"done");
        let (kept, after_small) = server.await.unwrap();
        assert!(kept.iter().all(|&c| c >= bulk.len()), "{kept:?}");
        assert_eq!(kept[0], kept[1], "the second bulk flush reused the buffer");
        assert!(after_small <= KEEP_CAPACITY, "{after_small}");
    }

    #[tokio::test]
    async fn a_refused_client_certificate_gets_an_alert_not_a_bare_close() {
        let pki = new_pki();
        let other = new_pki();
        let (addr, server) =
            accept_one(
                &pki,
                |accepted| async move { accepted.err().expect("refused") },
            )
            .await;
        // TLS 1.3: the client learns of the refusal on its first read.
        let outcome = async {
            let mut c = client(&pki, &other.ca, addr).await?;
            c.write_all(b"x").await?;
            let mut buf = [0u8; 8];
            c.read(&mut buf).await
        }
        .await;
        let error = outcome.expect_err("the handshake is refused");
        let tls = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .unwrap_or_else(|| panic!("not a TLS alert: {error:?}"));
        assert!(matches!(tls, rustls::Error::AlertReceived(_)), "{tls:?}");
        let refused = server.await.unwrap();
        assert!(
            refused
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_some(),
            "{refused:?}"
        );
    }
}
