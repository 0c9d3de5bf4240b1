//! The MQTT client: a handle ([`Client`]) and the connection task behind it.
//!
//! One task owns the socket and all protocol state. Handles talk to it over a channel, so a
//! `Client` is cheap to clone and never holds a lock across an await. The task reads and
//! writes packets, pings, and when the connection is lost it waits (jittered exponential
//! backoff), connects again, subscribes again (unless the server kept the session), resends
//! the QoS 1 messages that were not acknowledged, then drains the offline queue.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thingd_mqtt::{
    ByteStr, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResp, PubRespKind,
    Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::client::TlsStream;

use crate::error::{Error, classify_io};
use crate::options::ConnectOptions;
use crate::topic::filter_matches;

/// AWS IoT Core accepts at most 8 filters in one SUBSCRIBE.
const FILTERS_PER_SUBSCRIBE: usize = 8;
/// Our own cap on unacknowledged outgoing QoS 1 messages.
const MAX_INFLIGHT: usize = 100;

/// A message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// True when it is a retained message sent because of the subscription.
    pub retain: bool,
}

/// Where the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connected; `session_present` as CONNACK said.
    Connected {
        /// The server resumed a persistent session.
        session_present: bool,
        /// How many connections this client has made, 1 for the first.
        generation: u64,
    },
    /// Lost, and reconnecting; the last error as text.
    Reconnecting {
        /// Why the connection or the last attempt failed.
        error: String,
    },
    /// Closed for good (the client was dropped or disconnected).
    Closed,
}

/// A handle to a connected device client. Clone it freely; the connection closes when the
/// last clone is dropped or [`Client::disconnect`] is called.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    dropped: Arc<AtomicU64>,
    client_id: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.inner.client_id)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

/// The acknowledgement of one publish: resolves when a QoS 1 message is PUBACKed (or a QoS 0
/// one is written to the socket), or with the error that ended it.
#[must_use = "a publish acknowledgement does nothing unless awaited"]
#[derive(Debug)]
pub struct PublishAck {
    rx: oneshot::Receiver<Result<(), Error>>,
}

impl Future for PublishAck {
    type Output = Result<(), Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The messages of one [`Client::subscribe`] call. Unbounded: read it, or drop it.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Message>,
}

impl Subscription {
    /// The next message; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }
}

enum Command {
    Publish(Outgoing),
    Subscribe {
        filters: Vec<(String, QoS)>,
        route: mpsc::UnboundedSender<Message>,
        done: oneshot::Sender<Result<Vec<QoS>, Error>>,
    },
    Unsubscribe {
        filter: String,
        done: oneshot::Sender<Result<(), Error>>,
    },
    Disconnect {
        done: oneshot::Sender<()>,
    },
}

struct Outgoing {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    done: Option<oneshot::Sender<Result<(), Error>>>,
    /// Connections lost (closed by the server) while this was unacknowledged.
    strikes: u8,
    /// Send order, to resend in the original order.
    seq: u64,
    /// Sent before on a connection that was lost: resent with DUP.
    dup: bool,
}

impl Outgoing {
    fn finish(&mut self, result: Result<(), Error>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(result);
        }
    }
}

