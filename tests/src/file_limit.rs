//! Connections past the open-file limit: a `thingd serve` whose limit is 128 descriptors
//! holds 250 mTLS connections (those past its descriptor ceiling in io_uring file tables, see
//! `thingd-uring`), and messages flow between connections on both sides of the limit.

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
    });
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
    from.send(&publish(false, topic, 1, false, pkid, &[], payload))
        .await
        .unwrap();
    let acked = from.expect(kind::PUBACK).await.unwrap();
    assert_eq!(acked.ack(kind::PUBACK).unwrap().0, pkid);
    let got = to.expect_publish(false).await.unwrap();
    assert_eq!((got.topic.as_str(), &got.payload[..]), (topic, payload));
}
