//! The load generator's MQTT 3.1.1 client: one connection, one task, on the `thingd-mqtt`
//! codec over tokio (plain TCP) or tokio-rustls (mTLS). The same code drives every broker.
//!
//! There is deliberately no background task and no channel: a scenario owns its `Conn`,
//! queues packets into the write buffer, flushes, and reads whole packets back. That keeps
//! the generator's cost per message low and identical for every broker. A connection can
//! also leave tokio for a thread of its own ([`Conn::into_blocking`]), where it writes with
//! plain blocking system calls: the fixed-rate publishers, which must send on time, and the
//! fan-in ones, one thread sending for all of them. The fixed-rate subscribers leave too, and
//! one thread receives for all of them, reading each socket without blocking when `epoll`
//! says it is readable.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use thingd_mqtt::{
    ByteStr, Connect, Packet, Properties, ProtocolVersion, PubResp, PubRespKind, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

const V: ProtocolVersion = ProtocolVersion::V311;
const MAX_PACKET: usize = 1 << 20;
/// How long a read on a [`BlockingConn`] waits for the broker.
const BLOCKING_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The byte stream under a connection: plain TCP or TLS over TCP.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// `Some` for mTLS.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// Where idle connections go past what this process may open (see `hold`).
    pub(crate) spill: Option<Arc<crate::hold::Spill>>,
    /// Close with a reset (`SO_LINGER` 0) rather than leave the port in TIME_WAIT for a
    /// minute: the idle rows close up to 100,000 connections at once, whose bound ports would
    /// otherwise leave the next scenario's connects without an ephemeral port.
    pub(crate) reset_on_close: bool,
}

/// Nanoseconds since the process's benchmark epoch (the clock in every payload).
pub(crate) fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A payload of `size` bytes (at least 16) carrying the send time and a sequence number.
pub(crate) fn payload(size: usize, seq: u64) -> Bytes {
    let mut p = vec![0u8; size.max(16)];
    p[..8].copy_from_slice(&now_nanos().to_le_bytes());
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(p)
}

