//! The CONNECT exchange: read the first packet, validate it, authorize, attach the session
//! and send CONNACK (or refuse).

use std::sync::Arc;

use bytes::BytesMut;
use thingd_mqtt::{
    ByteStr, ConnAck, Connect, DecodeError, Packet, Properties, ProtocolVersion, QoS, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::alias::{InAliases, OutAliases};
use crate::broker::Shared;
use crate::connection::Conn;
use crate::message::{AppMsg, forwardable};
use crate::session::{Link, Will};
use crate::{ConnectionInfo, ConnectionPolicy, metrics, reserved};

/// Why reading a packet stopped.
pub(crate) enum ReadError {
    Eof,
    Io,
    Decode(DecodeError),
}

/// Reads one whole packet.
pub(crate) async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    version: ProtocolVersion,
    max: usize,
) -> Result<Packet, ReadError> {
    loop {
        match thingd_mqtt::decode(rbuf, version, max) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(ReadError::Decode(e)),
        }
        match stream.read_buf(rbuf).await {
            Ok(0) => return Err(ReadError::Eof),
            Ok(n) => metrics::bytes_in(n),
            Err(_) => return Err(ReadError::Io),
        }
    }
}

/// Writes one packet and flushes (best effort; errors just end the connection later).
pub(crate) async fn send_packet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    p: &Packet,
    version: ProtocolVersion,
) {
    if let Some(frame) = crate::message::encode_frame(p, version) {
        metrics::bytes_out(frame.len());
        let _ = stream.write_all(&frame).await;
        let _ = stream.flush().await;
    }
}

/// The channels and state of an accepted connection.
pub(crate) struct Accepted {
    pub(crate) conn: Conn,
    pub(crate) rx: crate::outbound::OutboundRx,
}

struct Refusal {
    reason: ReasonCode,
    /// Send a CONNACK (false: just close).
    connack: bool,
    text: &'static str,
}

fn refuse(reason: ReasonCode, text: &'static str) -> Refusal {
    Refusal {
        reason,
        connack: true,
        text,
    }
}

fn close(text: &'static str) -> Refusal {
    Refusal {
        reason: ReasonCode::ProtocolError,
        connack: false,
        text,
    }
}

/// What only the CONNECT exchange needs of a new connection. It travels boxed into the
/// exchange, which consumes it: inline, it would stay in the connection's future (and so in
/// every idle connection's task) for the connection's whole life.
pub(crate) struct Opening {
    pub(crate) info: ConnectionInfo,
    /// In-process clients: the policy they run under (they raise no events).
    pub(crate) internal: Option<Arc<dyn ConnectionPolicy>>,
}

/// Runs the CONNECT exchange. `None`: the connection was refused, and its stream has been
/// shut down (within a second) and must be dropped.
pub(crate) async fn handshake<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    rbuf: &mut BytesMut,
    opening: Box<Opening>,
) -> Option<Accepted>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Opening { info, internal } = *opening;
    let accepted = exchange_connect(shared, stream, rbuf, &info, internal).await;
    if accepted.is_none() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.shutdown()).await;
    }
    accepted
}

/// Reads the CONNECT and answers it; `None` when refused.
async fn exchange_connect<S>(
    shared: &Arc<Shared>,
    stream: &mut S,
    rbuf: &mut BytesMut,
    info: &ConnectionInfo,
    internal: Option<Arc<dyn ConnectionPolicy>>,
) -> Option<Accepted>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &shared.config;
    let first = tokio::time::timeout(
        cfg.connect_timeout,
        read_packet(stream, rbuf, ProtocolVersion::V5, cfg.max_packet_size),
    )
    .await;
    let connect = match first {
        Err(_) => {
            tracing::debug!(remote = %info.remote_addr, "no CONNECT within the connect timeout");
            return None;
        }
        Ok(Err(ReadError::Decode(DecodeError::UnsupportedProtocol { level }))) => {
            tracing::debug!(remote = %info.remote_addr, level, "unsupported protocol level");
            let version = if level > 5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            };
            let ack = connack(
                false,
                ReasonCode::UnsupportedProtocolVersion,
                Properties::default(),
            );
            send_packet(stream, &ack, version).await;
            return None;
        }
        Ok(Err(ReadError::Decode(e))) => {
            tracing::debug!(remote = %info.remote_addr, error = %e, "bad first packet");
            return None;
        }
        Ok(Err(_)) => return None,
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(other)) => {
            tracing::debug!(remote = %info.remote_addr, packet = ?packet_name(&other), "first packet is not CONNECT");
            return None;
        }
    };
    let version = connect.protocol;
    let problem_info = connect.properties.request_problem_information != Some(0);
    match accept(shared, connect, info, internal).await {
        Ok(acc) => Some(acc),
        Err(r) => {
            tracing::debug!(remote = %info.remote_addr, reason = r.text, code = ?r.reason, "CONNECT refused");
            if r.connack {
                let mut props = Properties::default();
                if version == ProtocolVersion::V5 && problem_info {
                    props.reason_string = Some(ByteStr::from(r.text));
                }
                send_packet(stream, &connack(false, r.reason, props), version).await;
            }
            None
        }
    }
}

