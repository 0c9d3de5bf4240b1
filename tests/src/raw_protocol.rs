//! MQTT written byte by byte over a TLS connection opened with our own client certificate.
//!
//! The first half is a tiny independent MQTT toolkit (packet builders, a frame reader and a
//! parser for the few packets a server sends); the tests below use it for what a library
//! client cannot do: malformed input, exact reason codes, timing and flow control.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes, BytesMut};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thingd_tests::{DeviceFiles, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long a test waits for something that should happen promptly.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be reasonably sure something does not happen.
pub(crate) const QUIET: Duration = Duration::from_millis(400);

// ----------------------------------------------------------------------------------------
// TLS
// ----------------------------------------------------------------------------------------

/// A client certificate chain and key.
pub(crate) type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Reads a device's certificate and key.
pub(crate) fn device_identity(device: &DeviceFiles) -> anyhow::Result<Identity> {
    let certs = CertificateDer::pem_file_iter(&device.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&device.key)?;
    Ok((certs, key))
}

/// A rustls client config trusting the PEM file `ca`, presenting `identity` if given.
pub(crate) fn client_config(
    ca: &Path,
    identity: Option<Identity>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match identity {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Opens a TLS connection to `addr`, checking the server certificate against `server_name`.
pub(crate) async fn tls_connect(
    addr: std::net::SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let stream = timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .context("TLS handshake hung")??;
    Ok(stream)
}

// ----------------------------------------------------------------------------------------
// Packet builders
// ----------------------------------------------------------------------------------------

/// Appends a Variable Byte Integer.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A whole packet: the first byte, the remaining length, the body.
pub(crate) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A property list (length prefix included) from already-encoded properties.
fn props_block(props: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, props.len());
    out.extend_from_slice(props);
    out
}

/// Property encoders: one property each, to concatenate.
pub(crate) mod prop {
    /// A one-byte property.
    pub(crate) fn byte(id: u8, v: u8) -> Vec<u8> {
        vec![id, v]
    }
    /// A two-byte integer property.
    pub(crate) fn u16(id: u8, v: u16) -> Vec<u8> {
        let mut out = vec![id];
        out.extend_from_slice(&v.to_be_bytes());
        out
    }
    /// A four-byte integer property.
    pub(crate) fn u32(id: u8, v: u32) -> Vec<u8> {
        let mut out = vec![id];
        out.extend_from_slice(&v.to_be_bytes());
        out
    }
    /// A Variable Byte Integer property.
    pub(crate) fn varint(id: u8, v: usize) -> Vec<u8> {
        let mut out = vec![id];
        super::put_varint(&mut out, v);
        out
    }
    /// A UTF-8 string (or binary data) property.
    pub(crate) fn string(id: u8, v: &[u8]) -> Vec<u8> {
        let mut out = vec![id];
        super::put_str(&mut out, v);
        out
    }
    /// A user property.
    pub(crate) fn pair(k: &str, v: &str) -> Vec<u8> {
        let mut out = vec![0x26];
        super::put_str(&mut out, k.as_bytes());
        super::put_str(&mut out, v.as_bytes());
        out
    }
}

/// A Will for [`Connect`].
#[derive(Clone)]
pub(crate) struct Will {
    pub(crate) topic: Vec<u8>,
    pub(crate) payload: Vec<u8>,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    /// Encoded will properties (MQTT 5 only).
    pub(crate) props: Vec<u8>,
}

/// A CONNECT packet.
#[derive(Clone)]
pub(crate) struct Connect {
    pub(crate) level: u8,
    pub(crate) client_id: Vec<u8>,
    pub(crate) keep_alive: u16,
    pub(crate) clean: bool,
    /// Encoded CONNECT properties (MQTT 5 only).
    pub(crate) props: Vec<u8>,
    pub(crate) will: Option<Will>,
}

impl Connect {
    /// MQTT 5, clean start, keep-alive 60.
    pub(crate) fn v5(client_id: &str) -> Connect {
        Connect {
            level: 5,
            client_id: client_id.into(),
            keep_alive: 60,
            clean: true,
            props: Vec::new(),
            will: None,
        }
    }

    /// MQTT 3.1.1, clean session, keep-alive 60.
    pub(crate) fn v311(client_id: &str) -> Connect {
        Connect {
            level: 4,
            ..Connect::v5(client_id)
        }
    }

    /// The packet's bytes.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let v5 = self.level == 5;
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.push(self.level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if v5 {
            body.extend(props_block(&self.props));
        }
        put_str(&mut body, &self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                body.extend(props_block(&will.props));
            }
            put_str(&mut body, &will.topic);
            put_str(&mut body, &will.payload);
        }
        frame(0x10, &body)
    }
}

/// A PUBLISH packet.
pub(crate) fn publish(
    v5: bool,
    topic: &str,
    qos: u8,
    retain: bool,
    pkid: u16,
    props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    publish_raw(v5, topic.as_bytes(), qos, retain, pkid, props, payload)
}

/// A PUBLISH packet whose topic is any bytes (for invalid UTF-8).
pub(crate) fn publish_raw(
    v5: bool,
    topic: &[u8],
    qos: u8,
    retain: bool,
    pkid: u16,
    props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if v5 {
        body.extend(props_block(props));
    }
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// Sets the DUP flag of an encoded PUBLISH.
pub(crate) fn with_dup(mut packet: Vec<u8>) -> Vec<u8> {
    packet[0] |= 0x08;
    packet
}

/// A SUBSCRIBE packet; each filter comes with its options byte.
pub(crate) fn subscribe(v5: bool, pkid: u16, props: &[u8], filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.extend(props_block(props));
    }
    for (filter, options) in filters {
        put_str(&mut body, filter.as_bytes());
        body.push(*options);
    }
    frame(0x82, &body)
}

/// An UNSUBSCRIBE packet.
pub(crate) fn unsubscribe(v5: bool, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for filter in filters {
        put_str(&mut body, filter.as_bytes());
    }
    frame(0xA2, &body)
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP with reason Success (the short form, valid in both versions).
pub(crate) fn ack(first: u8, pkid: u16) -> Vec<u8> {
    frame(first, &pkid.to_be_bytes())
}

/// First bytes of the four publish acknowledgements.
pub(crate) const PUBACK: u8 = 0x40;
pub(crate) const PUBREC: u8 = 0x50;
pub(crate) const PUBREL: u8 = 0x62;
pub(crate) const PUBCOMP: u8 = 0x70;
/// PINGREQ.
pub(crate) const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT, normal.
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// An MQTT 5 DISCONNECT with a reason code and properties.
pub(crate) fn disconnect_v5(reason: u8, props: &[u8]) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend(props_block(props));
    frame(0xE0, &body)
}

/// Packet types (the high nibble of the first byte).
pub(crate) mod kind {
    pub(crate) const CONNACK: u8 = 2;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBACK: u8 = 9;
    pub(crate) const UNSUBACK: u8 = 11;
    pub(crate) const PINGRESP: u8 = 13;
    pub(crate) const DISCONNECT: u8 = 14;
}

// ----------------------------------------------------------------------------------------
// Parsing what the server sends
// ----------------------------------------------------------------------------------------

/// One packet as read from the wire.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// Packet type (1..=15).
    pub(crate) kind: u8,
    /// The low nibble of the first byte.
    pub(crate) flags: u8,
    /// Everything after the remaining length.
    pub(crate) body: Bytes,
}

/// A property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PropValue {
    Int(u32),
    Str(String),
    Bin(Bytes),
    Pair(String, String),
}

/// A decoded property list, in wire order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Props(pub(crate) Vec<(u8, PropValue)>);

impl Props {
    /// The integer property `id` (byte, two-byte, four-byte or varint).
    pub(crate) fn int(&self, id: u8) -> Option<u32> {
        self.0.iter().find_map(|(i, v)| match v {
            PropValue::Int(n) if *i == id => Some(*n),
            _ => None,
        })
    }
    /// Every integer property `id` (subscription identifiers repeat).
    pub(crate) fn ints(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter_map(|(i, v)| match v {
                PropValue::Int(n) if *i == id => Some(*n),
                _ => None,
            })
            .collect()
    }
    /// The string property `id`.
    pub(crate) fn str(&self, id: u8) -> Option<String> {
        self.0.iter().find_map(|(i, v)| match v {
            PropValue::Str(s) if *i == id => Some(s.clone()),
            _ => None,
        })
    }
    /// The binary property `id`.
    pub(crate) fn bin(&self, id: u8) -> Option<Bytes> {
        self.0.iter().find_map(|(i, v)| match v {
            PropValue::Bin(b) if *i == id => Some(b.clone()),
            _ => None,
        })
    }
    /// The user properties, in order.
    pub(crate) fn user(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                PropValue::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }
    /// True if property `id` is present.
    pub(crate) fn has(&self, id: u8) -> bool {
        self.0.iter().any(|(i, _)| *i == id)
    }
}

fn get_varint(buf: &mut Bytes) -> anyhow::Result<usize> {
    let mut value = 0usize;
    for shift in 0..4 {
        if !buf.has_remaining() {
            bail!("truncated variable byte integer");
        }
        let byte = buf.get_u8();
        value |= usize::from(byte & 0x7F) << (7 * shift);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("variable byte integer longer than 4 bytes")
}

fn get_u16(buf: &mut Bytes) -> anyhow::Result<u16> {
    if buf.remaining() < 2 {
        bail!("truncated two-byte integer");
    }
    Ok(buf.get_u16())
}

fn get_bin(buf: &mut Bytes) -> anyhow::Result<Bytes> {
    let len = usize::from(get_u16(buf)?);
    if buf.remaining() < len {
        bail!("truncated string");
    }
    Ok(buf.split_to(len))
}

fn get_str(buf: &mut Bytes) -> anyhow::Result<String> {
    Ok(String::from_utf8(get_bin(buf)?.to_vec())?)
}

fn get_props(buf: &mut Bytes) -> anyhow::Result<Props> {
    let len = get_varint(buf)?;
    if buf.remaining() < len {
        bail!("property length past the end of the packet");
    }
    let mut block = buf.split_to(len);
    let mut props = Vec::new();
    while block.has_remaining() {
        let id = block.get_u8();
        let value = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                if !block.has_remaining() {
                    bail!("truncated property {id:#x}");
                }
                PropValue::Int(u32::from(block.get_u8()))
            }
            0x13 | 0x21 | 0x22 | 0x23 => PropValue::Int(u32::from(get_u16(&mut block)?)),
            0x02 | 0x11 | 0x18 | 0x27 => {
                if block.remaining() < 4 {
                    bail!("truncated property {id:#x}");
                }
                PropValue::Int(block.get_u32())
            }
            0x0B => PropValue::Int(get_varint(&mut block)? as u32),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PropValue::Str(get_str(&mut block)?),
            0x09 | 0x16 => PropValue::Bin(get_bin(&mut block)?),
            0x26 => {
                let k = get_str(&mut block)?;
                let v = get_str(&mut block)?;
                PropValue::Pair(k, v)
            }
            other => bail!("unknown property id {other:#x}"),
        };
        props.push((id, value));
    }
    Ok(Props(props))
}

/// A decoded CONNACK.
#[derive(Debug, Clone)]
pub(crate) struct ConnAck {
    pub(crate) session_present: bool,
    /// The v5 reason code or the 3.1.1 return code.
    pub(crate) code: u8,
    pub(crate) props: Props,
}