/// The send time written by [`payload`], if the payload has one.
pub(crate) fn sent_at(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// One MQTT connection.
pub(crate) struct Conn {
    io: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_id: u16,
}

impl Conn {
    /// TCP connect (from `source` when given), TLS handshake for mTLS endpoints, then
    /// CONNECT/CONNACK with a clean session.
    pub(crate) async fn connect(
        ep: &Endpoint,
        client_id: &str,
        source: Option<Ipv4Addr>,
    ) -> anyhow::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket.bind(SocketAddrV4::new(ip, 0).into())?;
        }
        if ep.reset_on_close {
            socket.set_zero_linger()?;
        }
        let tcp = socket.connect(ep.addr).await.context("tcp connect")?;
        tcp.set_nodelay(true)?;
        let io = match &ep.tls {
            None => Stream::Tcp(tcp),
            Some(config) => {
                let name = ServerName::try_from("localhost")?.to_owned();
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .context("tls handshake")?;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut conn = Conn {
            io,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            next_id: 0,
        };
        conn.queue(&Packet::Connect(Box::new(Connect {
            protocol: V,
            clean_start: true,
            keep_alive: 600,
            client_id: ByteStr::from(client_id),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })))?;
        conn.flush().await?;
        match conn.recv().await.context("waiting for CONNACK")? {
            Packet::ConnAck(ack) if ack.reason == ReasonCode::Success => Ok(conn),
            Packet::ConnAck(ack) => bail!("CONNACK refused: {:?}", ack.reason),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Gives back the read and write buffers of a connection that is only held open (they
    /// grow again when it is used).
    pub(crate) fn release_buffers(&mut self) {
        self.rbuf = BytesMut::new();
        self.wbuf = BytesMut::new();
    }

    /// Subscribes to one filter and waits for the SUBACK.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let packet_id = self.packet_id();
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![(
                ByteStr::from(filter),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: Properties::default(),
        }))?;
        self.flush().await?;
        match self.recv().await.context("waiting for SUBACK")? {
            Packet::SubAck(ack) if ack.packet_id == packet_id => match ack.reasons.first() {
                Some(ReasonCode::Success | ReasonCode::GrantedQoS1) => Ok(()),
                other => bail!("SUBACK refused {filter}: {other:?}"),
            },
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next packet id (never 0).
    pub(crate) fn packet_id(&mut self) -> u16 {
        next_packet_id(&mut self.next_id)
    }

    /// Encodes a PUBLISH into the write buffer; returns its packet id (0 for QoS 0).
    pub(crate) fn queue_publish(
        &mut self,
        topic: &ByteStr,
        qos: QoS,
        payload: Bytes,
    ) -> anyhow::Result<u16> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        self.queue(&publish_packet(topic, qos, packet_id, payload))?;
        Ok(packet_id.unwrap_or(0))
    }

    /// Encodes a PUBACK into the write buffer.
    pub(crate) fn queue_puback(&mut self, packet_id: u16) -> anyhow::Result<()> {
        self.queue(&puback_packet(packet_id))
    }

    /// Encodes any packet into the write buffer.
    pub(crate) fn queue(&mut self, packet: &Packet) -> anyhow::Result<()> {
        thingd_mqtt::encode(packet, V, &mut self.wbuf)?;
        Ok(())
    }

    /// Bytes waiting in the write buffer.
    pub(crate) fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes out the write buffer.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// A packet already in the read buffer, without reading.
    pub(crate) fn try_decode(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(thingd_mqtt::decode(&mut self.rbuf, V, MAX_PACKET)?)
    }

    /// Reads more bytes into the read buffer; an error on EOF. Cancel safe.
    pub(crate) async fn fill(&mut self) -> anyhow::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
        let n = self.io.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            bail!("connection closed by the broker");
        }
        Ok(())
    }

    /// The next packet, reading as needed.
    pub(crate) async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.try_decode()? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// The next packet, or `None` when nothing arrives within `idle`.
    pub(crate) async fn recv_timeout(&mut self, idle: Duration) -> anyhow::Result<Option<Packet>> {
        match tokio::time::timeout(idle, self.recv()).await {
            Ok(p) => p.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The same connection on blocking sockets, for a thread of its own: no task, no
    /// readiness events, a write is one system call. Call it from inside the runtime, with
    /// nothing left to write.
    pub(crate) fn into_blocking(self) -> anyhow::Result<BlockingConn> {
        anyhow::ensure!(self.wbuf.is_empty(), "unsent bytes would be lost");
        fn blocking(tcp: TcpStream) -> std::io::Result<std::net::TcpStream> {
            let tcp = tcp.into_std()?;
            tcp.set_nonblocking(false)?;
            tcp.set_read_timeout(Some(BLOCKING_READ_TIMEOUT))?;
            Ok(tcp)
        }
        let io = match self.io {
            Stream::Tcp(tcp) => BlockingStream::Tcp(blocking(tcp)?),
            Stream::Tls(tls) => {
                let (tcp, session) = (*tls).into_inner();
                BlockingStream::Tls(Box::new(rustls::StreamOwned::new(session, blocking(tcp)?)))
            }
        };
        Ok(BlockingConn {
            io,
            rbuf: self.rbuf,
            wbuf: self.wbuf,
            next_id: self.next_id,
        })
    }

    /// Sends DISCONNECT and closes the connection.
    pub(crate) async fn disconnect(mut self) -> anyhow::Result<()> {
        self.queue(&disconnect_packet())?;
        self.flush().await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }
}

fn next_packet_id(last: &mut u16) -> u16 {
    *last = last.wrapping_add(1).max(1);
    *last
}

pub(crate) fn publish_packet(
    topic: &ByteStr,
    qos: QoS,
    packet_id: Option<u16>,
    payload: Bytes,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.clone(),
        packet_id,
        properties: Properties::default(),
        payload,
    })
}

pub(crate) fn puback_packet(packet_id: u16) -> Packet {
    Packet::PubResp(PubResp {
        kind: PubRespKind::PubAck,
        packet_id,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    })
}

fn disconnect_packet() -> Packet {
    Packet::Disconnect(thingd_mqtt::Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    })
}

/// A [`Conn`] moved onto blocking sockets ([`Conn::into_blocking`]).
pub(crate) struct BlockingConn {
    io: BlockingStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_id: u16,
}

enum BlockingStream {
    Tcp(std::net::TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>),
}