impl Client {
    /// Connects (TCP, TLS with the device certificate, MQTT CONNECT) and starts the
    /// connection task. The first attempt's failure is returned as is (a refused
    /// certificate, a CONNACK refusal, a timeout); after a first success the task reconnects
    /// by itself for as long as the client lives.
    pub async fn connect(options: ConnectOptions) -> Result<Client, Error> {
        let tls = options.tls_config()?;
        let connection = open(&options, &tls).await?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connected {
            session_present: connection.session_present,
            generation: 1,
        });
        let dropped = Arc::new(AtomicU64::new(0));
        let inner = Arc::new(Inner {
            commands,
            state,
            dropped: dropped.clone(),
            client_id: options.client_id.clone(),
            request_timeout: options.request_timeout,
        });
        let task = Task {
            options,
            tls,
            commands: rx,
            state: state_tx,
            dropped,
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            subscriptions: Vec::new(),
            pending_subs: HashMap::new(),
            waiting_subs: Vec::new(),
            pending_unsubs: HashMap::new(),
            routes: Vec::new(),
            next_pid: 0,
            next_seq: 0,
            max_inflight: MAX_INFLIGHT,
            generation: 1,
        };
        tokio::spawn(task.run(connection));
        Ok(Client { inner })
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// How long requests (subscribe, shadow) wait for their answer.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Publishes. While offline the message waits in the bounded offline queue (the oldest
    /// is dropped when it is full); QoS 1 messages stay until PUBACKed and are resent after
    /// a reconnect. Await the returned [`PublishAck`] for the outcome.
    pub fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Bytes>,
    ) -> PublishAck {
        let (done, rx) = oneshot::channel();
        let qos = qos.min(QoS::AtLeastOnce);
        let outgoing = Outgoing {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            done: Some(done),
            strikes: 0,
            seq: 0,
            dup: false,
        };
        if let Err(mpsc::error::SendError(Command::Publish(mut o))) =
            self.inner.commands.send(Command::Publish(outgoing))
        {
            o.finish(Err(Error::Closed));
        }
        PublishAck { rx }
    }

    /// Subscribes to one filter; see [`Client::subscribe_many`].
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<Subscription, Error> {
        self.subscribe_many(&[(filter, qos)]).await
    }

    /// Subscribes to filters and returns the stream of messages matching any of them. Waits
    /// for SUBACK (a refused filter is [`Error::NotAuthorized`] or [`Error::Refused`]); the
    /// filters are subscribed again after every reconnect that did not resume the session.
    pub async fn subscribe_many(&self, filters: &[(&str, QoS)]) -> Result<Subscription, Error> {
        let (route, rx) = mpsc::unbounded_channel();
        let (done, answer) = oneshot::channel();
        let filters = filters
            .iter()
            .map(|(f, q)| ((*f).to_owned(), (*q).min(QoS::AtLeastOnce)))
            .collect();
        self.inner
            .commands
            .send(Command::Subscribe {
                filters,
                route,
                done,
            })
            .map_err(|_| Error::Closed)?;
        match tokio::time::timeout(self.inner.request_timeout, answer).await {
            Ok(Ok(Ok(_granted))) => Ok(Subscription { rx }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Unsubscribes a filter; its routes stop receiving.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Unsubscribe {
                filter: filter.to_owned(),
                done,
            })
            .map_err(|_| Error::Closed)?;
        match tokio::time::timeout(self.inner.request_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Sends DISCONNECT and stops the connection task; unfinished publishes fail with
    /// [`Error::Closed`].
    pub async fn disconnect(&self) {
        let (done, answer) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Disconnect { done })
            .is_ok()
        {
            let _ = answer.await;
        }
        let mut state = self.watch_state();
        let closed = state.wait_for(|s| *s == ConnectionState::Closed);
        let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// A watch of the connection state, to wait for reconnects.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// Waits until connected with a generation of at least `generation` (1 is the first
    /// connection), or `timeout`.
    pub async fn wait_connected(&self, generation: u64, timeout: Duration) -> Result<(), Error> {
        let mut state = self.watch_state();
        let wait = state.wait_for(|s| match s {
            ConnectionState::Connected { generation: g, .. } => *g >= generation,
            ConnectionState::Closed => true,
            ConnectionState::Reconnecting { .. } => false,
        });
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) if *s != ConnectionState::Closed => Ok(()),
            Ok(_) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// How many messages the offline queue has dropped (drop-oldest) since the start.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

// --- one connection ------------------------------------------------------------------------

struct Connection {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    session_present: bool,
    receive_maximum: Option<u16>,
    /// MQTT 5 Server Keep Alive: the interval the server imposes instead of ours.
    server_keep_alive: Option<u16>,
}

/// TCP, TLS, CONNECT and CONNACK, within the connect timeout.
async fn open(
    options: &ConnectOptions,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Connection, Error> {
    let server_name = options.server_name()?;
    let attempt = async {
        let tcp = TcpStream::connect((options.host.as_str(), options.port)).await?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let mut stream = connector
            .connect(server_name, tcp)
            .await
            .map_err(closed_or_tls)?;
        let version = options.protocol;
        let mut properties = Properties::default();
        if version == ProtocolVersion::V5 {
            properties.session_expiry_interval = options
                .session_expiry
                .map(|d| d.as_secs().min(u32::MAX as u64) as u32);
        }
        let connect = Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: options.session_expiry.is_none(),
            keep_alive: options.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            client_id: ByteStr::from(options.client_id.as_str()),
            will: None,
            username: None,
            password: None,
            properties,
        }));
        write_packet(&mut stream, &connect, version)
            .await
            .map_err(|e| match e {
                Error::Io(_) => Error::ClosedDuringConnect,
                other => other,
            })?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match thingd_mqtt::decode(&mut buf, version, options.max_packet_size) {
                Ok(Some(Packet::ConnAck(ack))) => {
                    if ack.reason != ReasonCode::Success {
                        return Err(Error::ConnectionRefused { reason: ack.reason });
                    }
                    return Ok(Connection {
                        stream,
                        buf,
                        session_present: ack.session_present,
                        receive_maximum: ack.properties.receive_maximum,
                        server_keep_alive: ack.properties.server_keep_alive,
                    });
                }
                Ok(Some(Packet::Disconnect(d))) => {
                    return Err(Error::ConnectionRefused { reason: d.reason });
                }
                Ok(Some(other)) => {
                    return Err(Error::Protocol(format!(
                        "expected CONNACK, got {}",
                        packet_name(&other)
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
            buf.reserve(4096);
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Err(Error::ClosedDuringConnect),
                Ok(_) => {}
                Err(e) => return Err(closed_or_tls(e)),
            }
        }
    };
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout),
    }
}

/// During connect, a reset or EOF means the server closed on us; alerts stay alerts.
fn closed_or_tls(e: std::io::Error) -> Error {
    match classify_io(e) {
        Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            Error::ClosedDuringConnect
        }
        other => other,
    }
}

async fn write_packet(
    stream: &mut TlsStream<TcpStream>,
    packet: &Packet,
    version: ProtocolVersion,
) -> Result<(), Error> {
    let bytes = thingd_mqtt::encode_to_bytes(packet, version)
        .map_err(|e| Error::Protocol(format!("cannot encode: {e}")))?;
    stream.write_all(&bytes).await.map_err(classify_io)?;
    stream.flush().await.map_err(classify_io)?;
    Ok(())
}

fn packet_name(p: &Packet) -> &'static str {
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
        _ => "AUTH",
    }
}