/// A decoded PUBLISH.
#[derive(Debug, Clone)]
pub(crate) struct Publish {
    pub(crate) dup: bool,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) topic: String,
    pub(crate) pkid: u16,
    pub(crate) props: Props,
    pub(crate) payload: Bytes,
}

impl Frame {
    fn expect_kind(&self, kind: u8) -> anyhow::Result<Bytes> {
        if self.kind != kind {
            bail!("expected packet type {kind}, got {self:?}");
        }
        Ok(self.body.clone())
    }

    /// Parses a CONNACK.
    pub(crate) fn connack(&self, v5: bool) -> anyhow::Result<ConnAck> {
        let mut body = self.expect_kind(kind::CONNACK)?;
        if body.remaining() < 2 {
            bail!("short CONNACK {self:?}");
        }
        let flags = body.get_u8();
        let code = body.get_u8();
        let props = if v5 && body.has_remaining() {
            get_props(&mut body)?
        } else {
            Props::default()
        };
        Ok(ConnAck {
            session_present: flags & 1 == 1,
            code,
            props,
        })
    }

    /// Parses a PUBLISH.
    pub(crate) fn publish(&self, v5: bool) -> anyhow::Result<Publish> {
        let mut body = self.expect_kind(kind::PUBLISH)?;
        let qos = (self.flags >> 1) & 3;
        let topic = get_str(&mut body)?;
        let pkid = if qos > 0 { get_u16(&mut body)? } else { 0 };
        let props = if v5 {
            get_props(&mut body)?
        } else {
            Props::default()
        };
        Ok(Publish {
            dup: self.flags & 0x08 != 0,
            qos,
            retain: self.flags & 1 == 1,
            topic,
            pkid,
            props,
            payload: body,
        })
    }

    /// Parses PUBACK, PUBREC, PUBREL or PUBCOMP: (packet id, reason code).
    pub(crate) fn ack(&self, kind: u8) -> anyhow::Result<(u16, u8)> {
        let mut body = self.expect_kind(kind)?;
        let pkid = get_u16(&mut body)?;
        let code = if body.has_remaining() {
            body.get_u8()
        } else {
            0
        };
        Ok((pkid, code))
    }

    /// Parses SUBACK or UNSUBACK: (packet id, one code per filter).
    pub(crate) fn sub_codes(&self, kind: u8, v5: bool) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut body = self.expect_kind(kind)?;
        let pkid = get_u16(&mut body)?;
        if v5 {
            get_props(&mut body)?;
        }
        Ok((pkid, body.to_vec()))
    }

    /// The reason code of an MQTT 5 DISCONNECT (0 when absent).
    pub(crate) fn disconnect_reason(&self) -> anyhow::Result<u8> {
        let body = self.expect_kind(kind::DISCONNECT)?;
        Ok(body.first().copied().unwrap_or(0))
    }
}

// ----------------------------------------------------------------------------------------
// The raw client
// ----------------------------------------------------------------------------------------

/// What a read produced.
#[derive(Debug)]
pub(crate) enum Incoming {
    Frame(Frame),
    /// The server closed the connection (EOF, reset or TLS alert).
    Closed,
}

/// An MQTT connection driven by hand.
pub(crate) struct RawClient {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    buf: BytesMut,
}

impl RawClient {
    /// Opens a TLS connection to the server's MQTT port as `device`.
    pub(crate) async fn open(
        server: &TestServer,
        device: &DeviceFiles,
    ) -> anyhow::Result<RawClient> {
        RawClient::open_at(server.mqtts(), device).await
    }

    /// Opens a TLS connection to the MQTT port `addr` as `device`.
    pub(crate) async fn open_at(
        addr: SocketAddr,
        device: &DeviceFiles,
    ) -> anyhow::Result<RawClient> {
        let config = client_config(&device.ca, Some(device_identity(device)?))?;
        let stream = tls_connect(addr, "127.0.0.1", config).await?;
        Ok(RawClient {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// The client's end of the TCP connection.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.get_ref().0.local_addr()
    }

    /// Opens a connection and completes CONNECT; fails unless CONNACK says success.
    pub(crate) async fn connect(
        server: &TestServer,
        device: &DeviceFiles,
        connect: &Connect,
    ) -> anyhow::Result<(RawClient, ConnAck)> {
        RawClient::connect_at(server.mqtts(), device, connect).await
    }

    /// Connects to the MQTT port `addr`; fails unless CONNACK says success.
    pub(crate) async fn connect_at(
        addr: SocketAddr,
        device: &DeviceFiles,
        connect: &Connect,
    ) -> anyhow::Result<(RawClient, ConnAck)> {
        let mut client = RawClient::open_at(addr, device).await?;
        client.send(&connect.bytes()).await?;
        let ack = client
            .expect(kind::CONNACK)
            .await?
            .connack(connect.level == 5)?;
        if ack.code != 0 {
            bail!("CONNACK refused the connection: {ack:?}");
        }
        Ok((client, ack))
    }

    /// MQTT 5 connect with defaults.
    pub(crate) async fn v5(
        server: &TestServer,
        device: &DeviceFiles,
        client_id: &str,
    ) -> anyhow::Result<RawClient> {
        Ok(RawClient::connect(server, device, &Connect::v5(client_id))
            .await?
            .0)
    }

    /// MQTT 3.1.1 connect with defaults.
    pub(crate) async fn v311(
        server: &TestServer,
        device: &DeviceFiles,
        client_id: &str,
    ) -> anyhow::Result<RawClient> {
        Ok(
            RawClient::connect(server, device, &Connect::v311(client_id))
                .await?
                .0,
        )
    }

    /// Publishes at QoS 2 (MQTT 5) and completes the exchange, checking each answer.
    pub(crate) async fn publish_qos2(
        &mut self,
        topic: &str,
        pkid: u16,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        self.send(&publish(true, topic, 2, false, pkid, &[], payload))
            .await?;
        let rec = self.expect(kind::PUBREC).await?.ack(kind::PUBREC)?;
        anyhow::ensure!(rec == (pkid, 0), "PUBREC {rec:?} for {pkid}");
        self.send(&ack(PUBREL, pkid)).await?;
        let comp = self.expect(kind::PUBCOMP).await?.ack(kind::PUBCOMP)?;
        anyhow::ensure!(comp == (pkid, 0), "PUBCOMP {comp:?} for {pkid}");
        Ok(())
    }

    /// Writes bytes.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Closes the TCP connection without a DISCONNECT (TLS close_notify is skipped too).
    pub(crate) fn drop_connection(self) {
        let (tcp, _) = self.stream.into_inner();
        drop(tcp);
    }

    /// The next packet, or `Closed`; fails after `within`.
    pub(crate) async fn recv_within(&mut self, within: Duration) -> anyhow::Result<Incoming> {
        timeout(within, self.recv())
            .await
            .with_context(|| format!("nothing from the server within {within:?}"))
    }

    async fn recv(&mut self) -> Incoming {
        loop {
            if let Some(frame) = self.try_frame() {
                return match frame {
                    Ok(frame) => Incoming::Frame(frame),
                    Err(_) => Incoming::Closed,
                };
            }
            self.buf.reserve(16 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Incoming::Closed,
                Ok(_) => {}
            }
        }
    }

    fn try_frame(&mut self) -> Option<anyhow::Result<Frame>> {
        let first = *self.buf.first()?;
        let mut len = 0usize;
        let mut header = 1;
        loop {
            let byte = *self.buf.get(header)?;
            len |= usize::from(byte & 0x7F) << (7 * (header - 1));
            header += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if header > 4 {
                return Some(Err(anyhow::anyhow!("bad remaining length from the server")));
            }
        }
        if self.buf.len() < header + len {
            return None;
        }
        let mut packet = self.buf.split_to(header + len).freeze();
        packet.advance(header);
        Some(Ok(Frame {
            kind: first >> 4,
            flags: first & 0x0F,
            body: packet,
        }))
    }

    /// The next packet, which must be of type `kind` (PINGRESPs are skipped unless asked for).
    pub(crate) async fn expect(&mut self, kind: u8) -> anyhow::Result<Frame> {
        loop {
            match self.recv_within(WAIT).await? {
                Incoming::Frame(frame) if frame.kind == kind => return Ok(frame),
                Incoming::Frame(frame) if frame.kind == kind::PINGRESP => continue,
                Incoming::Frame(frame) => bail!("expected packet type {kind}, got {frame:?}"),
                Incoming::Closed => bail!("connection closed while waiting for packet type {kind}"),
            }
        }
    }

    /// The next PUBLISH.
    pub(crate) async fn expect_publish(&mut self, v5: bool) -> anyhow::Result<Publish> {
        self.expect(kind::PUBLISH).await?.publish(v5)
    }

    /// Asserts that nothing arrives for `QUIET` (and the connection stays open).
    pub(crate) async fn expect_silence(&mut self) -> anyhow::Result<()> {
        match timeout(QUIET, self.recv()).await {
            Err(_) => Ok(()),
            Ok(incoming) => bail!("expected silence, got {incoming:?}"),
        }
    }

    /// Reads until the server closes the connection, within `within`; returns the packets
    /// received on the way.
    pub(crate) async fn expect_closed(&mut self, within: Duration) -> anyhow::Result<Vec<Frame>> {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.recv()).await {
                Err(_) => bail!("connection still open after {within:?}; received {frames:?}"),
                Ok(Incoming::Closed) => return Ok(frames),
                Ok(Incoming::Frame(frame)) => frames.push(frame),
            }
        }
    }

    /// Waits for the server to close the connection; the MQTT 5 DISCONNECT reason code if it
    /// sent one first. Fails if anything other than a DISCONNECT arrives.
    pub(crate) async fn expect_disconnect(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<Option<u8>> {
        let frames = self.expect_closed(within).await?;
        let mut reason = None;
        for frame in frames {
            if frame.kind == kind::DISCONNECT {
                reason = Some(frame.disconnect_reason()?);
            } else if frame.kind != kind::PINGRESP {
                bail!("unexpected packet before the close: {frame:?}");
            }
        }
        Ok(reason)
    }

    /// Subscribes and returns the SUBACK codes.
    pub(crate) async fn subscribe(
        &mut self,
        v5: bool,
        pkid: u16,
        props: &[u8],
        filters: &[(&str, u8)],
    ) -> anyhow::Result<Vec<u8>> {
        self.send(&subscribe(v5, pkid, props, filters)).await?;
        let (id, codes) = self
            .expect(kind::SUBACK)
            .await?
            .sub_codes(kind::SUBACK, v5)?;
        if id != pkid {
            bail!("SUBACK for packet id {id}, expected {pkid}");
        }
        Ok(codes)
    }

    /// Sends an MQTT 5 PINGREQ and waits for the PINGRESP, proving the connection works and
    /// that everything sent before has been processed.
    pub(crate) async fn ping(&mut self) -> anyhow::Result<()> {
        self.send(&PINGREQ).await?;
        match self.recv_within(WAIT).await? {
            Incoming::Frame(frame) if frame.kind == kind::PINGRESP => Ok(()),
            Incoming::Frame(frame) => bail!("expected PINGRESP, got {frame:?}"),
            Incoming::Closed => bail!("connection closed while waiting for PINGRESP"),
        }
    }
}

/// Issues a device with the CLI and waits until the running server has re-read the
/// certificate registry (it polls the store every 250 ms).
pub(crate) async fn ready_device(server: &TestServer, name: &str) -> anyhow::Result<DeviceFiles> {
    let device = server.issue_device(name).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    Ok(device)
}

/// After a client's connection closed, gives the server a moment to mark its session offline,
/// so that what is published next is queued rather than written to the closing connection.
pub(crate) async fn let_session_go_offline() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Starts a server and issues one device for it.
pub(crate) async fn server_and_device(
    adjust: impl FnOnce(&mut thingd_server::Config),
) -> anyhow::Result<(TestServer, DeviceFiles)> {
    let server = TestServer::start_with(adjust).await?;
    let device = ready_device(&server, "raw-device").await?;
    Ok((server, device))
}

/// Subscribe options byte: QoS plus the MQTT 5 flags.
pub(crate) fn sub_opts(
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(retain_as_published) << 3) | (retain_handling << 4)
}