fn connack(session_present: bool, reason: ReasonCode, properties: Properties) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        reason,
        properties,
    })
}

pub(crate) fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubResp(_) => "PUBACK/PUBREC/PUBREL/PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}

/// A random client id for clients that sent none (no leading `$`).
fn assigned_client_id() -> String {
    format!(
        "thingd-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

async fn accept(
    shared: &Arc<Shared>,
    c: Box<Connect>,
    info: &ConnectionInfo,
    internal: Option<Arc<dyn ConnectionPolicy>>,
) -> Result<Accepted, Refusal> {
    let cfg = &shared.config;
    let v5 = c.protocol == ProtocolVersion::V5;
    let problem_info = c.properties.request_problem_information != Some(0);

    // Client identifier.
    let mut assigned = None;
    let client_id: Arc<str> = if c.client_id.is_empty() {
        if !v5 && !c.clean_start {
            return Err(refuse(
                ReasonCode::ClientIdentifierNotValid,
                "empty client id needs a clean session",
            ));
        }
        let id = assigned_client_id();
        assigned = Some(id.clone());
        Arc::from(id)
    } else {
        Arc::from(c.client_id.as_str())
    };
    if client_id.len() > cfg.max_client_id_len {
        return Err(refuse(
            ReasonCode::ClientIdentifierNotValid,
            "client id too long",
        ));
    }
    // `$` client ids are reserved for the server's own in-process clients, so no device can
    // take one of them over.
    if assigned.is_none() && client_id.starts_with('$') && info.listener != "internal" {
        return Err(refuse(
            ReasonCode::ClientIdentifierNotValid,
            "client ids starting with $ are reserved",
        ));
    }
    if c.properties.authentication_method.is_some() {
        return Err(refuse(
            ReasonCode::BadAuthenticationMethod,
            "enhanced authentication is not supported",
        ));
    }

    // Will.
    if let Some(w) = &c.will {
        if reserved::check_publish_topic(&w.topic, &cfg.topic_limits()).is_err() {
            return Err(if v5 {
                refuse(ReasonCode::TopicNameInvalid, "invalid will topic")
            } else {
                close("invalid will topic")
            });
        }
        if w.qos > cfg.max_qos() {
            return Err(if v5 {
                refuse(ReasonCode::QoSNotSupported, "will QoS not supported")
            } else {
                close("will QoS not supported")
            });
        }
    }

    // Authorization.
    let policy = match internal {
        Some(p) => p,
        None => match shared.authorizer.connect(
            info,
            &crate::ConnectRequest {
                client_id: &client_id,
                persistent_session: if v5 {
                    c.properties.session_expiry_interval.unwrap_or(0) > 0
                } else {
                    !c.clean_start
                },
                last_will: c.will.is_some(),
            },
        ) {
            Ok(p) => p,
            Err(code) => {
                return Err(if v5 {
                    refuse(code, "not authorized")
                } else if code == ReasonCode::NotAuthorized {
                    close("not authorized")
                } else {
                    refuse(code, "connection refused")
                });
            }
        },
    };
    if shared.shutdown.is_cancelled() {
        return Err(refuse(
            ReasonCode::ServerShuttingDown,
            "server shutting down",
        ));
    }

    // Keep-alive and session expiry.
    let internal_conn = info.listener == "internal";
    let keep_alive = cfg.effective_keep_alive(c.keep_alive);
    let requested_expiry = if v5 {
        c.properties.session_expiry_interval.unwrap_or(0)
    } else if c.clean_start {
        0
    } else {
        // 3.1.1 has no expiry field: a persistent session lives as long as the server
        // allows (AWS: the account limit, 1 hour by default).
        cfg.max_session_expiry
    };
    let expiry = cfg.effective_session_expiry(requested_expiry);

    // Connection state and session. The principal is shared by the session's link, the
    // connection and its events.
    let principal: Option<Arc<str>> = info.principal.as_deref().map(Arc::from);
    let conn_id = shared.next_conn_id();
    let (tx, rx) = crate::outbound::outbound(cfg.outbound_queue);
    let client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX).max(1);
    let link = Link {
        conn_id,
        version: c.protocol,
        tx,
        policy: policy.clone(),
        principal: principal.clone(),
        max_packet: c
            .properties
            .maximum_packet_size
            .map(|m| m as usize)
            .unwrap_or(usize::MAX),
        inflight_limit: usize::from(client_receive_max.min(cfg.max_inflight_out.max(1))),
        aliases: OutAliases::new(if v5 {
            c.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        }),
        receive_token: crate::session::ReceiveToken::new(policy.as_ref()),
    };
    let will = c.will.as_ref().map(|w| {
        Box::new(Will {
            msg: AppMsg {
                topic: w.topic.clone(),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                props: forwardable(&w.properties),
                expires_at: None,
                origin: Some(client_id.clone()),
                frames: Default::default(),
            },
            expiry_interval: w.properties.message_expiry_interval,
            delay: w.properties.will_delay_interval.unwrap_or(0),
            policy: policy.clone(),
        })
    });
    let attached = shared.attach(&client_id, c.protocol, c.clean_start, expiry, link, will);
    // The wills of a replaced connection or an ended session go out before the write that
    // forgets them: a crash in between publishes a will again after the restart, rather
    // than never.
    shared.publish_wills(attached.wills);
    if !attached.store_ops.is_empty()
        && let Err(e) = shared.store.write(attached.store_ops).await
    {
        tracing::error!(client_id = %client_id, error = %e, "cannot persist session");
    }

    // CONNACK.
    let mut props = Properties::default();
    if v5 {
        if expiry != requested_expiry {
            props.session_expiry_interval = Some(expiry);
        }
        props.assigned_client_identifier = assigned.map(ByteStr::from);
        if keep_alive != c.keep_alive && !internal_conn {
            props.server_keep_alive = Some(keep_alive);
        }
        props.receive_maximum = Some(cfg.receive_maximum.max(1));
        if cfg.topic_alias_maximum > 0 {
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        }
        if cfg.max_qos() < QoS::ExactlyOnce {
            props.maximum_qos = Some(cfg.max_qos() as u8);
        }
        props.retain_available = Some(1);
        props.maximum_packet_size = Some(cfg.max_packet_size.min(u32::MAX as usize) as u32);
        props.wildcard_subscription_available = Some(1);
        props.subscription_identifier_available = Some(1);
        props.shared_subscription_available = Some(1);
    }
    let mut wbuf = BytesMut::new();
    if let Some(f) = crate::message::encode_frame(
        &connack(attached.session_present, ReasonCode::Success, props),
        c.protocol,
    ) {
        wbuf.extend_from_slice(&f);
    }
    for f in &attached.redelivery {
        wbuf.extend_from_slice(f);
    }
    // CONNACK and the redeliveries are written by the connection loop.
    metrics::connection_opened();
    tracing::info!(
        client_id = %client_id,
        remote = %info.remote_addr,
        listener = info.listener,
        version = c.protocol.level(),
        clean_start = c.clean_start,
        session_present = attached.session_present,
        keep_alive,
        "client connected"
    );
    if !internal_conn {
        shared.events.send(crate::BrokerEvent::Connected {
            client_id: client_id.clone(),
            principal: principal.clone(),
            remote_addr: info.remote_addr,
            connection_id: conn_id,
        });
    }
    let conn = Conn {
        principal,
        internal: internal_conn,
        shared: shared.clone(),
        cell: attached.cell,
        client_id,
        conn_id,
        version: c.protocol,
        publish_memo: crate::connection::PublishMemo::new(policy.as_ref()),
        policy,
        keep_alive: (!internal_conn).then_some(keep_alive),
        problem_info,
        in_aliases: InAliases::new(if v5 { cfg.topic_alias_maximum } else { 0 }),
        acks: Default::default(),
        wbuf,
        rate_window: (0, 0),
        pacing: Default::default(),
    };
    Ok(Accepted { conn, rx })
}