// --- the connection task -------------------------------------------------------------------

struct PendingSub {
    filters: Vec<(String, QoS)>,
    route: Option<mpsc::UnboundedSender<Message>>,
    done: Option<oneshot::Sender<Result<Vec<QoS>, Error>>>,
    strikes: u8,
}

struct Route {
    filter: String,
    tx: mpsc::UnboundedSender<Message>,
}

struct Task {
    options: ConnectOptions,
    tls: Arc<rustls::ClientConfig>,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<ConnectionState>,
    dropped: Arc<AtomicU64>,
    /// Publishes not yet sent (offline, or over the in-flight limit).
    queue: VecDeque<Outgoing>,
    /// QoS 1 publishes sent and not yet PUBACKed, by packet id.
    inflight: HashMap<u16, Outgoing>,
    /// Every filter the client has asked for, to subscribe again after a reconnect.
    subscriptions: Vec<(String, QoS)>,
    /// SUBSCRIBEs sent and not yet SUBACKed.
    pending_subs: HashMap<u16, PendingSub>,
    /// User SUBSCRIBEs that wait for a connection.
    waiting_subs: Vec<PendingSub>,
    pending_unsubs: HashMap<u16, oneshot::Sender<Result<(), Error>>>,
    routes: Vec<Route>,
    next_pid: u16,
    next_seq: u64,
    max_inflight: usize,
    generation: u64,
}

