//! Connections past the open-file limit: a `thingd serve` whose limit is 128 descriptors
//! holds 250 mTLS connections (those past its descriptor ceiling in io_uring file tables, see
//! `thingd-uring`), messages flow between connections on both sides of the limit, and a
//! ring-held connection that turns busy moves onto a descriptor of its own.

use std::future::Future;

use thingd_tests::{ProcessServer, issue_device, scrape_metrics};

use crate::raw_protocol::{Connect, RawClient, kind, publish};

/// The open-file limit thingd runs under (soft and hard).
const LIMIT: u64 = 128;
/// Connections opened: about twice what the limit allows.
const CONNECTIONS: usize = 250;

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

#[test]
fn thingd_holds_more_connections_than_its_open_file_limit_and_they_all_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = block_on(issue_device(dir.path(), "crowd")).expect("thingd cert issue");
    let server = ProcessServer::start_with_file_limit(dir.path(), &["--api", "127.0.0.1:0"], LIMIT)
        .expect("thingd serve starts under prlimit");
    let pid = server.pid().expect("running");
    block_on(async {
        let mut clients = Vec::with_capacity(CONNECTIONS);
        for batch in (0..CONNECTIONS).collect::<Vec<_>>().chunks(25) {
            let mut opening = tokio::task::JoinSet::new();
            for i in batch {
                let connect = Connect::v311(&format!("crowd-{i}"));
                let device = device.clone();
                let addr = server.mqtts;
                opening.spawn(async move { RawClient::connect_at(addr, &device, &connect).await });
            }
            while let Some(opened) = opening.join_next().await {
                let (client, _) = opened
                    .expect("task")
                    .expect("CONNACK accepted past the open-file limit");
                clients.push(client);
            }
        }
        for (i, client) in clients.iter_mut().enumerate() {
            client
                .ping()
                .await
                .unwrap_or_else(|e| panic!("connection {i} does not answer: {e:#}"));
        }

        let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("thingd's descriptors")
            .count();
        assert!(
            descriptors < CONNECTIONS,
            "{descriptors} descriptors for {CONNECTIONS} connections"
        );
        let metrics = scrape_metrics(server.metrics).await.expect("metrics");
        let current = metrics
            .lines()
            .find_map(|l| l.strip_prefix("thingd_connections_current "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("thingd_connections_current");
        assert!(
            current >= CONNECTIONS as f64,
            "thingd counts {current} connections"
        );

        // The first connections have descriptors of their own, the last ones are held in a
        // ring: a message each way between them.
        let (first, rest) = clients.split_first_mut().expect("clients");
        let last = rest.last_mut().expect("clients");
        assert_eq!(
            last.subscribe(false, 1, &[], &[("crowd/in", 1)])
                .await
                .unwrap(),
            vec![1]
        );
        assert_eq!(
            first
                .subscribe(false, 1, &[], &[("crowd/out", 1)])
                .await
                .unwrap(),
            vec![1]
        );
        send_across(first, last, "crowd/in", 7, b"to the ring").await;
        send_across(last, first, "crowd/out", 8, b"from the ring").await;

        // Busy: 30 messages in a row, each read by thingd on its own.
        let ends = (server.mqtts.port(), last.local_addr().unwrap().port());
        assert!(
            !has_descriptor(pid, ends),
            "the last connection starts without a descriptor"
        );
        for pkid in 100..130 {
            publish_acked(last, "crowd/busy", pkid, b"busy").await;
        }
        let mut moved = false;
        for _ in 0..50 {
            moved = has_descriptor(pid, ends);
            if moved {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(moved, "the busy connection got a descriptor of its own");
        send_across(first, last, "crowd/in", 9, b"to the moved one").await;
        send_across(last, first, "crowd/out", 10, b"from the moved one").await;
    });
}

/// Whether thingd (`pid`) holds a descriptor for its end of the TCP connection between its
/// port and the client's, `ends`: the socket's inode, from `/proc/<pid>/net/tcp`, among the
/// links in `/proc/<pid>/fd`.
fn has_descriptor(pid: u32, (server_port, client_port): (u16, u16)) -> bool {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("tcp table");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    let inode = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && port(f[1]) == Some(server_port) && port(f[2]) == Some(client_port))
        .map(|f| f[9].to_owned())
        .expect("thingd's end of the connection");
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("thingd's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target.to_string_lossy() == socket)
}

/// Publishes `payload` at QoS 1 from `from` and checks its PUBACK.
async fn publish_acked(from: &mut RawClient, topic: &str, pkid: u16, payload: &[u8]) {
    from.send(&publish(false, topic, 1, false, pkid, &[], payload))
        .await
        .unwrap();
    let acked = from.expect(kind::PUBACK).await.unwrap();
    assert_eq!(acked.ack(kind::PUBACK).unwrap().0, pkid);
}

/// Publishes `payload` at QoS 1 from `from` and checks its PUBACK and its delivery to `to`
/// (subscribed to `topic`).
async fn send_across(
    from: &mut RawClient,
    to: &mut RawClient,
    topic: &str,
    pkid: u16,
    payload: &[u8],
) {
    publish_acked(from, topic, pkid, payload).await;
    let got = to.expect_publish(false).await.unwrap();
    assert_eq!((got.topic.as_str(), &got.payload[..]), (topic, payload));
}
