//! MQTT over WebSocket: `GET /mqtt` upgraded with subprotocol `mqtt`, MQTT bytes in binary
//! frames. A packet may span several frames and a frame may hold several packets, so the
//! frames are joined into a byte stream that the broker reads like a socket.

use axum::Router;
use axum::extract::Extension;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use thingd_broker::{Broker, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The WebSocket subprotocols accepted, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Routes serving MQTT over WebSocket at `/mqtt`. Each request must carry the connection's
/// `ConnectionInfo` as an extension (the HTTPS listener adds it).
pub fn websocket_routes(broker: Broker) -> Router {
    Router::new().route(
        "/mqtt",
        get(
            move |ws: WebSocketUpgrade, Extension(info): Extension<ConnectionInfo>| {
                let broker = broker.clone();
                async move { upgrade(ws, info, broker) }
            },
        ),
    )
}

fn upgrade(ws: WebSocketUpgrade, mut info: ConnectionInfo, broker: Broker) -> Response {
    use axum::response::IntoResponse as _;
    // MQTT over WebSocket is authenticated by the TLS client certificate (SigV4-signed
    // WebSocket URLs are not accepted yet).
    if info.principal.is_none() {
        return (
            axum::http::StatusCode::FORBIDDEN,
            "MQTT over WebSocket needs a client certificate\n",
        )
            .into_response();
    }
    info.listener = "wss";
    ws.protocols(SUBPROTOCOLS)
        .on_upgrade(move |socket| bridge(socket, info, broker))
}

/// Joins the WebSocket to the broker through an in-memory pipe.
async fn bridge(socket: WebSocket, info: ConnectionInfo, broker: Broker) {
    let (broker_side, pump_side) = tokio::io::duplex(64 * 1024);
    let (mut pipe_read, mut pipe_write) = tokio::io::split(pump_side);
    let (mut ws_tx, mut ws_rx) = socket.split();
    let peer = info.remote_addr;

    let session = tokio::spawn(async move { broker.serve_connection(broker_side, info).await });

    let inbound = async {
        while let Some(message) = ws_rx.next().await {
            match message {
                Ok(Message::Binary(bytes)) => {
                    if pipe_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(Message::Text(_)) => {
                    tracing::debug!(%peer, "text frame on an MQTT WebSocket; closing");
                    break;
                }
                Ok(Message::Close(_)) | Err(_) => break,
            }
        }
        let _ = pipe_write.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pipe_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if ws_tx.send(Message::Binary(frame)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    // The connection ends when the broker closes its side (outbound sees EOF) or the
    // client goes away (inbound ends and shuts the pipe, which the broker then sees).
    tokio::join!(inbound, outbound);
    let _ = session.await;
}