/// How a connection ended.
enum End {
    /// The client is closing: stop.
    Closed,
    /// Lost; `by_server` when the server closed it (EOF, reset, DISCONNECT).
    Lost { error: Error, by_server: bool },
}

impl Task {
    async fn run(mut self, first: Connection) {
        let mut connection = Some(first);
        let mut attempt: u32 = 0;
        loop {
            if let Some(conn) = connection.take() {
                match self.serve(conn).await {
                    End::Closed => break,
                    End::Lost { error, by_server } => {
                        tracing::info!(client_id = %self.options.client_id, %error, "connection lost");
                        self.connection_lost(by_server);
                        let _ = self.state.send(ConnectionState::Reconnecting {
                            error: error.to_string(),
                        });
                    }
                }
            }
            // Wait out the backoff while taking commands (publishes go to the queue).
            let delay = self.options.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            let mut closing = false;
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    command = self.commands.recv() => match command {
                        None => { closing = true; break; }
                        Some(Command::Disconnect { done }) => {
                            let _ = done.send(());
                            closing = true;
                            break;
                        }
                        Some(command) => self.offline(command),
                    },
                }
            }
            if closing {
                break;
            }
            match open(&self.options, &self.tls).await {
                Ok(conn) => {
                    attempt = 0;
                    self.generation += 1;
                    connection = Some(conn);
                }
                Err(error) => {
                    tracing::debug!(client_id = %self.options.client_id, %error, "reconnect failed");
                    let _ = self.state.send(ConnectionState::Reconnecting {
                        error: error.to_string(),
                    });
                }
            }
        }
        self.fail_everything();
        let _ = self.state.send(ConnectionState::Closed);
    }

    fn fail_everything(&mut self) {
        for mut o in self.queue.drain(..) {
            o.finish(Err(Error::Closed));
        }
        for (_, mut o) in self.inflight.drain() {
            o.finish(Err(Error::Closed));
        }
        for (_, p) in self.pending_subs.drain() {
            if let Some(done) = p.done {
                let _ = done.send(Err(Error::Closed));
            }
        }
        for p in self.waiting_subs.drain(..) {
            if let Some(done) = p.done {
                let _ = done.send(Err(Error::Closed));
            }
        }
        for (_, done) in self.pending_unsubs.drain() {
            let _ = done.send(Err(Error::Closed));
        }
    }

    /// Bookkeeping after a connection is lost. MQTT 3.1.1 has no negative acknowledgement:
    /// a server that refuses a publish or subscribe closes the connection. A message that was
    /// unacknowledged when the server closed two connections is taken as refused.
    fn connection_lost(&mut self, by_server: bool) {
        let infer = by_server && self.options.protocol == ProtocolVersion::V311;
        let mut inflight: Vec<Outgoing> = self.inflight.drain().map(|(_, o)| o).collect();
        inflight.sort_by_key(|o| o.seq);
        let mut keep = VecDeque::new();
        for mut o in inflight {
            o.dup = true;
            if infer {
                o.strikes += 1;
                if o.strikes >= 2 {
                    let topic = o.topic.clone();
                    o.finish(Err(Error::NotAuthorized {
                        topic,
                        reason: None,
                    }));
                    continue;
                }
            }
            keep.push_back(o);
        }
        // Unacknowledged messages go first when the connection is back.
        while let Some(o) = keep.pop_back() {
            self.queue.push_front(o);
        }
        let pending: Vec<PendingSub> = self.pending_subs.drain().map(|(_, p)| p).collect();
        for mut p in pending {
            if p.done.is_none() {
                continue; // a resubscription; `subscriptions` has the filters
            }
            if infer {
                p.strikes += 1;
                if p.strikes >= 2 {
                    let topic = p.filters.first().map(|f| f.0.clone()).unwrap_or_default();
                    self.forget_filters(&p.filters, p.route.as_ref());
                    if let Some(done) = p.done.take() {
                        let _ = done.send(Err(Error::NotAuthorized {
                            topic,
                            reason: None,
                        }));
                    }
                    continue;
                }
            }
            self.waiting_subs.push(p);
        }
        for (_, done) in self.pending_unsubs.drain() {
            let _ = done.send(Ok(()));
        }
    }

    fn forget_filters(
        &mut self,
        filters: &[(String, QoS)],
        route: Option<&mpsc::UnboundedSender<Message>>,
    ) {
        for (f, _) in filters {
            self.subscriptions.retain(|(s, _)| s != f);
            if let Some(route) = route {
                self.routes
                    .retain(|r| !(r.filter == *f && r.tx.same_channel(route)));
            }
        }
    }

    /// A command while there is no connection.
    fn offline(&mut self, command: Command) {
        match command {
            Command::Publish(o) => self.enqueue(o),
            Command::Subscribe {
                filters,
                route,
                done,
            } => {
                self.add_routes(&filters, &route);
                self.waiting_subs.push(PendingSub {
                    filters,
                    route: Some(route),
                    done: Some(done),
                    strikes: 0,
                });
            }
            Command::Unsubscribe { filter, done } => {
                self.remove_filter(&filter);
                let _ = done.send(Ok(()));
            }
            Command::Disconnect { done } => {
                let _ = done.send(());
            }
        }
    }

    fn add_routes(&mut self, filters: &[(String, QoS)], route: &mpsc::UnboundedSender<Message>) {
        for (f, _) in filters {
            self.routes.push(Route {
                filter: f.clone(),
                tx: route.clone(),
            });
        }
    }

    fn remove_filter(&mut self, filter: &str) {
        self.subscriptions.retain(|(f, _)| f != filter);
        self.routes.retain(|r| r.filter != filter);
    }

    /// Puts a publish in the offline queue, dropping the oldest entry when it is full.
    fn enqueue(&mut self, mut o: Outgoing) {
        if o.seq == 0 {
            self.next_seq += 1;
            o.seq = self.next_seq;
        }
        while self.queue.len() >= self.options.offline_queue {
            if let Some(mut oldest) = self.queue.pop_front() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %oldest.topic, "offline queue full: dropped the oldest message");
                oldest.finish(Err(Error::QueueOverflow));
            }
        }
        self.queue.push_back(o);
    }

    fn allocate_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid == 0 {
                continue;
            }
            let id = self.next_pid;
            if !self.inflight.contains_key(&id)
                && !self.pending_subs.contains_key(&id)
                && !self.pending_unsubs.contains_key(&id)
            {
                return id;
            }
        }
    }

    /// Runs one connection until it ends.
    async fn serve(&mut self, mut conn: Connection) -> End {
        let version = self.options.protocol;
        self.max_inflight = conn
            .receive_maximum
            .map(usize::from)
            .unwrap_or(MAX_INFLIGHT)
            .clamp(1, MAX_INFLIGHT);
        let _ = self.state.send(ConnectionState::Connected {
            session_present: conn.session_present,
            generation: self.generation,
        });
        if let Err(error) = self.resume(&mut conn, version).await {
            return End::Lost {
                error,
                by_server: true,
            };
        }
        let keep_alive = match conn.server_keep_alive {
            Some(secs) => Duration::from_secs(u64::from(secs)),
            None => self.options.keep_alive,
        };
        let keep_alive = if keep_alive.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            keep_alive
        };
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        let mut ping_outstanding = false;
        loop {
            conn.buf.reserve(4096);
            tokio::select! {
                read = conn.stream.read_buf(&mut conn.buf) => {
                    match read {
                        Ok(0) => return End::Lost { error: Error::Io(std::io::ErrorKind::UnexpectedEof.into()), by_server: true },
                        Ok(_) => {}
                        Err(e) => {
                            let error = classify_io(e);
                            return End::Lost { error, by_server: true };
                        }
                    }
                    loop {
                        match thingd_mqtt::decode(&mut conn.buf, version, self.options.max_packet_size) {
                            Ok(Some(packet)) => {
                                if matches!(packet, Packet::PingResp) {
                                    ping_outstanding = false;
                                }
                                if let Err(end) = self.incoming(&mut conn, packet, version).await {
                                    return end;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return End::Lost { error: Error::Protocol(e.to_string()), by_server: false },
                        }
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        self.say_goodbye(&mut conn, version).await;
                        return End::Closed;
                    };
                    if let Command::Disconnect { done } = command {
                        self.say_goodbye(&mut conn, version).await;
                        let _ = done.send(());
                        return End::Closed;
                    }
                    if let Err(error) = self.online(&mut conn, command, version).await {
                        return End::Lost { error, by_server: true };
                    }
                }
                _ = ping.tick() => {
                    if ping_outstanding {
                        return End::Lost { error: Error::Timeout, by_server: false };
                    }
                    if let Err(error) = write_packet(&mut conn.stream, &Packet::PingReq, version).await {
                        return End::Lost { error, by_server: true };
                    }
                    ping_outstanding = true;
                }
            }
        }
    }

    async fn say_goodbye(&mut self, conn: &mut Connection, version: ProtocolVersion) {
        let packet = Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: Properties::default(),
        });
        let _ = write_packet(&mut conn.stream, &packet, version).await;
        let _ = conn.stream.shutdown().await;
    }

    /// After CONNACK: subscribe again, send waiting subscriptions, resend and drain.
    async fn resume(
        &mut self,
        conn: &mut Connection,
        version: ProtocolVersion,
    ) -> Result<(), Error> {
        // Subscribe again even when the server says it kept the session: it costs one
        // packet, and a server that lost a subscription (or a session it claims to have)
        // would otherwise go silent. With a resumed MQTT 5 session, retained messages are
        // not sent again (Retain Handling 1).
        if !self.subscriptions.is_empty() {
            let filters = self.subscriptions.clone();
            for chunk in filters.chunks(FILTERS_PER_SUBSCRIBE) {
                let pending = PendingSub {
                    filters: chunk.to_vec(),
                    route: None,
                    done: None,
                    strikes: 0,
                };
                self.send_subscribe(conn, pending, version, conn.session_present)
                    .await?;
            }
        }
        for pending in std::mem::take(&mut self.waiting_subs) {
            self.send_subscribe(conn, pending, version, false).await?;
        }
        self.drain(conn, version).await
    }

    async fn send_subscribe(
        &mut self,
        conn: &mut Connection,
        pending: PendingSub,
        version: ProtocolVersion,
        resumed: bool,
    ) -> Result<(), Error> {
        let pid = self.allocate_pid();
        let retain_handling = if resumed {
            thingd_mqtt::RetainHandling::SendIfNew
        } else {
            thingd_mqtt::RetainHandling::SendAtSubscribe
        };
        let packet = Packet::Subscribe(Subscribe {
            packet_id: pid,
            filters: pending
                .filters
                .iter()
                .map(|(f, q)| {
                    (
                        ByteStr::from(f.as_str()),
                        SubscriptionOptions {
                            qos: *q,
                            retain_handling,
                            ..SubscriptionOptions::default()
                        },
                    )
                })
                .collect(),
            properties: Properties::default(),
        });
        self.pending_subs.insert(pid, pending);
        write_packet(&mut conn.stream, &packet, version).await
    }

    /// Sends queued publishes while the in-flight window has room.
    async fn drain(
        &mut self,
        conn: &mut Connection,
        version: ProtocolVersion,
    ) -> Result<(), Error> {
        while self.inflight.len() < self.max_inflight {
            let Some(o) = self.queue.pop_front() else {
                break;
            };
            self.send_publish(conn, o, version).await?;
        }
        Ok(())
    }

    async fn send_publish(
        &mut self,
        conn: &mut Connection,
        mut o: Outgoing,
        version: ProtocolVersion,
    ) -> Result<(), Error> {
        let topic = match ByteStr::from_utf8(Bytes::from(o.topic.clone())) {
            Some(t) => t,
            None => {
                o.finish(Err(Error::Protocol("topic is not UTF-8".to_owned())));
                return Ok(());
            }
        };
        let pid = (o.qos != QoS::AtMostOnce).then(|| self.allocate_pid());
        let packet = Packet::Publish(Publish {
            dup: o.dup && pid.is_some(),
            qos: o.qos,
            retain: o.retain,
            topic,
            packet_id: pid,
            properties: Properties::default(),
            payload: o.payload.clone(),
        });
        let bytes = match thingd_mqtt::encode_to_bytes(&packet, version) {
            Ok(b) => b,
            Err(e) => {
                o.finish(Err(Error::Protocol(format!(
                    "cannot encode the publish: {e}"
                ))));
                return Ok(());
            }
        };
        match pid {
            Some(pid) => {
                self.inflight.insert(pid, o);
            }
            None => o.finish(Ok(())),
        }
        conn.stream.write_all(&bytes).await.map_err(classify_io)?;
        conn.stream.flush().await.map_err(classify_io)
    }

    async fn online(
        &mut self,
        conn: &mut Connection,
        command: Command,
        version: ProtocolVersion,
    ) -> Result<(), Error> {
        match command {
            Command::Publish(mut o) => {
                self.next_seq += 1;
                o.seq = self.next_seq;
                if self.inflight.len() >= self.max_inflight || !self.queue.is_empty() {
                    self.enqueue(o);
                    return self.drain(conn, version).await;
                }
                self.send_publish(conn, o, version).await
            }
            Command::Subscribe {
                filters,
                route,
                done,
            } => {
                self.add_routes(&filters, &route);
                let pending = PendingSub {
                    filters,
                    route: Some(route),
                    done: Some(done),
                    strikes: 0,
                };
                self.send_subscribe(conn, pending, version, false).await
            }
            Command::Unsubscribe { filter, done } => {
                self.remove_filter(&filter);
                let pid = self.allocate_pid();
                self.pending_unsubs.insert(pid, done);
                let packet = Packet::Unsubscribe(Unsubscribe {
                    packet_id: pid,
                    filters: vec![ByteStr::from(filter)],
                    properties: Properties::default(),
                });
                write_packet(&mut conn.stream, &packet, version).await
            }
            Command::Disconnect { done } => {
                let _ = done.send(());
                Ok(())
            }
        }
    }

    /// One packet from the server.
    async fn incoming(
        &mut self,
        conn: &mut Connection,
        packet: Packet,
        version: ProtocolVersion,
    ) -> Result<(), End> {
        let lost = |error: Error| End::Lost {
            error,
            by_server: true,
        };
        match packet {
            Packet::Publish(p) => {
                self.deliver(&p);
                let ack = match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(_)) => Some(PubRespKind::PubAck),
                    (QoS::ExactlyOnce, Some(_)) => Some(PubRespKind::PubRec),
                    _ => None,
                };
                if let (Some(kind), Some(pid)) = (ack, p.packet_id) {
                    let resp = Packet::PubResp(PubResp {
                        kind,
                        packet_id: pid,
                        reason: ReasonCode::Success,
                        properties: Properties::default(),
                    });
                    write_packet(&mut conn.stream, &resp, version)
                        .await
                        .map_err(lost)?;
                }
            }
            Packet::PubResp(r) => match r.kind {
                PubRespKind::PubAck => {
                    if let Some(mut o) = self.inflight.remove(&r.packet_id) {
                        let result = match r.reason as u8 {
                            code if code < 0x80 => Ok(()),
                            _ if r.reason == ReasonCode::NotAuthorized => {
                                Err(Error::NotAuthorized {
                                    topic: o.topic.clone(),
                                    reason: Some(r.reason),
                                })
                            }
                            _ => Err(Error::Refused {
                                topic: o.topic.clone(),
                                reason: r.reason,
                            }),
                        };
                        o.finish(result);
                    }
                    self.drain(conn, version).await.map_err(lost)?;
                }
                PubRespKind::PubRel => {
                    let resp = Packet::PubResp(PubResp {
                        kind: PubRespKind::PubComp,
                        packet_id: r.packet_id,
                        reason: ReasonCode::Success,
                        properties: Properties::default(),
                    });
                    write_packet(&mut conn.stream, &resp, version)
                        .await
                        .map_err(lost)?;
                }
                PubRespKind::PubRec | PubRespKind::PubComp => {}
            },
            Packet::SubAck(ack) => {
                if let Some(mut pending) = self.pending_subs.remove(&ack.packet_id) {
                    let mut granted = Vec::new();
                    let mut failure = None;
                    for (i, reason) in ack.reasons.iter().enumerate() {
                        let filter = pending.filters.get(i).cloned();
                        match (*reason as u8, filter) {
                            (code @ 0..=2, Some((f, _))) => {
                                granted.push(QoS::from_u8(code).unwrap_or_default());
                                if !self.subscriptions.iter().any(|(s, _)| *s == f) {
                                    let qos = QoS::from_u8(code).unwrap_or_default();
                                    self.subscriptions.push((f, qos));
                                }
                            }
                            (_, Some((f, q))) => {
                                self.forget_filters(&[(f.clone(), q)], pending.route.as_ref());
                                if failure.is_none() {
                                    failure = Some(if *reason == ReasonCode::NotAuthorized {
                                        Error::NotAuthorized {
                                            topic: f,
                                            reason: Some(*reason),
                                        }
                                    } else {
                                        Error::Refused {
                                            topic: f,
                                            reason: *reason,
                                        }
                                    });
                                }
                            }
                            _ => {}
                        }
                    }
                    if let Some(done) = pending.done.take() {
                        let _ = done.send(match failure {
                            Some(e) => Err(e),
                            None => Ok(granted),
                        });
                    } else if let Some(e) = failure {
                        tracing::warn!(client_id = %self.options.client_id, error = %e, "resubscribe refused");
                    }
                }
            }
            Packet::UnsubAck(ack) => {
                if let Some(done) = self.pending_unsubs.remove(&ack.packet_id) {
                    let _ = done.send(Ok(()));
                }
            }
            Packet::PingResp => {}
            Packet::Disconnect(d) => {
                let reason = d
                    .properties
                    .reason_string
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                return Err(lost(Error::Protocol(format!(
                    "the server disconnected: {:?} {reason}",
                    d.reason
                ))));
            }
            other => {
                return Err(End::Lost {
                    error: Error::Protocol(format!("unexpected {}", packet_name(&other))),
                    by_server: false,
                });
            }
        }
        Ok(())
    }

    /// Hands a received message to every subscription whose filters match, once each.
    fn deliver(&mut self, p: &Publish) {
        let message = Message {
            topic: p.topic.to_string(),
            payload: p.payload.clone(),
            qos: p.qos,
            retain: p.retain,
        };
        self.routes.retain(|r| !r.tx.is_closed());
        let mut sent: Vec<&mpsc::UnboundedSender<Message>> = Vec::new();
        for route in &self.routes {
            if !filter_matches(&route.filter, &message.topic) {
                continue;
            }
            if sent.iter().any(|s| s.same_channel(&route.tx)) {
                continue;
            }
            let _ = route.tx.send(message.clone());
            sent.push(&route.tx);
        }
    }
}
