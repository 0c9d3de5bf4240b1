//! The load generator's MQTT 3.1.1 client: one connection, one task, on the `thingd-mqtt`
//! codec over tokio (plain TCP) or tokio-rustls (mTLS). The same code drives every broker.
//!
//! There is deliberately no background task and no channel: a scenario owns its `Conn`,
//! queues packets into the write buffer, flushes, and reads whole packets back. That keeps
//! the generator's cost per message low and identical for every broker.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use rustls_pki_types::ServerName;
use thingd_mqtt::{
    ByteStr, Connect, Packet, Properties, ProtocolVersion, PubResp, PubRespKind, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpSocket;

const V: ProtocolVersion = ProtocolVersion::V311;
const MAX_PACKET: usize = 1 << 20;

/// Anything a connection can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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
    io: Box<dyn Io>,
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
        let io: Box<dyn Io> = match &ep.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = ServerName::try_from("localhost")?.to_owned();
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .context("tls handshake")?;
                Box::new(tls)
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
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Encodes a PUBLISH into the write buffer; returns its packet id (0 for QoS 0).
    pub(crate) fn queue_publish(
        &mut self,
        topic: &ByteStr,
        qos: QoS,
        payload: Bytes,
    ) -> anyhow::Result<u16> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        self.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.clone(),
            packet_id,
            properties: Properties::default(),
            payload,
        }))?;
        Ok(packet_id.unwrap_or(0))
    }

    /// Encodes a PUBACK into the write buffer.
    pub(crate) fn queue_puback(&mut self, packet_id: u16) -> anyhow::Result<()> {
        self.queue(&Packet::PubResp(PubResp {
            kind: PubRespKind::PubAck,
            packet_id,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))
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

    /// Sends DISCONNECT and closes the connection.
    pub(crate) async fn disconnect(mut self) -> anyhow::Result<()> {
        self.queue(&Packet::Disconnect(thingd_mqtt::Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))?;
        self.flush().await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }
}