impl BlockingStream {
    fn tcp(&self) -> &std::net::TcpStream {
        match self {
            BlockingStream::Tcp(s) => s,
            BlockingStream::Tls(s) => s.get_ref(),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            BlockingStream::Tcp(s) => s.write_all(bytes),
            BlockingStream::Tls(s) => {
                s.write_all(bytes)?;
                s.flush()
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlockingStream::Tcp(s) => s.read(buf),
            BlockingStream::Tls(s) => s.read(buf),
        }
    }
}

impl BlockingConn {
    /// Encodes and writes one PUBLISH; returns its packet id (0 for QoS 0).
    pub(crate) fn publish(
        &mut self,
        topic: &ByteStr,
        qos: QoS,
        payload: Bytes,
    ) -> anyhow::Result<u16> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| next_packet_id(&mut self.next_id));
        thingd_mqtt::encode(
            &publish_packet(topic, qos, packet_id, payload),
            V,
            &mut self.wbuf,
        )?;
        self.io.write_all(&self.wbuf)?;
        self.wbuf.clear();
        Ok(packet_id.unwrap_or(0))
    }

    /// The next packet, waiting at most [`BLOCKING_READ_TIMEOUT`] for each read.
    pub(crate) fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.try_decode()? {
                return Ok(p);
            }
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    anyhow::anyhow!("nothing from the broker within {BLOCKING_READ_TIMEOUT:?}")
                }
                _ => e.into(),
            })?;
            if n == 0 {
                bail!("connection closed by the broker");
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The socket's descriptor, to wait for it to become readable ([`BlockingConn::read_ready`]).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd as _;
        self.io.tcp().as_raw_fd()
    }

    /// Makes reads return at once ([`BlockingConn::read_ready`]); writes still finish.
    pub(crate) fn set_nonblocking(&self) -> std::io::Result<()> {
        self.io.tcp().set_nonblocking(true)
    }

    /// After [`BlockingConn::set_nonblocking`]: reads everything the socket holds now, up to the
    /// read that would block (the socket must be read dry before waiting on it again).
    /// False when the broker closed the connection.
    pub(crate) fn read_ready(&mut self) -> anyhow::Result<bool> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.io.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A whole packet from what was read, if there is one.
    pub(crate) fn try_decode(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(thingd_mqtt::decode(&mut self.rbuf, V, MAX_PACKET)?)
    }

    /// Encodes a PUBACK into the write buffer ([`BlockingConn::write_queued`] sends it).
    pub(crate) fn queue_puback(&mut self, packet_id: u16) -> anyhow::Result<()> {
        thingd_mqtt::encode(&puback_packet(packet_id), V, &mut self.wbuf)?;
        Ok(())
    }

    /// Writes what is queued, on a non-blocking socket. If its send buffer is full (not seen
    /// with acknowledgements at the rates measured), the rest waits on the socket made
    /// blocking for that while.
    pub(crate) fn write_queued(&mut self) -> anyhow::Result<()> {
        use std::io::ErrorKind::{Interrupted, WouldBlock};
        match &mut self.io {
            BlockingStream::Tcp(s) => {
                let mut sent = 0;
                while sent < self.wbuf.len() {
                    match s.write(&self.wbuf[sent..]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == WouldBlock => {
                            s.set_nonblocking(false)?;
                            s.write_all(&self.wbuf[sent..])?;
                            s.set_nonblocking(true)?;
                            sent = self.wbuf.len();
                        }
                        Err(e) if e.kind() == Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            BlockingStream::Tls(s) => {
                // The session takes the plaintext whole and keeps the records not yet sent.
                s.conn.writer().write_all(&self.wbuf)?;
                while s.conn.wants_write() {
                    match s.conn.write_tls(&mut s.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == WouldBlock => {
                            s.sock.set_nonblocking(false)?;
                            while s.conn.wants_write() {
                                s.conn.write_tls(&mut s.sock)?;
                            }
                            s.sock.set_nonblocking(true)?;
                        }
                        Err(e) if e.kind() == Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Sends DISCONNECT and closes the connection.
    pub(crate) fn disconnect(mut self) -> anyhow::Result<()> {
        self.io.tcp().set_nonblocking(false)?;
        thingd_mqtt::encode(&disconnect_packet(), V, &mut self.wbuf)?;
        self.io.write_all(&self.wbuf)?;
        if let BlockingStream::Tls(s) = &mut self.io {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.io.tcp().shutdown(std::net::Shutdown::Write);
        Ok(())
    }
}
