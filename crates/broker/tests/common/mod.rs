//! A raw MQTT client over `tokio::io::duplex` for connection-level tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thingd_broker::{AllowAll, Authorizer, Broker, BrokerConfig, ConnectionInfo};
use thingd_mqtt::{
    ByteStr, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, ProtocolVersion, PubResp,
    PubRespKind, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
};
use thingd_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

pub const V3: ProtocolVersion = ProtocolVersion::V311;
pub const V5: ProtocolVersion = ProtocolVersion::V5;

pub struct Harness {
    pub broker: Broker,
    pub store: Store,
    pub path: PathBuf,
    pub config: BrokerConfig,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_config(BrokerConfig::default())
    }

    pub fn with_config(config: BrokerConfig) -> Harness {
        Harness::with_auth(config, Arc::new(AllowAll))
    }

    pub fn with_auth(config: BrokerConfig, auth: Arc<dyn Authorizer>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("thingd.db");
        let store = Store::open(&path).expect("store");
        let broker = Broker::new(config.clone(), store.clone(), auth).expect("broker");
        Harness {
            broker,
            store,
            path,
            config,
            _dir: dir,
        }
    }

    /// Replaces the broker with a new one on the same store (a restart).
    pub async fn restart(&mut self) {
        self.broker.shutdown().await;
        let broker = Broker::new(self.config.clone(), self.store.clone(), Arc::new(AllowAll))
            .expect("broker");
        self.broker = broker;
    }

    /// A connected stream, not yet CONNECTed.
    pub fn stream(&self, principal: Option<&str>) -> Client {
        serve_pipe(&self.broker, 1 << 20, principal)
    }

    /// Connects with clean start and returns the client and its CONNACK.
    pub async fn connect(&self, version: ProtocolVersion, client_id: &str) -> (Client, ConnAck) {
        let mut c = self.stream(None);
        let ack = c.connect(connect_packet(version, client_id, true)).await;
        (c, ack)
    }

    /// Connects and asserts success.
    pub async fn client(&self, version: ProtocolVersion, client_id: &str) -> Client {
        let (c, ack) = self.connect(version, client_id).await;
        assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
        c
    }

    /// A persistent session (3.1.1 cleanSession=0 / v5 SEI 600).
    pub async fn persistent(&self, version: ProtocolVersion, client_id: &str) -> (Client, ConnAck) {
        let mut c = self.stream(None);
        let mut p = connect_packet(version, client_id, false);
        p.properties.session_expiry_interval = Some(600);
        let ack = c.connect(p).await;
        assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
        (c, ack)
    }
}

/// Moves the paused clock on by `by`, firing the broker's timers that fall due, and goes
/// back to real time.
pub async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// A client on a pipe of `pipe_bytes` each way to a connection `broker` serves, not yet
/// CONNECTed (a small pipe stands for a client that stops reading).
pub fn serve_pipe(broker: &Broker, pipe_bytes: usize, principal: Option<&str>) -> Client {
    let (a, b) = tokio::io::duplex(pipe_bytes);
    let info = ConnectionInfo {
        remote_addr: SocketAddr::from(([127, 0, 0, 1], 4000)),
        principal: principal.map(str::to_owned),
        listener: "test",
    };
    let broker = broker.clone();
    tokio::spawn(async move { broker.serve_connection(b, info).await });
    Client::from_stream(a)
}

pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: ByteStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

