//! In-process clients for services (device shadows, rules, the console).
//!
//! Implementation choice: an `InternalClient` is a real MQTT 5 connection over an in-memory
//! `tokio::io::duplex` pipe, served by the same `serve_connection` code as network clients
//! (minus the authorizer and keep-alive). A small driver task speaks the client side with
//! the codec. This costs an encode/decode per message but gives internal clients exactly
//! the semantics of external ones (QoS, retained, expiry, ordering).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use thingd_mqtt::{
    ByteStr, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResp, PubRespKind,
    Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use crate::{Broker, ConnectionInfo};

/// A message received by an internal client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// The RETAIN flag (set for retained messages sent on subscribe).
    pub retain: bool,
    /// MQTT 5 properties forwarded from the publisher (user properties, content type...).
    pub properties: Properties,
}

/// Why an internal client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The connection is gone (broker shut down, or taken over by the same client id).
    #[error("internal client connection closed")]
    Closed,
    /// The broker answered with a failure reason code.
    #[error("refused by the broker: {0:?}")]
    Refused(ReasonCode),
}

enum Cmd {
    Publish(Box<Publish>, oneshot::Sender<Result<(), ClientError>>),
    Subscribe(String, QoS, oneshot::Sender<Result<QoS, ClientError>>),
    Unsubscribe(String, oneshot::Sender<Result<(), ClientError>>),
}

enum Waiter {
    Pub(oneshot::Sender<Result<(), ClientError>>),
    Sub(oneshot::Sender<Result<QoS, ClientError>>),
    Unsub(oneshot::Sender<Result<(), ClientError>>),
}

/// An in-process MQTT client (see the module docs). Dropping it disconnects normally.
pub struct InternalClient {
    client_id: String,
    cmd: mpsc::Sender<Cmd>,
    rx: mpsc::Receiver<Message>,
}

impl InternalClient {
    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Publishes; for QoS 1/2 returns once the broker has acknowledged (the message is
    /// durable where it has to be).
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), ClientError> {
        self.publish_with(topic, payload, qos, retain, Properties::default())
            .await
    }