// ----------------------------------------------------------------------------------------
// The tests
// ----------------------------------------------------------------------------------------

type TestResult = anyhow::Result<()>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_advertises_the_limits() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut connect = Connect::v5("limits-probe");
    connect.keep_alive = 5; // below the default minimum of 30
    let (_client, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert!(!ack.session_present);
    assert_eq!(ack.props.int(0x22), Some(8), "Topic Alias Maximum: {ack:?}");
    assert_eq!(ack.props.int(0x21), Some(100), "Receive Maximum: {ack:?}");
    let max_packet = ack.props.int(0x27).context("Maximum Packet Size missing")?;
    assert!(
        max_packet >= 128 * 1024,
        "Maximum Packet Size {max_packet} is below the 128 KiB payload limit"
    );
    assert_eq!(
        ack.props.int(0x13),
        Some(30),
        "Server Keep Alive must report the clamped value: {ack:?}"
    );
    // Maximum QoS is absent (2) or 2: QoS 2 is supported.
    assert!(ack.props.int(0x24).is_none_or(|q| q == 2), "{ack:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_empty_client_id_gets_an_assigned_identifier() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let (_a, ack_a) = RawClient::connect(&server, &device, &Connect::v5("")).await?;
    let (_b, ack_b) = RawClient::connect(&server, &device, &Connect::v5("")).await?;
    let id_a = ack_a
        .props
        .str(0x12)
        .context("no Assigned Client Identifier")?;
    let id_b = ack_b
        .props
        .str(0x12)
        .context("no Assigned Client Identifier")?;
    assert!(!id_a.is_empty() && id_a.len() <= 128, "{id_a:?}");
    assert_ne!(id_a, id_b, "two anonymous clients got the same identifier");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_with_persistent_session_is_refused() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::open(&server, &device).await?;
    let mut connect = Connect::v311("");
    connect.clean = false;
    client.send(&connect.bytes()).await?;
    let ack = client.expect(kind::CONNACK).await?.connack(false)?;
    assert_eq!(ack.code, 0x02, "identifier rejected");
    client.expect_closed(WAIT).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_over_128_bytes_is_refused() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let exactly = "c".repeat(128);
    let too_long = "c".repeat(129);
    RawClient::v5(&server, &device, &exactly).await?;

    let mut v5 = RawClient::open(&server, &device).await?;
    v5.send(&Connect::v5(&too_long).bytes()).await?;
    let ack = v5.expect(kind::CONNACK).await?.connack(true)?;
    assert_eq!(ack.code, 0x85, "Client Identifier not valid");
    v5.expect_closed(WAIT).await?;

    let mut v3 = RawClient::open(&server, &device).await?;
    v3.send(&Connect::v311(&too_long).bytes()).await?;
    let ack = v3.expect(kind::CONNACK).await?.connack(false)?;
    assert_eq!(ack.code, 0x02, "identifier rejected");
    v3.expect_closed(WAIT).await?;
    // The limit is in bytes, not characters.
    RawClient::v5(&server, &device, &"é".repeat(64)).await?;
    let mut wide = RawClient::open(&server, &device).await?;
    wide.send(&Connect::v5(&"é".repeat(65)).bytes()).await?;
    let ack = wide.expect(kind::CONNACK).await?.connack(true)?;
    assert_eq!(ack.code, 0x85, "130 bytes in 65 characters");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_connect_is_closed() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::open(&server, &device).await?;
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let frames = client.expect_closed(WAIT).await?;
    assert!(
        frames
            .iter()
            .all(|f| f.kind != kind::CONNACK || f.body.get(1).is_some_and(|c| *c != 0)),
        "{frames:?}"
    );

    // Random-looking binary.
    let mut client = RawClient::open(&server, &device).await?;
    client
        .send(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x13, 0x37])
        .await?;
    let frames = client.expect_closed(WAIT).await?;
    assert!(
        frames
            .iter()
            .all(|f| f.kind != kind::CONNACK || f.body.get(1).is_some_and(|c| *c != 0)),
        "{frames:?}"
    );

    // The server is still serving.
    RawClient::v5(&server, &device, "after-garbage")
        .await?
        .ping()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_before_connect_is_closed_without_connack() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::open(&server, &device).await?;
    client
        .send(&publish(false, "early/bird", 0, false, 0, &[], b"hi"))
        .await?;
    let frames = client.expect_closed(WAIT).await?;
    assert!(
        frames.iter().all(|f| f.kind != kind::CONNACK),
        "no CONNACK for a session that never connected: {frames:?}"
    );

    let mut client = RawClient::open(&server, &device).await?;
    client.send(&PINGREQ).await?;
    let frames = client.expect_closed(WAIT).await?;
    assert!(
        frames
            .iter()
            .all(|f| f.kind != kind::PINGRESP && f.kind != kind::CONNACK),
        "{frames:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_is_a_protocol_error() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut v5 = RawClient::v5(&server, &device, "twice-v5").await?;
    v5.send(&Connect::v5("twice-v5").bytes()).await?;
    let reason = v5.expect_disconnect(WAIT).await?;
    assert_eq!(reason, Some(0x82), "Protocol Error");

    let mut v3 = RawClient::v311(&server, &device, "twice-v3").await?;
    v3.send(&Connect::v311("twice-v3").bytes()).await?;
    let frames = v3.expect_closed(WAIT).await?;
    assert!(
        frames.is_empty(),
        "a 3.1.1 client is just disconnected: {frames:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_is_refused() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::open(&server, &device).await?;
    let mut connect = Connect::v311("level-6");
    connect.level = 6;
    client.send(&connect.bytes()).await?;
    let frames = client.expect_closed(WAIT).await?;
    for frame in &frames {
        let ack = frame.connack(false)?;
        assert!(
            ack.code == 0x01 || ack.code == 0x84,
            "unacceptable protocol version: {ack:?}"
        );
    }

    // MQTT 3.1 ("MQIsdp", level 3) is not supported either.
    let mut client = RawClient::open(&server, &device).await?;
    let mut body = Vec::new();
    body.extend_from_slice(&[0x00, 0x06]);
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[0x03, 0x02, 0x00, 0x3C, 0x00, 0x02]);
    body.extend_from_slice(b"v3");
    client.send(&frame(0x10, &body)).await?;
    let frames = client.expect_closed(WAIT).await?;
    for frame in &frames {
        assert_ne!(
            frame.connack(false)?.code,
            0,
            "MQTT 3.1 must not be accepted"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_connect_or_topic_is_malformed() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    // Client id with an invalid UTF-8 sequence.
    let mut client = RawClient::open(&server, &device).await?;
    let mut connect = Connect::v5("x");
    connect.client_id = vec![b'a', 0xC3, 0x28, b'b'];
    client.send(&connect.bytes()).await?;
    let frames = client.expect_closed(WAIT).await?;
    for frame in &frames {
        assert_eq!(
            frame.connack(true)?.code,
            0x81,
            "Malformed Packet: {frame:?}"
        );
    }

    // Topic name with invalid UTF-8 after a good CONNECT.
    let mut client = RawClient::v5(&server, &device, "bad-topic").await?;
    client
        .send(&publish_raw(
            true,
            &[b't', 0xFF, b'x'],
            0,
            false,
            0,
            &[],
            b"p",
        ))
        .await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert!(
        matches!(reason, None | Some(0x81)),
        "Malformed Packet, got {reason:?}"
    );

    // A UTF-8 encoded NUL in a topic is forbidden too.
    let mut client = RawClient::v5(&server, &device, "nul-topic").await?;
    client
        .send(&publish_raw(true, b"t/\0/x", 0, false, 0, &[], b"p"))
        .await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert!(
        matches!(reason, None | Some(0x81) | Some(0x90)),
        "got {reason:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_in_a_topic_name_are_refused() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut watcher = RawClient::v5(&server, &device, "watcher").await?;
    assert_eq!(watcher.subscribe(true, 1, &[], &[("#", 0)]).await?, vec![0]);

    for (i, topic) in ["a/+/c", "a/#", "+"].into_iter().enumerate() {
        let mut v5 = RawClient::v5(&server, &device, &format!("wild-{i}")).await?;
        v5.send(&publish(true, topic, 1, false, 7, &[], b"nope"))
            .await?;
        match v5.recv_within(WAIT).await? {
            Incoming::Frame(f) if f.kind == kind::PUBACK => {
                assert_eq!(f.ack(kind::PUBACK)?, (7, 0x90), "Topic Name invalid")
            }
            Incoming::Frame(f) if f.kind == kind::DISCONNECT => {
                let code = f.disconnect_reason()?;
                assert!(
                    code == 0x90 || code == 0x82 || code == 0x81,
                    "reason {code:#x}"
                );
            }
            Incoming::Closed => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    let mut v3 = RawClient::v311(&server, &device, "wild-v3").await?;
    v3.send(&publish(false, "x/+", 0, false, 0, &[], b"nope"))
        .await?;
    assert!(v3.expect_closed(WAIT).await?.is_empty());
    watcher.expect_silence().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_packet_is_refused_before_its_body_arrives() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::v5(&server, &device, "big").await?;
    // A PUBLISH announcing 10 MB, of which we send only the header and a few bytes.
    let mut header = vec![0x30];
    put_varint(&mut header, 10_000_000);
    header.extend_from_slice(&[0x00, 0x01, b't', 0x00]);
    client.send(&header).await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert_eq!(reason, Some(0x95), "Packet too large");

    let mut v3 = RawClient::v311(&server, &device, "big-v3").await?;
    v3.send(&header).await?;
    assert!(v3.expect_closed(WAIT).await?.is_empty());
    // A CONNECT carrying a 200 KB Will is refused too.
    let mut connect = Connect::v5("huge-will");
    connect.will = Some(Will {
        topic: b"w".to_vec(),
        payload: vec![b'w'; 200 * 1024],
        qos: 0,
        retain: false,
        props: Vec::new(),
    });
    let mut c = RawClient::open(&server, &device).await?;
    let _ = c.send(&connect.bytes()).await;
    let frames = c.expect_closed(WAIT).await?;
    for frame in frames {
        assert!(
            frame.connack(true)?.code >= 0x80,
            "a 200 KB CONNECT was accepted"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_limit_is_128_kib() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut sub = RawClient::v5(&server, &device, "sub").await?;
    sub.subscribe(true, 1, &[], &[("big/+", 1)]).await?;

    let mut publisher = RawClient::v5(&server, &device, "pub").await?;
    let exactly = vec![b'x'; 128 * 1024];
    publisher
        .send(&publish(true, "big/ok", 1, false, 1, &[], &exactly))
        .await?;
    assert_eq!(
        publisher.expect(kind::PUBACK).await?.ack(kind::PUBACK)?.1,
        0
    );
    let got = sub.expect_publish(true).await?;
    assert_eq!(got.payload.len(), 128 * 1024);
    sub.send(&ack(PUBACK, got.pkid)).await?;

    let over = vec![b'x'; 128 * 1024 + 1];
    publisher
        .send(&publish(true, "big/over", 1, false, 2, &[], &over))
        .await?;
    match publisher.recv_within(WAIT).await? {
        Incoming::Frame(f) if f.kind == kind::PUBACK => {
            let (_, code) = f.ack(kind::PUBACK)?;
            assert!(
                code >= 0x80,
                "an oversize payload must not be acknowledged as success"
            );
        }
        Incoming::Frame(f) if f.kind == kind::DISCONNECT => {
            let code = f.disconnect_reason()?;
            assert!(code == 0x95 || code == 0x97, "reason {code:#x}");
        }
        Incoming::Closed => {}
        other => bail!("unexpected {other:?}"),
    }
    sub.expect_silence().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_limits_are_256_bytes_and_8_levels() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::v5(&server, &device, "limits").await?;
    let long_ok = "t".repeat(256);
    let long_bad = "t".repeat(257);
    let deep_ok = "a/b/c/d/e/f/g/h";
    let deep_bad = "a/b/c/d/e/f/g/h/i";
    let codes = client
        .subscribe(
            true,
            1,
            &[],
            &[(&long_ok, 0), (&long_bad, 0), (deep_ok, 0), (deep_bad, 0)],
        )
        .await?;
    assert_eq!(codes.len(), 4);
    assert_eq!(codes[0], 0);
    assert!(
        codes[1] >= 0x80,
        "257-byte filter must be refused: {codes:?}"
    );
    assert_eq!(codes[2], 0);
    assert!(
        codes[3] >= 0x80,
        "9-level filter must be refused: {codes:?}"
    );

    // A `$share/<group>/` prefix is not counted.
    let shared = format!("$share/g/{}", "s".repeat(250));
    assert_eq!(
        client.subscribe(true, 2, &[], &[(&shared, 0)]).await?,
        vec![0]
    );

    // Publishing within the limits works; beyond them it is refused.
    client
        .send(&publish(true, deep_ok, 1, false, 3, &[], b"ok"))
        .await?;
    // Our own subscription gets the message; the PUBACK may come before or after it.
    let (mut got_puback, mut got_publish) = (false, false);
    while !(got_puback && got_publish) {
        match client.recv_within(WAIT).await? {
            Incoming::Frame(f) if f.kind == kind::PUBACK => {
                assert_eq!(f.ack(kind::PUBACK)?, (3, 0));
                got_puback = true;
            }
            Incoming::Frame(f) if f.kind == kind::PUBLISH => {
                assert_eq!(f.publish(true)?.topic, deep_ok);
                got_publish = true;
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    client
        .send(&publish(true, deep_bad, 1, false, 4, &[], b"too deep"))
        .await?;
    match client.recv_within(WAIT).await? {
        Incoming::Frame(f) if f.kind == kind::PUBACK => assert_eq!(f.ack(kind::PUBACK)?, (4, 0x90)),
        Incoming::Frame(f) if f.kind == kind::DISCONNECT => {
            assert_eq!(f.disconnect_reason()?, 0x90)
        }
        Incoming::Closed => {}
        other => bail!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_8_filters_per_subscribe() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let names: Vec<String> = (0..9).map(|i| format!("f/{i}")).collect();
    let eight: Vec<(&str, u8)> = names[..8].iter().map(|n| (n.as_str(), 1)).collect();
    let nine: Vec<(&str, u8)> = names.iter().map(|n| (n.as_str(), 1)).collect();

    let mut client = RawClient::v5(&server, &device, "eight").await?;
    assert_eq!(client.subscribe(true, 1, &[], &eight).await?, vec![1; 8]);

    let mut client = RawClient::v5(&server, &device, "nine").await?;
    client.send(&subscribe(true, 2, &[], &nine)).await?;
    match client.recv_within(WAIT).await? {
        Incoming::Frame(f) if f.kind == kind::SUBACK => {
            let (_, codes) = f.sub_codes(kind::SUBACK, true)?;
            assert_eq!(codes.len(), 9);
            assert!(
                codes.iter().all(|c| *c >= 0x80),
                "a SUBACK for 9 filters must refuse them all: {codes:?}"
            );
        }
        Incoming::Frame(f) if f.kind == kind::DISCONNECT => {
            assert!(f.disconnect_reason()? >= 0x80);
        }
        Incoming::Closed => {}
        other => bail!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reason_codes() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::v5(&server, &device, "codes").await?;
    let codes = client
        .subscribe(
            true,
            9,
            &[],
            &[
                ("q/0", 0),
                ("q/1", 1),
                ("q/2", 2),
                ("bad/#/x", 0),
                ("bad+", 0),
            ],
        )
        .await?;
    assert_eq!(codes, vec![0x00, 0x01, 0x02, 0x8F, 0x8F]);

    client
        .send(&unsubscribe(true, 10, &["q/1", "never/subscribed"]))
        .await?;
    let (pkid, codes) = client
        .expect(kind::UNSUBACK)
        .await?
        .sub_codes(kind::UNSUBACK, true)?;
    assert_eq!(pkid, 10);
    assert_eq!(codes, vec![0x00, 0x11], "Success, No subscription existed");

    // 3.1.1 SUBACK uses 0x80 for failure.
    let mut v3 = RawClient::v311(&server, &device, "codes-v3").await?;
    let codes = v3
        .subscribe(false, 1, &[], &[("ok/+", 1), ("bad/#/x", 1)])
        .await?;
    assert_eq!(codes, vec![0x01, 0x80]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_flag_bits_and_truncated_packets_close_the_connection() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    // SUBSCRIBE must have flags 0b0010.
    let mut client = RawClient::v5(&server, &device, "flags").await?;
    let mut bad = subscribe(true, 1, &[], &[("a", 0)]);
    bad[0] = 0x80;
    client.send(&bad).await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert!(
        matches!(reason, None | Some(0x81)),
        "Malformed Packet, got {reason:?}"
    );

    // QoS 3 is malformed.
    let mut client = RawClient::v5(&server, &device, "qos3").await?;
    let mut bad = publish(true, "a", 1, false, 1, &[], b"x");
    bad[0] = 0x36;
    client.send(&bad).await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert!(
        matches!(reason, None | Some(0x81)),
        "Malformed Packet, got {reason:?}"
    );

    // A remaining length that ends inside the topic string.
    let mut client = RawClient::v5(&server, &device, "short").await?;
    client.send(&[0x30, 0x03, 0x00, 0x10, b'a']).await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert!(
        matches!(reason, None | Some(0x81)),
        "Malformed Packet, got {reason:?}"
    );

    // A five-byte remaining length.
    let mut client = RawClient::v5(&server, &device, "varint").await?;
    client.send(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert!(
        matches!(reason, None | Some(0x81)),
        "Malformed Packet, got {reason:?}"
    );

    // Half a packet, then the client goes away: nothing breaks.
    let mut client = RawClient::v5(&server, &device, "half").await?;
    client
        .send(&publish(true, "half/packet", 0, false, 0, &[], &[b'z'; 100])[..20])
        .await?;
    client.drop_connection();

    RawClient::v5(&server, &device, "still-alive")
        .await?
        .ping()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_is_cut_off_by_the_connect_timeout() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.connect_timeout_secs = 1).await?;

    // Silent after the TLS handshake.
    let start = Instant::now();
    let mut silent = RawClient::open(&server, &device).await?;
    let frames = silent.expect_closed(Duration::from_secs(4)).await?;
    assert!(frames.is_empty(), "{frames:?}");
    let silent_took = start.elapsed();

    // A CONNECT dribbled one byte every 200 ms.
    let start = Instant::now();
    let mut dribble = RawClient::open(&server, &device).await?;
    let connect = Connect::v5("dribble").bytes();
    let mut closed = false;
    for byte in &connect {
        if dribble.send(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        if let Ok(incoming) = timeout(Duration::from_millis(200), dribble.recv()).await {
            assert!(
                matches!(incoming, Incoming::Closed),
                "unexpected {incoming:?}"
            );
            closed = true;
            break;
        }
    }
    if !closed {
        dribble.expect_closed(Duration::from_secs(3)).await?;
    }
    let dribble_took = start.elapsed();

    // A TCP connection that never starts TLS.
    let start = Instant::now();
    let mut tcp = TcpStream::connect(server.mqtts()).await?;
    let mut buf = [0u8; 64];
    let read = timeout(Duration::from_secs(4), tcp.read(&mut buf))
        .await
        .context("TCP-only client never closed")?;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let tcp_took = start.elapsed();

    for (what, took) in [
        ("silent", silent_took),
        ("dribble", dribble_took),
        ("tcp", tcp_took),
    ] {
        assert!(
            took < Duration::from_millis(2500),
            "{what} connection lived {took:?} with a 1 s connect timeout"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_expires_at_one_and_a_half_times() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.keep_alive_min_secs = 1).await?;
    let mut connect = Connect::v5("sleepy-v5");
    connect.keep_alive = 1;
    let (mut v5, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert!(ack.props.int(0x13).is_none_or(|k| k == 1), "{ack:?}");
    let start = Instant::now();
    let reason = v5.expect_disconnect(Duration::from_secs(4)).await?;
    let took = start.elapsed();
    assert_eq!(reason, Some(0x8D), "Keep Alive timeout");
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_millis(2600),
        "disconnected after {took:?}"
    );

    let mut connect = Connect::v311("sleepy-v3");
    connect.keep_alive = 1;
    let (mut v3, _) = RawClient::connect(&server, &device, &connect).await?;
    let start = Instant::now();
    assert!(v3.expect_closed(Duration::from_secs(4)).await?.is_empty());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_millis(2600),
        "disconnected after {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_the_connection_alive() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.keep_alive_min_secs = 1).await?;
    let mut connect = Connect::v5("pinger");
    connect.keep_alive = 1;
    let (mut client, _) = RawClient::connect(&server, &device, &connect).await?;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        client.ping().await?;
    }
    // Any packet from the client counts as activity, not just PINGREQ.
    let mut connect = Connect::v5("chatty");
    connect.keep_alive = 1;
    let (mut chatty, _) = RawClient::connect(&server, &device, &connect).await?;
    for i in 0..4u16 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        chatty
            .send(&publish(true, "chatty/t", 1, false, i + 1, &[], b"hi"))
            .await?;
        assert_eq!(
            chatty.expect(kind::PUBACK).await?.ack(kind::PUBACK)?,
            (i + 1, 0)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_sends_session_taken_over_to_the_old_connection() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut old = RawClient::v5(&server, &device, "same-id").await?;
    let (mut new, ack) = RawClient::connect(&server, &device, &Connect::v5("same-id")).await?;
    assert_eq!(ack.code, 0);
    let reason = old.expect_disconnect(WAIT).await?;
    assert_eq!(reason, Some(0x8E), "Session taken over");
    new.ping().await?;

    // 3.1.1: the old connection is just closed.
    let mut old = RawClient::v311(&server, &device, "same-v3").await?;
    let mut new = RawClient::v311(&server, &device, "same-v3").await?;
    assert!(old.expect_closed(WAIT).await?.is_empty());
    new.ping().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_exactly_once_both_ways() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut sub = RawClient::v5(&server, &device, "q2-sub").await?;
    assert_eq!(sub.subscribe(true, 1, &[], &[("q2/t", 2)]).await?, vec![2]);
    let mut publisher = RawClient::v5(&server, &device, "q2-pub").await?;

    let packet = publish(true, "q2/t", 2, false, 42, &[], b"once");
    publisher.send(&packet).await?;
    assert_eq!(
        publisher.expect(kind::PUBREC).await?.ack(kind::PUBREC)?,
        (42, 0)
    );
    // A retransmission before PUBREL must not make a second copy.
    publisher.send(&with_dup(packet)).await?;
    assert_eq!(
        publisher.expect(kind::PUBREC).await?.ack(kind::PUBREC)?,
        (42, 0)
    );
    publisher.send(&ack(PUBREL, 42)).await?;
    assert_eq!(
        publisher.expect(kind::PUBCOMP).await?.ack(kind::PUBCOMP)?,
        (42, 0)
    );

    let got = sub.expect_publish(true).await?;
    assert_eq!(
        (got.qos, got.payload.as_ref(), got.dup),
        (2, &b"once"[..], false)
    );
    sub.send(&ack(PUBREC, got.pkid)).await?;
    let (pkid, code) = sub.expect(kind::PUBREL).await?.ack(kind::PUBREL)?;
    assert_eq!((pkid, code), (got.pkid, 0));
    sub.send(&ack(PUBCOMP, got.pkid)).await?;
    sub.expect_silence().await?;

    // PUBREL for an unknown packet id gets PUBCOMP 0x92.
    publisher.send(&ack(PUBREL, 999)).await?;
    assert_eq!(
        publisher.expect(kind::PUBCOMP).await?.ack(kind::PUBCOMP)?,
        (999, 0x92)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_qos_is_the_lower_of_publish_and_subscription() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut sub = RawClient::v5(&server, &device, "downgrade").await?;
    sub.subscribe(true, 1, &[], &[("d/0", 0), ("d/1", 1)])
        .await?;
    let mut publisher = RawClient::v5(&server, &device, "downgrade-pub").await?;
    for (pkid, topic, payload) in [(1u16, "d/0", b"a"), (2, "d/1", b"b")] {
        publisher.publish_qos2(topic, pkid, payload).await?;
    }
    publisher
        .send(&publish(true, "d/1", 0, false, 0, &[], b"c"))
        .await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish(true).await?;
        if p.qos == 1 {
            sub.send(&ack(PUBACK, p.pkid)).await?;
        }
        got.push((p.topic, p.qos, p.payload));
    }
    got.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(
        got,
        vec![
            ("d/0".to_owned(), 0, Bytes::from_static(b"a")),
            ("d/1".to_owned(), 1, Bytes::from_static(b"b")),
            ("d/1".to_owned(), 0, Bytes::from_static(b"c")),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_receive_maximum_is_enforced() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.receive_maximum = 2).await?;
    let (mut client, ack) = RawClient::connect(&server, &device, &Connect::v5("flood")).await?;
    assert_eq!(ack.props.int(0x21), Some(2), "Receive Maximum in CONNACK");
    // QoS 2 publishes stay in flight until PUBREL: the third one exceeds the limit.
    for pkid in 1..=3u16 {
        client
            .send(&publish(true, "flood/t", 2, false, pkid, &[], b"x"))
            .await?;
    }
    let frames = client.expect_closed(WAIT).await?;
    let last = frames.last().context("no DISCONNECT")?;
    assert_eq!(
        last.disconnect_reason()?,
        0x93,
        "Receive Maximum exceeded; got {frames:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_receive_maximum_limits_unacknowledged_deliveries() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut connect = Connect::v5("slow-reader");
    connect.props = prop::u16(0x21, 1);
    let (mut sub, _) = RawClient::connect(&server, &device, &connect).await?;
    sub.subscribe(true, 1, &[], &[("rm/t", 1)]).await?;
    let mut publisher = RawClient::v5(&server, &device, "fast-writer").await?;
    for i in 0..3u16 {
        publisher
            .send(&publish(
                true,
                "rm/t",
                1,
                false,
                i + 1,
                &[],
                format!("m{i}").as_bytes(),
            ))
            .await?;
    }
    let mut received = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish(true).await?;
        // Until we acknowledge, nothing else may arrive.
        sub.expect_silence().await?;
        received.push(p.payload.clone());
        sub.send(&ack(PUBACK, p.pkid)).await?;
    }
    assert_eq!(
        received,
        vec![
            Bytes::from_static(b"m0"),
            Bytes::from_static(b"m1"),
            Bytes::from_static(b"m2")
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_from_client() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut sub = RawClient::v311(&server, &device, "alias-sub").await?;
    sub.subscribe(false, 1, &[], &[("alias/#", 0)]).await?;

    let mut client = RawClient::v5(&server, &device, "alias-pub").await?;
    client
        .send(&publish(
            true,
            "alias/long/topic",
            0,
            false,
            0,
            &prop::u16(0x23, 3),
            b"one",
        ))
        .await?;
    client
        .send(&publish(true, "", 0, false, 0, &prop::u16(0x23, 3), b"two"))
        .await?;
    // Re-map alias 3.
    client
        .send(&publish(
            true,
            "alias/other",
            0,
            false,
            0,
            &prop::u16(0x23, 3),
            b"three",
        ))
        .await?;
    client
        .send(&publish(
            true,
            "",
            0,
            false,
            0,
            &prop::u16(0x23, 3),
            b"four",
        ))
        .await?;
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = sub.expect_publish(false).await?;
        got.push(format!(
            "{}={}",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        ));
    }
    assert_eq!(
        got,
        [
            "alias/long/topic=one",
            "alias/long/topic=two",
            "alias/other=three",
            "alias/other=four"
        ]
    );

    // Alias above the advertised maximum (8).
    client
        .send(&publish(
            true,
            "alias/x",
            0,
            false,
            0,
            &prop::u16(0x23, 9),
            b"bad",
        ))
        .await?;
    assert_eq!(
        client.expect_disconnect(WAIT).await?,
        Some(0x94),
        "Topic Alias invalid"
    );

    // Alias 0.
    let mut client = RawClient::v5(&server, &device, "alias-zero").await?;
    client
        .send(&publish(
            true,
            "alias/x",
            0,
            false,
            0,
            &prop::u16(0x23, 0),
            b"bad",
        ))
        .await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert!(
        matches!(reason, Some(0x82) | Some(0x94)),
        "alias 0: Protocol Error or Topic Alias invalid, got {reason:?}"
    );

    // An empty topic with an alias never set.
    let mut client = RawClient::v5(&server, &device, "alias-unknown").await?;
    client
        .send(&publish(true, "", 0, false, 0, &prop::u16(0x23, 2), b"bad"))
        .await?;
    let reason = client.expect_disconnect(WAIT).await?;
    assert!(matches!(reason, Some(0x82) | Some(0x94)), "got {reason:?}");
    sub.expect_silence().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_to_client() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut connect = Connect::v5("alias-receiver");
    connect.props = prop::u16(0x22, 2);
    let (mut sub, _) = RawClient::connect(&server, &device, &connect).await?;
    sub.subscribe(true, 1, &[], &[("to/#", 0)]).await?;
    // A client that allows no aliases never gets one.
    let mut plain = RawClient::v5(&server, &device, "no-alias").await?;
    plain.subscribe(true, 1, &[], &[("to/#", 0)]).await?;

    let mut publisher = RawClient::v5(&server, &device, "alias-sender").await?;
    let topics = ["to/a", "to/a", "to/b", "to/a", "to/c", "to/b", "to/a"];
    for (i, topic) in topics.iter().enumerate() {
        publisher
            .send(&publish(
                true,
                topic,
                0,
                false,
                0,
                &[],
                format!("{i}").as_bytes(),
            ))
            .await?;
    }
    let mut aliases = std::collections::HashMap::new();
    let mut used_alias = false;
    for (i, expected) in topics.iter().enumerate() {
        let p = sub.expect_publish(true).await?;
        let topic = match p.props.int(0x23) {
            Some(alias) => {
                assert!((1..=2).contains(&alias), "alias {alias} outside 1..=2");
                used_alias = true;
                if p.topic.is_empty() {
                    aliases
                        .get(&alias)
                        .cloned()
                        .context("alias used before it was set")?
                } else {
                    aliases.insert(alias, p.topic.clone());
                    p.topic.clone()
                }
            }
            None => p.topic.clone(),
        };
        assert_eq!(
            (topic.as_str(), p.payload.as_ref()),
            (*expected, format!("{i}").as_bytes())
        );

        let q = plain.expect_publish(true).await?;
        assert!(
            !q.props.has(0x23),
            "alias sent to a client whose Topic Alias Maximum is 0"
        );
        assert_eq!(q.topic, *expected);
    }
    assert!(
        used_alias,
        "the server never used a topic alias towards a client that allows 2"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_maximum_packet_size_is_respected() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut connect = Connect::v5("small-buffer");
    connect.props = prop::u32(0x27, 200);
    let (mut sub, _) = RawClient::connect(&server, &device, &connect).await?;
    sub.subscribe(true, 1, &[], &[("mps/t", 0)]).await?;
    let mut publisher = RawClient::v5(&server, &device, "big-sender").await?;
    publisher
        .send(&publish(true, "mps/t", 0, false, 0, &[], &[b'b'; 500]))
        .await?;
    publisher
        .send(&publish(true, "mps/t", 0, false, 0, &[], b"small"))
        .await?;
    let p = sub.expect_publish(true).await?;
    assert_eq!(
        p.payload.as_ref(),
        b"small",
        "the oversize message must be dropped, not sent"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_are_forwarded() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut sub = RawClient::v5(&server, &device, "props-sub").await?;
    sub.subscribe(true, 1, &[], &[("props/t", 1)]).await?;
    let mut publisher = RawClient::v5(&server, &device, "props-pub").await?;
    let props = [
        prop::byte(0x01, 1),
        prop::u32(0x02, 120),
        prop::string(0x03, b"application/json"),
        prop::string(0x08, b"props/reply"),
        prop::string(0x09, &[0, 1, 2, 0xFF]),
        prop::pair("k", "v1"),
        prop::pair("z", "last"),
        prop::pair("k", "v2"),
    ]
    .concat();
    publisher
        .send(&publish(true, "props/t", 1, false, 5, &props, b"{}"))
        .await?;
    assert_eq!(
        publisher.expect(kind::PUBACK).await?.ack(kind::PUBACK)?,
        (5, 0)
    );
    let p = sub.expect_publish(true).await?;
    assert_eq!(p.props.int(0x01), Some(1));
    let expiry = p
        .props
        .int(0x02)
        .context("Message Expiry Interval dropped")?;
    assert!((118..=120).contains(&expiry), "remaining expiry {expiry}");
    assert_eq!(p.props.str(0x03).as_deref(), Some("application/json"));
    assert_eq!(p.props.str(0x08).as_deref(), Some("props/reply"));
    assert_eq!(p.props.bin(0x09).as_deref(), Some(&[0u8, 1, 2, 0xFF][..]));
    let expected =
        [("k", "v1"), ("z", "last"), ("k", "v2")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    assert_eq!(
        p.props.user(),
        expected,
        "user properties in order, duplicates kept"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_topic_with_wildcards_is_refused() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::v5(&server, &device, "rt-wild").await?;
    client
        .send(&publish(
            true,
            "rt/t",
            1,
            false,
            1,
            &prop::string(0x08, b"reply/+"),
            b"x",
        ))
        .await?;
    match client.recv_within(WAIT).await? {
        Incoming::Frame(f) if f.kind == kind::PUBACK => assert!(f.ack(kind::PUBACK)?.1 >= 0x80),
        Incoming::Frame(f) if f.kind == kind::DISCONNECT => {
            let code = f.disconnect_reason()?;
            assert!(
                code == 0x82 || code == 0x81 || code == 0x90,
                "reason {code:#x}"
            );
        }
        Incoming::Closed => {}
        other => bail!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_drops_stale_messages() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut publisher = RawClient::v5(&server, &device, "exp-pub").await?;
    // Retained with a 1 s lifetime.
    publisher
        .send(&publish(
            true,
            "exp/retained",
            1,
            true,
            1,
            &prop::u32(0x02, 1),
            b"short-lived",
        ))
        .await?;
    publisher.expect(kind::PUBACK).await?;

    // Queued for an offline persistent session with a 1 s lifetime, and one without expiry.
    let mut connect = Connect::v5("exp-sub");
    connect.props = prop::u32(0x11, 60);
    let (mut sub, _) = RawClient::connect(&server, &device, &connect).await?;
    sub.subscribe(true, 1, &[], &[("exp/queued", 1)]).await?;
    sub.send(&DISCONNECT).await?;
    sub.expect_closed(WAIT).await?;
    let_session_go_offline().await;
    publisher
        .send(&publish(
            true,
            "exp/queued",
            1,
            false,
            2,
            &prop::u32(0x02, 1),
            b"stale",
        ))
        .await?;
    publisher
        .send(&publish(
            true,
            "exp/queued",
            1,
            false,
            3,
            &prop::u32(0x02, 60),
            b"fresh",
        ))
        .await?;
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let mut connect = Connect::v5("exp-sub");
    connect.clean = false;
    connect.props = prop::u32(0x11, 60);
    let (mut sub, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert!(ack.session_present);
    let p = sub.expect_publish(true).await?;
    assert_eq!(
        p.payload.as_ref(),
        b"fresh",
        "the expired message must not be delivered"
    );
    let left = p
        .props
        .int(0x02)
        .context("Message Expiry Interval dropped")?;
    assert!(
        (55..=58).contains(&left),
        "expiry must count down while queued: {left}"
    );
    sub.send(&ack_pub(&p)).await?;
    sub.expect_silence().await?;

    let mut late = RawClient::v5(&server, &device, "exp-late").await?;
    late.subscribe(true, 1, &[], &[("exp/retained", 1)]).await?;
    late.expect_silence().await?;
    Ok(())
}

fn ack_pub(p: &Publish) -> Vec<u8> {
    ack(PUBACK, p.pkid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_are_returned() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut sub = RawClient::v5(&server, &device, "subid").await?;
    sub.subscribe(true, 1, &prop::varint(0x0B, 7), &[("sid/+", 1)])
        .await?;
    sub.subscribe(true, 2, &prop::varint(0x0B, 300), &[("sid/#", 1)])
        .await?;
    sub.subscribe(true, 3, &[], &[("other/t", 1)]).await?;
    let mut publisher = RawClient::v5(&server, &device, "subid-pub").await?;
    publisher
        .send(&publish(true, "sid/x", 1, false, 1, &[], b"both"))
        .await?;
    publisher
        .send(&publish(true, "other/t", 1, false, 2, &[], b"none"))
        .await?;

    let mut ids = Vec::new();
    let mut saw_none = false;
    while !saw_none {
        let p = sub.expect_publish(true).await?;
        sub.send(&ack_pub(&p)).await?;
        if p.payload.as_ref() == b"none" {
            assert!(
                p.props.ints(0x0B).is_empty(),
                "no identifier for a subscription made without one"
            );
            saw_none = true;
        } else {
            ids.extend(p.props.ints(0x0B));
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 300]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_and_retain_as_published() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut me = RawClient::v5(&server, &device, "nl-me").await?;
    me.subscribe(
        true,
        1,
        &[],
        &[
            ("nl/t", sub_opts(0, true, false, 0)),
            ("rap/t", sub_opts(0, false, true, 0)),
        ],
    )
    .await?;
    let mut other = RawClient::v5(&server, &device, "nl-other").await?;
    other
        .subscribe(true, 1, &[], &[("rap/t", sub_opts(0, false, false, 0))])
        .await?;

    me.send(&publish(true, "nl/t", 0, false, 0, &[], b"mine"))
        .await?;
    me.expect_silence().await?;
    other
        .send(&publish(true, "nl/t", 0, false, 0, &[], b"theirs"))
        .await?;
    let p = me.expect_publish(true).await?;
    assert_eq!(p.payload.as_ref(), b"theirs");

    // A live retained publish: Retain As Published keeps RETAIN=1, the default clears it.
    me.send(&publish(true, "rap/t", 0, true, 0, &[], b"kept"))
        .await?;
    let mine = me.expect_publish(true).await?;
    assert!(
        mine.retain,
        "Retain As Published subscriber must see RETAIN=1"
    );
    let theirs = other.expect_publish(true).await?;
    assert!(
        !theirs.retain,
        "a live message is delivered with RETAIN=0 without Retain As Published"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_options() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut publisher = RawClient::v5(&server, &device, "rh-pub").await?;
    publisher
        .send(&publish(true, "rh/t", 1, true, 1, &[], b"stored"))
        .await?;
    publisher.expect(kind::PUBACK).await?;

    let mut sub = RawClient::v5(&server, &device, "rh-sub").await?;
    // 0: sent at every subscribe.
    sub.subscribe(true, 1, &[], &[("rh/t", sub_opts(0, false, false, 0))])
        .await?;
    let p = sub.expect_publish(true).await?;
    assert!(p.retain && p.payload.as_ref() == b"stored");
    sub.subscribe(true, 2, &[], &[("rh/t", sub_opts(0, false, false, 0))])
        .await?;
    assert!(sub.expect_publish(true).await?.retain);
    // 1: only when the subscription is new.
    sub.subscribe(true, 3, &[], &[("rh/t", sub_opts(0, false, false, 1))])
        .await?;
    sub.expect_silence().await?;
    let mut fresh = RawClient::v5(&server, &device, "rh-fresh").await?;
    fresh
        .subscribe(true, 1, &[], &[("rh/t", sub_opts(0, false, false, 1))])
        .await?;
    assert!(fresh.expect_publish(true).await?.retain);
    // 2: never.
    let mut never = RawClient::v5(&server, &device, "rh-never").await?;
    never
        .subscribe(true, 1, &[], &[("rh/t", sub_opts(0, false, false, 2))])
        .await?;
    never.expect_silence().await?;
    // Retain Handling 3 is a protocol error.
    let mut bad = RawClient::v5(&server, &device, "rh-bad").await?;
    bad.send(&subscribe(
        true,
        1,
        &[],
        &[("rh/t", sub_opts(0, false, false, 3))],
    ))
    .await?;
    let reason = bad.expect_disconnect(WAIT).await?;
    assert!(
        matches!(reason, None | Some(0x81) | Some(0x82)),
        "got {reason:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_interval() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut watcher = RawClient::v5(&server, &device, "wd-watch").await?;
    watcher.subscribe(true, 1, &[], &[("wd/#", 0)]).await?;

    let connect = |id: &str, topic: &str| {
        let mut c = Connect::v5(id);
        c.props = prop::u32(0x11, 30);
        c.will = Some(Will {
            topic: topic.into(),
            payload: b"gone".to_vec(),
            qos: 0,
            retain: false,
            props: prop::u32(0x18, 2),
        });
        c
    };
    // Two clients with a 2 s will delay drop at the same time; one comes back after 0.5 s.
    let (late, _) = RawClient::connect(&server, &device, &connect("wd-late", "wd/late")).await?;
    let (back, _) = RawClient::connect(&server, &device, &connect("wd-back", "wd/back")).await?;
    let dropped_at = Instant::now();
    late.drop_connection();
    back.drop_connection();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = Connect::v5("wd-back");
    again.clean = false;
    again.props = prop::u32(0x11, 30);
    let (_back, ack) = RawClient::connect(&server, &device, &again).await?;
    assert!(ack.session_present);

    // Nothing before the delay, then only the will of the client that stayed away.
    let p = watcher.expect_publish(true).await?;
    let took = dropped_at.elapsed();
    assert_eq!(p.topic, "wd/late");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(4000),
        "will after {took:?}"
    );
    watcher.expect_silence().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_with_will_message_publishes_the_will() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut watcher = RawClient::v5(&server, &device, "dw-watch").await?;
    watcher.subscribe(true, 1, &[], &[("dw/#", 1)]).await?;
    let mut connect = Connect::v5("dw-client");
    connect.will = Some(Will {
        topic: b"dw/will".to_vec(),
        payload: b"bye".to_vec(),
        qos: 1,
        retain: false,
        props: prop::pair("why", "asked"),
    });
    let (mut client, _) = RawClient::connect(&server, &device, &connect).await?;
    client.send(&disconnect_v5(0x04, &[])).await?;
    let p = watcher.expect_publish(true).await?;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_ref(), p.qos),
        ("dw/will", &b"bye"[..], 1)
    );
    assert_eq!(p.props.user(), vec![("why".to_owned(), "asked".to_owned())]);

    // A normal DISCONNECT discards the will.
    let (mut client, _) = RawClient::connect(&server, &device, &connect).await?;
    client.send(&DISCONNECT).await?;
    watcher.send(&ack_pub(&p)).await?;
    watcher.expect_silence().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_and_resume() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut publisher = RawClient::v5(&server, &device, "sess-pub").await?;

    // Session Expiry above the cap is reduced and reported.
    let mut connect = Connect::v5("sess-long");
    connect.props = prop::u32(0x11, 1_000_000);
    let (_c, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert_eq!(
        ack.props.int(0x11),
        Some(3600),
        "capped Session Expiry Interval in CONNACK"
    );

    // A 1 s session is gone 2 s after the disconnect.
    let mut connect = Connect::v5("sess-short");
    connect.props = prop::u32(0x11, 1);
    let (mut c, _) = RawClient::connect(&server, &device, &connect).await?;
    c.subscribe(true, 1, &[], &[("sess/short", 1)]).await?;
    c.send(&DISCONNECT).await?;
    c.expect_closed(WAIT).await?;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    publisher
        .send(&publish(true, "sess/short", 1, false, 1, &[], b"late"))
        .await?;
    publisher.expect(kind::PUBACK).await?;
    connect.clean = false;
    let (mut c, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert!(!ack.session_present, "the session should have expired");
    c.expect_silence().await?;

    // DISCONNECT may lower the expiry to 0, ending the session at once.
    let mut connect = Connect::v5("sess-zero");
    connect.props = prop::u32(0x11, 60);
    let (mut c, _) = RawClient::connect(&server, &device, &connect).await?;
    c.subscribe(true, 1, &[], &[("sess/zero", 1)]).await?;
    c.send(&disconnect_v5(0, &prop::u32(0x11, 0))).await?;
    c.expect_closed(WAIT).await?;
    connect.clean = false;
    let (_c, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert!(!ack.session_present);

    // Raising it from 0 on DISCONNECT is a protocol error.
    let mut c = RawClient::v5(&server, &device, "sess-raise").await?;
    c.send(&disconnect_v5(0, &prop::u32(0x11, 60))).await?;
    let reason = c.expect_disconnect(WAIT).await?;
    assert!(matches!(reason, None | Some(0x82)), "got {reason:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_spreads_messages() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut a = RawClient::v5(&server, &device, "share-a").await?;
    let mut b = RawClient::v311(&server, &device, "share-b").await?;
    let mut all = RawClient::v5(&server, &device, "share-all").await?;
    assert_eq!(
        a.subscribe(true, 1, &[], &[("$share/g/sh/+", 0)]).await?,
        vec![0]
    );
    assert_eq!(
        b.subscribe(false, 1, &[], &[("$share/g/sh/+", 0)]).await?,
        vec![0]
    );
    all.subscribe(true, 1, &[], &[("sh/+", 0)]).await?;

    let mut publisher = RawClient::v5(&server, &device, "share-pub").await?;
    let n = 20;
    for i in 0..n {
        publisher
            .send(&publish(
                true,
                "sh/t",
                0,
                false,
                0,
                &[],
                format!("{i}").as_bytes(),
            ))
            .await?;
    }
    for _ in 0..n {
        all.expect_publish(true).await?;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got_a.len() + got_b.len() < n && Instant::now() < deadline {
        tokio::select! {
            r = a.recv_within(Duration::from_millis(200)) => if let Ok(Incoming::Frame(f)) = r {
                got_a.push(f.publish(true)?.payload);
            },
            r = b.recv_within(Duration::from_millis(200)) => if let Ok(Incoming::Frame(f)) = r {
                got_b.push(f.publish(false)?.payload);
            },
        }
    }
    assert_eq!(
        got_a.len() + got_b.len(),
        n,
        "each message goes to exactly one group member"
    );
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "a: {} b: {}",
        got_a.len(),
        got_b.len()
    );
    a.expect_silence().await?;
    b.expect_silence().await?;

    // No retained messages on a shared subscribe.
    publisher
        .send(&publish(true, "sh/r", 1, true, 1, &[], b"kept"))
        .await?;
    publisher.expect(kind::PUBACK).await?;
    let mut c = RawClient::v5(&server, &device, "share-c").await?;
    c.subscribe(true, 1, &[], &[("$share/h/sh/r", 0)]).await?;
    c.expect_silence().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_deletion() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut publisher = RawClient::v311(&server, &device, "ret-pub").await?;
    publisher
        .send(&publish(false, "ret/t", 1, true, 1, &[], b"v1"))
        .await?;
    publisher.expect(kind::PUBACK).await?;
    publisher
        .send(&publish(false, "ret/t", 1, true, 2, &[], b"v2"))
        .await?;
    publisher.expect(kind::PUBACK).await?;
    // Without RETAIN the stored message stays.
    publisher
        .send(&publish(false, "ret/t", 1, false, 3, &[], b"live"))
        .await?;
    publisher.expect(kind::PUBACK).await?;

    let mut sub = RawClient::v5(&server, &device, "ret-sub").await?;
    sub.subscribe(true, 1, &[], &[("ret/t", 1)]).await?;
    let p = sub.expect_publish(true).await?;
    assert!(p.retain);
    assert_eq!(
        p.payload.as_ref(),
        b"v2",
        "the newest retained message replaces the old one"
    );
    sub.send(&ack_pub(&p)).await?;

    // An empty retained payload deletes, and is still forwarded to current subscribers.
    publisher
        .send(&publish(false, "ret/t", 1, true, 4, &[], b""))
        .await?;
    publisher.expect(kind::PUBACK).await?;
    let p = sub.expect_publish(true).await?;
    assert!(p.payload.is_empty());
    sub.send(&ack_pub(&p)).await?;

    let mut late = RawClient::v311(&server, &device, "ret-late").await?;
    late.subscribe(false, 1, &[], &[("ret/t", 1)]).await?;
    late.expect_silence().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_puback_is_harmless() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut client = RawClient::v5(&server, &device, "pkid").await?;
    // A PUBACK for a packet the server never sent is ignored (or a protocol error), not a crash.
    client.send(&ack(PUBACK, 1234)).await?;
    match timeout(QUIET, client.recv()).await {
        Err(_) => client.ping().await?,
        Ok(Incoming::Frame(f)) => assert_eq!(f.disconnect_reason()?, 0x82),
        Ok(Incoming::Closed) => {}
    }
    RawClient::v5(&server, &device, "pkid-after")
        .await?
        .ping()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_server_shutting_down() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let addr = server.mqtts();
    let mut v5 = RawClient::v5(&server, &device, "shut-v5").await?;
    let mut v3 = RawClient::v311(&server, &device, "shut-v3").await?;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(
        v5.expect_disconnect(WAIT).await?,
        Some(0x8B),
        "Server shutting down"
    );
    assert!(v3.expect_closed(WAIT).await?.is_empty());
    let _data_dir = timeout(Duration::from_secs(10), stopping)
        .await
        .context("stop hung")??;
    // Nobody listens any more.
    let refused = timeout(WAIT, TcpStream::connect(addr)).await?;
    assert!(
        refused.is_err(),
        "the listener is still accepting after stop"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_means_the_maximum() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut connect = Connect::v5("ka-zero");
    connect.keep_alive = 0;
    let (_c, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert_eq!(
        ack.props.int(0x13),
        Some(1200),
        "Server Keep Alive for 0: {ack:?}"
    );
    let mut connect = Connect::v5("ka-huge");
    connect.keep_alive = 5000;
    let (_c, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert_eq!(
        ack.props.int(0x13),
        Some(1200),
        "Server Keep Alive above the maximum: {ack:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_do_not_resume_across_protocol_versions() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut v3 = Connect::v311("switcher");
    v3.clean = false;
    let (mut c, ack) = RawClient::connect(&server, &device, &v3).await?;
    assert!(!ack.session_present);
    c.subscribe(false, 1, &[], &[("switch/t", 1)]).await?;
    c.send(&DISCONNECT).await?;
    c.expect_closed(WAIT).await?;

    let mut v5 = Connect::v5("switcher");
    v5.clean = false;
    v5.props = prop::u32(0x11, 60);
    let (_c, ack) = RawClient::connect(&server, &device, &v5).await?;
    assert!(
        !ack.session_present,
        "a 3.1.1 session must not be resumed by a 5.0 client"
    );

    // The same version does resume.
    let mut v5b = Connect::v5("switcher-5");
    v5b.props = prop::u32(0x11, 60);
    let (mut c, _) = RawClient::connect(&server, &device, &v5b).await?;
    c.send(&DISCONNECT).await?;
    c.expect_closed(WAIT).await?;
    v5b.clean = false;
    let (_c, ack) = RawClient::connect(&server, &device, &v5b).await?;
    assert!(ack.session_present);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_qos_is_advertised_and_enforced() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.maximum_qos = 1).await?;
    let (mut c, ack) = RawClient::connect(&server, &device, &Connect::v5("qos-cap")).await?;
    assert_eq!(ack.props.int(0x24), Some(1), "Maximum QoS in CONNACK");
    // Subscriptions are granted at most QoS 1.
    assert_eq!(c.subscribe(true, 1, &[], &[("cap/t", 2)]).await?, vec![1]);
    // Publishing above it is refused.
    c.send(&publish(true, "cap/t", 2, false, 1, &[], b"x"))
        .await?;
    assert_eq!(
        c.expect_disconnect(WAIT).await?,
        Some(0x9B),
        "QoS not supported"
    );

    // A Will above the maximum QoS is refused at CONNECT.
    let mut connect = Connect::v5("qos-cap-will");
    connect.will = Some(Will {
        topic: b"cap/will".to_vec(),
        payload: b"x".to_vec(),
        qos: 2,
        retain: false,
        props: Vec::new(),
    });
    let mut c = RawClient::open(&server, &device).await?;
    c.send(&connect.bytes()).await?;
    assert_eq!(c.expect(kind::CONNACK).await?.connack(true)?.code, 0x9B);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_will_topic_is_refused_at_connect() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut connect = Connect::v5("bad-will");
    connect.will = Some(Will {
        topic: b"will/+".to_vec(),
        payload: b"x".to_vec(),
        qos: 0,
        retain: false,
        props: Vec::new(),
    });
    let mut c = RawClient::open(&server, &device).await?;
    c.send(&connect.bytes()).await?;
    assert_eq!(
        c.expect(kind::CONNACK).await?.connack(true)?.code,
        0x90,
        "Topic Name invalid"
    );
    c.expect_closed(WAIT).await?;

    let mut v3 = connect.clone();
    v3.level = 4;
    let mut c = RawClient::open(&server, &device).await?;
    c.send(&v3.bytes()).await?;
    let frames = c.expect_closed(WAIT).await?;
    for frame in frames {
        assert_ne!(
            frame.connack(false)?.code,
            0,
            "a 3.1.1 client with a bad will is refused"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_session_are_capped() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.max_subscriptions = 3).await?;
    let mut c = RawClient::v5(&server, &device, "greedy").await?;
    let codes = c
        .subscribe(true, 1, &[], &[("s/1", 0), ("s/2", 0), ("s/3", 0)])
        .await?;
    assert_eq!(codes, vec![0, 0, 0]);
    // Re-subscribing to an existing filter does not count twice.
    assert_eq!(c.subscribe(true, 2, &[], &[("s/1", 1)]).await?, vec![1]);
    let codes = c.subscribe(true, 3, &[], &[("s/4", 0)]).await?;
    assert_eq!(
        codes,
        vec![0x97],
        "Quota exceeded for the fourth subscription"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_after_connect_close_the_connection() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let two_aliases = [prop::u16(0x23, 1), prop::u16(0x23, 2)].concat();
    let mut no_filters = 1u16.to_be_bytes().to_vec();
    no_filters.push(0); // empty property list, then nothing
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "empty topic, no alias",
            publish(true, "", 0, false, 0, &[], b"x"),
        ),
        (
            "topic alias twice",
            publish(true, "t", 0, false, 0, &two_aliases, b"x"),
        ),
        (
            "session expiry in PUBLISH",
            publish(true, "t", 0, false, 0, &prop::u32(0x11, 5), b"x"),
        ),
        (
            "QoS 1 with packet id 0",
            publish(true, "t", 1, false, 0, &[], b"x"),
        ),
        ("SUBSCRIBE without filters", frame(0x82, &no_filters)),
        ("UNSUBSCRIBE with flags 0", {
            let mut p = unsubscribe(true, 1, &["t"]);
            p[0] = 0xA0;
            p
        }),
        ("AUTH packet", frame(0xF0, &[0x18, 0x00])),
        (
            "subscription identifier 0",
            subscribe(true, 1, &prop::varint(0x0B, 0), &[("t", 0)]),
        ),
        ("subscription QoS 3", subscribe(true, 1, &[], &[("t", 3)])),
        ("reserved packet type 0", frame(0x00, &[])),
    ];
    for (what, bytes) in cases {
        let mut c = RawClient::v5(&server, &device, "violator").await?;
        c.send(&bytes).await?;
        let reason = c
            .expect_disconnect(WAIT)
            .await
            .with_context(|| what.to_owned())?;
        assert!(
            matches!(reason, None | Some(0x81) | Some(0x82) | Some(0x8C)),
            "{what}: got {reason:?}"
        );
    }
    // 3.1.1: an empty topic is closed as well.
    let mut c = RawClient::v311(&server, &device, "violator-3").await?;
    c.send(&publish(false, "", 0, false, 0, &[], b"x")).await?;
    assert!(c.expect_closed(WAIT).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_flag_violations_are_refused() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut reserved = Connect::v5("reserved-bit").bytes();
    reserved[9] |= 0x01; // the reserved connect flag
    let mut will_qos_without_will = Connect::v311("wq").bytes();
    will_qos_without_will[9] |= 0x08;
    let mut password_without_user = Connect::v311("pw").bytes();
    password_without_user[9] |= 0x40;
    password_without_user.extend_from_slice(&[0x00, 0x02, b'p', b'w']);
    password_without_user[1] += 4;
    for (what, bytes) in [
        ("reserved flag", reserved),
        ("will QoS without will flag", will_qos_without_will),
        ("password without user name (3.1.1)", password_without_user),
    ] {
        let mut c = RawClient::open(&server, &device).await?;
        c.send(&bytes).await?;
        let frames = c
            .expect_closed(WAIT)
            .await
            .with_context(|| what.to_owned())?;
        for frame in frames {
            assert_ne!(frame.connack(false)?.code, 0, "{what} was accepted");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_qos1_is_redelivered_on_resume() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut connect = Connect::v311("forgetful");
    connect.clean = false;
    let (mut sub, _) = RawClient::connect(&server, &device, &connect).await?;
    sub.subscribe(false, 1, &[], &[("redo/t", 1)]).await?;
    let mut publisher = RawClient::v311(&server, &device, "redo-pub").await?;
    publisher
        .send(&publish(false, "redo/t", 1, false, 1, &[], b"important"))
        .await?;
    let first = sub.expect_publish(false).await?;
    assert!(!first.dup);
    // Gone without a PUBACK.
    sub.drop_connection();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut sub, connack) = RawClient::connect(&server, &device, &connect).await?;
    assert!(connack.session_present);
    let again = sub.expect_publish(false).await?;
    assert_eq!(
        (again.topic.as_str(), again.payload.as_ref(), again.qos),
        ("redo/t", &b"important"[..], 1)
    );
    sub.send(&ack(PUBACK, again.pkid)).await?;
    sub.expect_silence().await?;
    // Acknowledged now: not sent a third time.
    sub.send(&DISCONNECT).await?;
    sub.expect_closed(WAIT).await?;
    let (mut sub, _) = RawClient::connect(&server, &device, &connect).await?;
    sub.expect_silence().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_inflight_limit_for_311_clients() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.max_inflight_out = 3).await?;
    let mut sub = RawClient::v311(&server, &device, "lazy").await?;
    sub.subscribe(false, 1, &[], &[("inflight/t", 1)]).await?;
    let mut publisher = RawClient::v311(&server, &device, "eager").await?;
    for i in 0..5u16 {
        publisher
            .send(&publish(
                false,
                "inflight/t",
                1,
                false,
                i + 1,
                &[],
                format!("{i}").as_bytes(),
            ))
            .await?;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.expect_publish(false).await?);
    }
    sub.expect_silence().await?;
    sub.send(&ack(PUBACK, got[0].pkid)).await?;
    got.push(sub.expect_publish(false).await?);
    sub.expect_silence().await?;
    for p in &got[1..] {
        sub.send(&ack(PUBACK, p.pkid)).await?;
    }
    got.push(sub.expect_publish(false).await?);
    let payloads: Vec<&[u8]> = got.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(payloads, [b"0", b"1", b"2", b"3", b"4"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_arrive_complete_and_in_order() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut sub = RawClient::v311(&server, &device, "order-sub").await?;
    sub.subscribe(false, 1, &[], &[("order/t", 1)]).await?;
    let mut publisher = RawClient::v311(&server, &device, "order-pub").await?;
    let n = 500u16;
    let mut burst = Vec::new();
    for i in 1..=n {
        burst.extend(publish(
            false,
            "order/t",
            1,
            false,
            i,
            &[],
            format!("{i}").as_bytes(),
        ));
    }
    publisher.send(&burst).await?;
    for i in 1..=n {
        let p = sub
            .expect_publish(false)
            .await
            .with_context(|| format!("subscriber waiting for message {i}"))?;
        assert_eq!(
            p.payload.as_ref(),
            format!("{i}").as_bytes(),
            "message {i} out of order"
        );
        sub.send(&ack(PUBACK, p.pkid)).await?;
    }
    let mut acked = 0;
    while acked < n {
        let (_, code) = publisher
            .expect(kind::PUBACK)
            .await
            .with_context(|| format!("publisher waiting for PUBACK {acked}"))?
            .ack(kind::PUBACK)?;
        assert_eq!(code, 0);
        acked += 1;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_block_others() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    // Subscribes and then never reads.
    let mut stalled = RawClient::v311(&server, &device, "stalled").await?;
    stalled.subscribe(false, 1, &[], &[("flood/#", 0)]).await?;
    let mut healthy = RawClient::v311(&server, &device, "healthy").await?;
    healthy.subscribe(false, 1, &[], &[("flood/#", 0)]).await?;
    let mut publisher = RawClient::v311(&server, &device, "flooder").await?;
    let payload = vec![b'f'; 4096];
    let n = 2000;
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut count = 0;
        while count < n {
            match healthy.recv_within(WAIT).await {
                Ok(Incoming::Frame(f)) if f.kind == kind::PUBLISH => count += 1,
                Ok(Incoming::Frame(_)) => {}
                Ok(Incoming::Closed) | Err(_) => break,
            }
        }
        count
    });
    for _ in 0..n {
        publisher
            .send(&publish(false, "flood/x", 0, false, 0, &[], &payload))
            .await?;
    }
    publisher.ping().await?;
    let count = timeout(Duration::from_secs(10), reader).await??;
    assert_eq!(
        count, n,
        "the healthy subscriber lost messages because another one stalled"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    drop(stalled);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_keep_alive_timeout_and_takeover() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.keep_alive_min_secs = 1).await?;
    let mut watcher = RawClient::v5(&server, &device, "ka-watch").await?;
    watcher.subscribe(true, 1, &[], &[("lw/#", 0)]).await?;
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: b"dead".to_vec(),
        qos: 0,
        retain: false,
        props: Vec::new(),
    };

    let mut connect = Connect::v311("ka-will");
    connect.keep_alive = 1;
    connect.will = Some(will("lw/keepalive"));
    let (_silent, _) = RawClient::connect(&server, &device, &connect).await?;
    let p = watcher.expect_publish(true).await?;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_ref()),
        ("lw/keepalive", &b"dead"[..])
    );

    // MQTT 5: a taken-over connection's will (no delay) is published.
    let mut connect = Connect::v5("tk-will");
    connect.will = Some(will("lw/takeover"));
    let (mut old, _) = RawClient::connect(&server, &device, &connect).await?;
    let (_new, _) = RawClient::connect(&server, &device, &Connect::v5("tk-will")).await?;
    assert_eq!(old.expect_disconnect(WAIT).await?, Some(0x8E));
    let p = watcher.expect_publish(true).await?;
    assert_eq!(p.topic, "lw/takeover");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_burst_beyond_receive_maximum_never_hangs() -> TestResult {
    let (server, device) = server_and_device(|_| {}).await?;
    let mut sub = RawClient::v311(&server, &device, "burst-sub").await?;
    sub.subscribe(false, 1, &[], &[("burst/t", 1)]).await?;
    let mut publisher = RawClient::v5(&server, &device, "burst-pub").await?;
    // 300 QoS 1 publishes in one write: more than the Receive Maximum of 100 if the server
    // has not acknowledged the first ones yet.
    let n = 300u16;
    let mut burst = Vec::new();
    for i in 1..=n {
        burst.extend(publish(
            true,
            "burst/t",
            1,
            false,
            i,
            &[],
            format!("{i}").as_bytes(),
        ));
    }
    publisher.send(&burst).await?;
    // The publisher gets every PUBACK or a DISCONNECT 0x93; either way, promptly.
    let mut acked = 0u16;
    let mut disconnected = None;
    while acked < n && disconnected.is_none() {
        match publisher
            .recv_within(WAIT)
            .await
            .with_context(|| format!("after {acked} PUBACKs"))?
        {
            Incoming::Frame(f) if f.kind == kind::PUBACK => acked += 1,
            Incoming::Frame(f) if f.kind == kind::DISCONNECT => {
                disconnected = Some(f.disconnect_reason()?)
            }
            Incoming::Frame(f) => bail!("unexpected {f:?}"),
            Incoming::Closed => bail!("closed without DISCONNECT after {acked} PUBACKs"),
        }
    }
    if let Some(reason) = disconnected {
        assert_eq!(reason, 0x93, "Receive Maximum exceeded");
    }
    // The subscriber gets what was accepted, in order, and the server still answers.
    let mut received = 0u16;
    loop {
        match timeout(QUIET, sub.recv()).await {
            Err(_) => break,
            Ok(Incoming::Frame(f)) if f.kind == kind::PUBLISH => {
                let p = f.publish(false)?;
                received += 1;
                assert_eq!(p.payload.as_ref(), format!("{received}").as_bytes());
                sub.send(&ack(PUBACK, p.pkid)).await?;
            }
            Ok(other) => bail!("unexpected {other:?}"),
        }
    }
    assert!(
        received >= acked,
        "{acked} acknowledged but only {received} delivered"
    );
    sub.ping().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_keeps_the_newest_messages() -> TestResult {
    let (server, device) = server_and_device(|c| c.limits.max_queued_messages = 3).await?;
    let mut connect = Connect::v5("offline-q");
    connect.props = prop::u32(0x11, 60);
    let (mut c, _) = RawClient::connect(&server, &device, &connect).await?;
    c.subscribe(true, 1, &[], &[("q/t", 1)]).await?;
    c.send(&DISCONNECT).await?;
    c.expect_closed(WAIT).await?;
    let_session_go_offline().await;
    let mut publisher = RawClient::v5(&server, &device, "offline-q-pub").await?;
    for i in 0..5u16 {
        publisher
            .send(&publish(
                true,
                "q/t",
                1,
                false,
                i + 1,
                &[],
                format!("m{i}").as_bytes(),
            ))
            .await?;
        publisher.expect(kind::PUBACK).await?;
    }
    connect.clean = false;
    let (mut c, ack) = RawClient::connect(&server, &device, &connect).await?;
    assert!(ack.session_present);
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = c.expect_publish(true).await?;
        c.send(&ack_pub(&p)).await?;
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    c.expect_silence().await?;
    assert_eq!(
        got,
        ["m2", "m3", "m4"],
        "the oldest queued messages are dropped first"
    );
    Ok(())
}