pub fn will(topic: &str, payload: &'static [u8], qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: ByteStr::from(topic),
        payload: Bytes::from_static(payload),
        qos,
        retain,
        properties: Properties::default(),
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool, pid: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: ByteStr::from(topic),
        packet_id: pid,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

pub fn ack(kind: PubRespKind, pid: u16) -> Packet {
    Packet::PubResp(PubResp {
        kind,
        packet_id: pid,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    })
}

pub struct Client {
    pub stream: DuplexStream,
    rbuf: BytesMut,
    pub version: ProtocolVersion,
    next_pid: u16,
}

const WAIT: Duration = Duration::from_secs(5);

impl Client {
    pub fn from_stream(stream: DuplexStream) -> Client {
        Client {
            stream,
            rbuf: BytesMut::new(),
            version: V5,
            next_pid: 1,
        }
    }

    pub fn pid(&mut self) -> u16 {
        let p = self.next_pid;
        self.next_pid += 1;
        p
    }

    pub async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        thingd_mqtt::encode(&p, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` when the server closed the connection.
    pub async fn try_recv(&mut self, wait: Duration) -> Result<Option<Packet>, ()> {
        let fut = async {
            loop {
                match thingd_mqtt::decode(&mut self.rbuf, self.version, usize::MAX) {
                    Ok(Some(p)) => return Some(p),
                    Ok(None) => {}
                    Err(e) => panic!("client decode error: {e}"),
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(wait, fut).await.map_err(|_| ())
    }

    pub async fn recv(&mut self) -> Packet {
        match self.try_recv(WAIT).await {
            Ok(Some(p)) => p,
            Ok(None) => panic!("connection closed, expected a packet"),
            Err(()) => panic!("timed out waiting for a packet"),
        }
    }

    /// Asserts nothing arrives for a short while.
    pub async fn expect_nothing(&mut self) {
        match self.try_recv(Duration::from_millis(200)).await {
            Err(()) => {}
            Ok(p) => panic!("expected nothing, got {p:?}"),
        }
    }

    /// Asserts the server closes the connection (after optionally sending packets, returned).
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        loop {
            match self.try_recv(WAIT).await {
                Ok(Some(p)) => got.push(p),
                Ok(None) => return got,
                Err(()) => panic!("connection not closed; got {got:?}"),
            }
        }
    }

    /// Expects a server DISCONNECT with `reason` and then the close.
    pub async fn expect_disconnect(&mut self, reason: ReasonCode) {
        let got = self.expect_closed().await;
        match got.last() {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason, reason, "{got:?}"),
            other => panic!("expected DISCONNECT {reason:?}, got {other:?}"),
        }
    }

    pub async fn connect(&mut self, p: Connect) -> ConnAck {
        self.version = p.protocol;
        self.send(Packet::Connect(Box::new(p))).await;
        match self.recv().await {
            Packet::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn subscribe_with(
        &mut self,
        filter: &str,
        opts: SubscriptionOptions,
        props: Properties,
    ) -> SubAck {
        let pid = self.pid();
        self.send(Packet::Subscribe(Subscribe {
            packet_id: pid,
            filters: vec![(ByteStr::from(filter), opts)],
            properties: props,
        }))
        .await;
        self.expect_suback().await
    }

    pub async fn expect_suback(&mut self) -> SubAck {
        match self.recv().await {
            Packet::SubAck(a) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        let opts = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.subscribe_with(filter, opts, Properties::default())
            .await
    }

    /// Publishes and completes the QoS flow from the publisher side.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let pid = (qos != QoS::AtMostOnce).then(|| self.pid());
        self.send(publish(topic, payload, qos, retain, pid)).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let r = self.expect_resp(PubRespKind::PubAck).await;
                assert_eq!(r.reason, ReasonCode::Success);
            }
            QoS::ExactlyOnce => {
                let r = self.expect_resp(PubRespKind::PubRec).await;
                assert_eq!(r.reason, ReasonCode::Success);
                self.send(ack(PubRespKind::PubRel, r.packet_id)).await;
                self.expect_resp(PubRespKind::PubComp).await;
            }
        }
    }

    pub async fn expect_resp(&mut self, kind: PubRespKind) -> PubResp {
        match self.recv().await {
            Packet::PubResp(r) if r.kind == kind => r,
            other => panic!("expected {kind:?}, got {other:?}"),
        }
    }

    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Receives a PUBLISH and acknowledges it fully.
    pub async fn receive(&mut self) -> Publish {
        let p = self.expect_publish().await;
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.send(ack(PubRespKind::PubAck, p.packet_id.unwrap_or(0)))
                    .await
            }
            QoS::ExactlyOnce => {
                let id = p.packet_id.unwrap_or(0);
                self.send(ack(PubRespKind::PubRec, id)).await;
                self.expect_resp(PubRespKind::PubRel).await;
                self.send(ack(PubRespKind::PubComp, id)).await;
            }
        }
        p
    }

    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))
        .await;
        let _ = self.try_recv(WAIT).await;
    }

    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        assert_eq!(self.recv().await, Packet::PingResp);
    }
}