    /// Publishes with MQTT 5 properties (user properties, content type, response topic...).
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<(), ClientError> {
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: ByteStr::from(topic),
            packet_id: None,
            properties,
            payload: payload.into(),
        };
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Publish(Box::new(p), tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Subscribes; returns the granted QoS.
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<QoS, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Subscribe(filter.to_owned(), qos, tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Unsubscribes.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Unsubscribe(filter.to_owned(), tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// The next message if one is already waiting (`Ok(None)`: none yet); `Err` once the
    /// connection is gone and every message has been taken.
    pub fn try_recv(&mut self) -> Result<Option<Message>, ClientError> {
        match self.rx.try_recv() {
            Ok(message) => Ok(Some(message)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(ClientError::Closed),
        }
    }

    /// The next message for this client's subscriptions; `None` once the connection is gone.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

pub(crate) fn start(broker: Broker, client_id: &str) -> InternalClient {
    let (client_side, server_side) = tokio::io::duplex(256 * 1024);
    let info = ConnectionInfo {
        remote_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        principal: Some("internal".to_owned()),
        listener: "internal",
    };
    tokio::spawn(broker.serve_internal(server_side, info));
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (msg_tx, msg_rx) = mpsc::channel(1024);
    tokio::spawn(drive(client_side, client_id.to_owned(), cmd_rx, msg_tx));
    InternalClient {
        client_id: client_id.to_owned(),
        cmd: cmd_tx,
        rx: msg_rx,
    }
}

struct Driver {
    stream: DuplexStream,
    wbuf: BytesMut,
    waiters: HashMap<u16, Waiter>,
    incoming_qos2: HashSet<u16>,
    next_pid: u16,
}

impl Driver {
    fn put(&mut self, p: &Packet) {
        let _ = thingd_mqtt::encode(p, ProtocolVersion::V5, &mut self.wbuf);
    }

    async fn flush(&mut self) -> bool {
        if self.wbuf.is_empty() {
            return true;
        }
        let ok = self.stream.write_all(&self.wbuf).await.is_ok();
        self.wbuf.clear();
        ok
    }

    fn pid(&mut self) -> u16 {
        loop {
            let id = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            if !self.waiters.contains_key(&id) {
                return id;
            }
        }
    }

    fn ack(&mut self, kind: PubRespKind, packet_id: u16) {
        self.put(&Packet::PubResp(PubResp {
            kind,
            packet_id,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }));
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Publish(mut p, done) => {
                if p.qos == QoS::AtMostOnce {
                    self.put(&Packet::Publish(*p));
                    let _ = done.send(Ok(()));
                } else {
                    let id = self.pid();
                    p.packet_id = Some(id);
                    self.put(&Packet::Publish(*p));
                    self.waiters.insert(id, Waiter::Pub(done));
                }
            }
            Cmd::Subscribe(filter, qos, done) => {
                let id = self.pid();
                self.put(&Packet::Subscribe(Subscribe {
                    packet_id: id,
                    filters: vec![(
                        ByteStr::from(filter),
                        SubscriptionOptions {
                            qos,
                            ..SubscriptionOptions::default()
                        },
                    )],
                    properties: Properties::default(),
                }));
                self.waiters.insert(id, Waiter::Sub(done));
            }
            Cmd::Unsubscribe(filter, done) => {
                let id = self.pid();
                self.put(&Packet::Unsubscribe(Unsubscribe {
                    packet_id: id,
                    filters: vec![ByteStr::from(filter)],
                    properties: Properties::default(),
                }));
                self.waiters.insert(id, Waiter::Unsub(done));
            }
        }
    }

    /// Handles one packet from the broker; false ends the driver.
    async fn packet(&mut self, p: Packet, msgs: &mpsc::Sender<Message>) -> bool {
        match p {
            Packet::Publish(p) => {
                let pid = p.packet_id.unwrap_or(0);
                let fresh = p.qos != QoS::ExactlyOnce || self.incoming_qos2.insert(pid);
                if fresh {
                    let mut properties = p.properties;
                    properties.topic_alias = None;
                    let m = Message {
                        topic: p.topic.to_string(),
                        payload: p.payload,
                        qos: p.qos,
                        retain: p.retain,
                        properties,
                    };
                    // Back-pressure: a slow consumer makes the broker queue or drop.
                    if msgs.send(m).await.is_err() {
                        return false;
                    }
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.ack(PubRespKind::PubAck, pid),
                    QoS::ExactlyOnce => self.ack(PubRespKind::PubRec, pid),
                }
            }
            Packet::PubResp(r) => match r.kind {
                PubRespKind::PubRel => {
                    self.incoming_qos2.remove(&r.packet_id);
                    self.ack(PubRespKind::PubComp, r.packet_id);
                }
                PubRespKind::PubRec if !r.reason.is_error() => {
                    self.put(&crate::session::pubrel(r.packet_id));
                }
                _ => {
                    if let Some(Waiter::Pub(done)) = self.waiters.remove(&r.packet_id) {
                        let res = if r.reason.is_error() {
                            Err(ClientError::Refused(r.reason))
                        } else {
                            Ok(())
                        };
                        let _ = done.send(res);
                    }
                }
            },
            Packet::SubAck(a) => {
                if let Some(Waiter::Sub(done)) = self.waiters.remove(&a.packet_id) {
                    let res = match a.reasons.first() {
                        Some(ReasonCode::Success) => Ok(QoS::AtMostOnce),
                        Some(ReasonCode::GrantedQoS1) => Ok(QoS::AtLeastOnce),
                        Some(ReasonCode::GrantedQoS2) => Ok(QoS::ExactlyOnce),
                        Some(rc) => Err(ClientError::Refused(*rc)),
                        None => Err(ClientError::Refused(ReasonCode::UnspecifiedError)),
                    };
                    let _ = done.send(res);
                }
            }
            Packet::UnsubAck(a) => {
                if let Some(Waiter::Unsub(done)) = self.waiters.remove(&a.packet_id) {
                    let _ = done.send(Ok(()));
                }
            }
            Packet::Disconnect(_) => return false,
            _ => {}
        }
        true
    }
}

async fn drive(
    stream: DuplexStream,
    client_id: String,
    mut cmds: mpsc::Receiver<Cmd>,
    msgs: mpsc::Sender<Message>,
) {
    let mut d = Driver {
        stream,
        wbuf: BytesMut::new(),
        waiters: HashMap::new(),
        incoming_qos2: HashSet::new(),
        next_pid: 1,
    };
    d.put(&Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: ByteStr::from(client_id.as_str()),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    })));
    if !d.flush().await {
        return;
    }
    let mut rbuf = BytesMut::with_capacity(8192);
    let mut connected = false;
    loop {
        tokio::select! {
            cmd = cmds.recv(), if connected => match cmd {
                Some(c) => d.command(c),
                None => {
                    d.put(&Packet::Disconnect(Disconnect {
                        reason: ReasonCode::Success,
                        properties: Properties::default(),
                    }));
                    let _ = d.flush().await;
                    return;
                }
            },
            r = d.stream.read_buf(&mut rbuf) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return;
                }
                loop {
                    match thingd_mqtt::decode(&mut rbuf, ProtocolVersion::V5, usize::MAX) {
                        Ok(Some(Packet::ConnAck(a))) => {
                            if a.reason.is_error() {
                                tracing::warn!(%client_id, reason = ?a.reason, "internal client refused");
                                return;
                            }
                            connected = true;
                        }
                        Ok(Some(p)) => {
                            if !d.packet(p, &msgs).await {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(%client_id, error = %e, "internal client decode error");
                            return;
                        }
                    }
                }
            }
        }
        if !d.flush().await {
            return;
        }
    }
}
