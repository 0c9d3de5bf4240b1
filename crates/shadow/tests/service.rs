//! The running service over a real broker and a real store in a temporary directory: MQTT
//! requests from in-process clients, the HTTP-facing methods, ordering, durability before
//! publishing, and throttling.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use thingd_broker::{AllowAll, Broker, BrokerConfig, InternalClient, Message};
use thingd_mqtt::QoS;
use thingd_shadow::service::{MAX_IN_FLIGHT_PER_THING, ShadowService};
use thingd_shadow::{ShadowId, ShadowLimits, StoredShadow, ThingName};
use thingd_store::Store;
use tokio_util::sync::CancellationToken;

struct Env {
    broker: Broker,
    store: Store,
    service: ShadowService,
    _shutdown: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

async fn env_with(max_in_flight: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("thingd.db")).unwrap();
    let broker = Broker::new(BrokerConfig::default(), store.clone(), Arc::new(AllowAll)).unwrap();
    let shutdown = CancellationToken::new();
    let service = ShadowService::start_with(
        &broker,
        store.clone(),
        ShadowLimits::default(),
        max_in_flight,
        shutdown.clone(),
    )
    .await
    .unwrap();
    Env {
        broker,
        store,
        service,
        _shutdown: shutdown.drop_guard(),
        _dir: dir,
    }
}

async fn env() -> Env {
    env_with(MAX_IN_FLIGHT_PER_THING).await
}

impl Env {
    async fn client(&self, id: &str, filters: &[&str]) -> InternalClient {
        let c = self.broker.internal_client(id);
        for f in filters {
            c.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        }
        c
    }

    /// The stored row's version, read straight from the store.
    fn stored_version(&self, thing: &str, shadow: &str) -> Option<u64> {
        self.store
            .read(|c| thingd_store::shadows::get(c, thing, shadow))
            .unwrap()
            .map(|row| {
                let doc = StoredShadow::from_bytes(&row.document).unwrap();
                assert_eq!(doc.version, row.version);
                row.version
            })
    }
}

async fn recv(c: &mut InternalClient) -> Message {
    tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .expect("a message within 10 s")
        .expect("connection open")
}

async fn nothing_more(c: &mut InternalClient) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), c.recv()).await {
        panic!(
            "unexpected message on {}: {}",
            m.topic,
            String::from_utf8_lossy(&m.payload)
        );
    }
}

fn body(m: &Message) -> Value {
    serde_json::from_slice(&m.payload).expect("JSON payload")
}

async fn publish(c: &InternalClient, topic: &str, payload: Value) {
    c.publish(topic, payload.to_string(), QoS::AtLeastOnce, false)
        .await
        .unwrap();
}

fn classic(thing: &str) -> ShadowId {
    ShadowId::parse(thing, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_is_committed_before_accepted_and_answers_come_in_order() {
    let env = env().await;
    let mut device = env
        .client("device", &["$aws/things/lamp/shadow/update/+"])
        .await;
    publish(
        &device,
        "$aws/things/lamp/shadow/update",
        json!({"state": {"desired": {"on": true}}, "clientToken": "t1"}),
    )
    .await;

    let accepted = recv(&mut device).await;
    // The store already holds what `accepted` announces.
    assert_eq!(env.stored_version("lamp", ""), Some(1));
    assert_eq!(accepted.topic, "$aws/things/lamp/shadow/update/accepted");
    let a = body(&accepted);
    assert_eq!(a["version"], 1);
    assert_eq!(a["clientToken"], "t1");
    assert_eq!(a["state"], json!({"desired": {"on": true}}));

    let delta = recv(&mut device).await;
    assert_eq!(delta.topic, "$aws/things/lamp/shadow/update/delta");
    assert_eq!(body(&delta)["state"], json!({"on": true}));
    let documents = recv(&mut device).await;
    assert_eq!(documents.topic, "$aws/things/lamp/shadow/update/documents");
    let d = body(&documents);
    assert!(d.get("previous").is_none(), "{d}");
    assert_eq!(d["current"]["version"], 1);

    // The device catches up: no delta, and previous/current in documents.
    publish(
        &device,
        "$aws/things/lamp/shadow/update",
        json!({"state": {"reported": {"on": true}}}),
    )
    .await;
    assert_eq!(
        recv(&mut device).await.topic,
        "$aws/things/lamp/shadow/update/accepted"
    );
    let d = body(&recv(&mut device).await);
    assert_eq!(d["previous"]["version"], 1);
    assert_eq!(d["current"]["version"], 2);
    assert_eq!(
        d["current"]["state"],
        json!({"desired": {"on": true}, "reported": {"on": true}})
    );
    nothing_more(&mut device).await;
}

/// `update/documents` holds the whole document twice and is built only when someone
/// subscribes to it, which is asked at every update: a watcher that subscribes between two
/// updates (with a wildcard) gets the second one's documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_reach_whoever_subscribed_before_the_update() {
    let env = env().await;
    let mut device = env
        .client("device", &["$aws/things/fan/shadow/update/accepted"])
        .await;
    let update = |speed: u32| json!({"state": {"reported": {"speed": speed}}});
    publish(&device, "$aws/things/fan/shadow/update", update(1)).await;
    assert_eq!(body(&recv(&mut device).await)["version"], 1);

    let mut watcher = env
        .client("watcher", &["$aws/things/+/shadow/update/documents"])
        .await;
    publish(&device, "$aws/things/fan/shadow/update", update(2)).await;
    assert_eq!(body(&recv(&mut device).await)["version"], 2);
    let documents = recv(&mut watcher).await;
    assert_eq!(documents.topic, "$aws/things/fan/shadow/update/documents");
    let d = body(&documents);
    assert_eq!(d["previous"]["state"]["reported"]["speed"], 1);
    assert_eq!(d["current"]["state"]["reported"]["speed"], 2);
    assert_eq!(d["current"]["version"], 2);
    nothing_more(&mut watcher).await;
    nothing_more(&mut device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_many_clients_never_lose_or_reorder_a_version() {
    const CLIENTS: usize = 5;
    const EACH: usize = 20;
    let env = env_with(1000).await;
    let mut watcher = env
        .client("watcher", &["$aws/things/hot/shadow/update/accepted"])
        .await;
    let mut writers = Vec::new();
    for i in 0..CLIENTS {
        let c = env.client(&format!("writer-{i}"), &[]).await;
        writers.push(tokio::spawn(async move {
            for n in 0..EACH {
                publish(
                    &c,
                    "$aws/things/hot/shadow/update",
                    json!({"state": {"reported": {format!("w{i}"): n}}}),
                )
                .await;
            }
            c
        }));
    }
    // HTTP-side updates to the same shadow at the same time.
    let service = env.service.clone();
    let http = tokio::spawn(async move {
        let mut versions = Vec::new();
        for n in 0..EACH {
            let body = json!({"state": {"desired": {"http": n}}}).to_string();
            let outcome = service.update(&classic("hot"), Bytes::from(body)).await;
            versions.push(outcome.unwrap().shadow.version);
        }
        versions
    });
    let mut seen = Vec::new();
    let total = (CLIENTS + 1) * EACH;
    while seen.len() < total {
        seen.push(body(&recv(&mut watcher).await)["version"].as_u64().unwrap());
    }
    for w in writers {
        w.await.unwrap();
    }
    let http_versions = http.await.unwrap();
    assert!(http_versions.windows(2).all(|w| w[0] < w[1]));
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(seen, expected, "accepted versions, in publication order");
    assert_eq!(env.stored_version("hot", ""), Some(total as u64));
    let doc: Value =
        serde_json::from_slice(&env.service.get(&classic("hot")).await.unwrap()).unwrap();
    let mut reported = json!({});
    for i in 0..CLIENTS {
        reported[format!("w{i}")] = json!(EACH - 1);
    }
    assert_eq!(
        doc["state"]["reported"], reported,
        "every client's last write is kept"
    );
    assert_eq!(doc["state"]["desired"], json!({"http": EACH - 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reaches_the_device_when_desired_changes_through_http() {
    let env = env().await;
    let mut device = env
        .client(
            "thermo",
            &[
                "$aws/things/thermo/shadow/update/delta",
                "$aws/things/thermo/shadow/update/accepted",
            ],
        )
        .await;
    publish(
        &device,
        "$aws/things/thermo/shadow/update",
        json!({"state": {"reported": {"temp": "32", "mode": "heat"}}}),
    )
    .await;
    assert_eq!(body(&recv(&mut device).await)["version"], 1);

    let outcome = env
        .service
        .update(
            &classic("thermo"),
            Bytes::from_static(br#"{"state":{"desired":{"temp":"20","mode":"heat"}}}"#),
        )
        .await
        .unwrap();
    assert_eq!(outcome.shadow.version, 2);
    let accepted = recv(&mut device).await;
    assert_eq!(accepted.topic, "$aws/things/thermo/shadow/update/accepted");
    let delta = recv(&mut device).await;
    assert_eq!(delta.topic, "$aws/things/thermo/shadow/update/delta");
    let d = body(&delta);
    assert_eq!(d["state"], json!({"temp": "20"}));
    assert_eq!(d["version"], 2);

    // GET shows the delta; the device reports back and the delta is gone.
    let doc: Value =
        serde_json::from_slice(&env.service.get(&classic("thermo")).await.unwrap()).unwrap();
    assert_eq!(doc["state"]["delta"], json!({"temp": "20"}));
    publish(
        &device,
        "$aws/things/thermo/shadow/update",
        json!({"state": {"reported": {"temp": "20"}}}),
    )
    .await;
    assert_eq!(body(&recv(&mut device).await)["version"], 3);
    nothing_more(&mut device).await;
    let doc: Value =
        serde_json::from_slice(&env.service.get(&classic("thermo")).await.unwrap()).unwrap();
    assert!(doc["state"].get("delta").is_none(), "{doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_delete_over_mqtt_with_rejections() {
    let env = env().await;
    let mut device = env
        .client(
            "dev",
            &[
                "$aws/things/dev/shadow/get/+",
                "$aws/things/dev/shadow/delete/+",
                "$aws/things/dev/shadow/update/rejected",
            ],
        )
        .await;
    publish(
        &device,
        "$aws/things/dev/shadow/get",
        json!({"clientToken": "g0"}),
    )
    .await;
    let m = recv(&mut device).await;
    assert_eq!(m.topic, "$aws/things/dev/shadow/get/rejected");
    let r = body(&m);
    assert_eq!(r["code"], 404);
    assert_eq!(r["message"], "No shadow exists with name: 'dev'");
    assert_eq!(r["clientToken"], "g0");

    publish(
        &device,
        "$aws/things/dev/shadow/update",
        json!({"nostate": 1}),
    )
    .await;
    let r = body(&recv(&mut device).await);
    assert_eq!(
        (r["code"].clone(), r["message"].clone()),
        (json!(400), json!("Missing required node: state"))
    );

    env.service
        .update(
            &classic("dev"),
            Bytes::from_static(br#"{"state":{"reported":{"a":1}}}"#),
        )
        .await
        .unwrap();
    publish(
        &device,
        "$aws/things/dev/shadow/update",
        json!({"state": {"reported": {"a": 2}}, "version": 7}),
    )
    .await;
    assert_eq!(body(&recv(&mut device).await)["code"], 409);

    // An empty payload is a valid get.
    device
        .publish(
            "$aws/things/dev/shadow/get",
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
        )
        .await
        .unwrap();
    let m = recv(&mut device).await;
    assert_eq!(m.topic, "$aws/things/dev/shadow/get/accepted");
    assert_eq!(body(&m)["state"], json!({"reported": {"a": 1}}));

    publish(
        &device,
        "$aws/things/dev/shadow/delete",
        json!({"clientToken": "d1"}),
    )
    .await;
    let m = recv(&mut device).await;
    assert_eq!(m.topic, "$aws/things/dev/shadow/delete/accepted");
    let a = body(&m);
    assert_eq!(
        (a["version"].clone(), a["clientToken"].clone()),
        (json!(1), json!("d1"))
    );
    publish(&device, "$aws/things/dev/shadow/delete", json!({})).await;
    assert_eq!(body(&recv(&mut device).await)["code"], 404);
    assert_eq!(
        env.service.get(&classic("dev")).await.unwrap_err().code,
        404
    );

    // Re-created within the retention window, the version continues.
    let outcome = env
        .service
        .update(
            &classic("dev"),
            Bytes::from_static(br#"{"state":{"reported":{"b":1}}}"#),
        )
        .await
        .unwrap();
    assert_eq!(outcome.shadow.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_shadows_are_separate_and_listed_by_page() {
    let env = env().await;
    let mut device = env
        .client("car", &["$aws/things/car/shadow/name/+/update/accepted"])
        .await;
    for name in ["engine", "doors", "$package", "wipers"] {
        publish(
            &device,
            &format!("$aws/things/car/shadow/name/{name}/update"),
            json!({"state": {"reported": {"name": name}}}),
        )
        .await;
        let m = recv(&mut device).await;
        assert_eq!(
            m.topic,
            format!("$aws/things/car/shadow/name/{name}/update/accepted")
        );
        assert_eq!(body(&m)["version"], 1);
    }
    // The classic shadow is separate and not listed.
    env.service
        .update(
            &classic("car"),
            Bytes::from_static(br#"{"state":{"reported":{"x":1}}}"#),
        )
        .await
        .unwrap();
    let named = ShadowId::parse("car", Some("doors")).unwrap();
    let doc: Value = serde_json::from_slice(&env.service.get(&named).await.unwrap()).unwrap();
    assert_eq!(doc["state"]["reported"], json!({"name": "doors"}));
    let missing = ShadowId::parse("car", Some("trunk")).unwrap();
    let e = env.service.get(&missing).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "No shadow exists with name: 'trunk'")
    );

    env.service.delete(&named, Some(1)).await.unwrap();
    let thing = ThingName::new("car").unwrap();
    let p1 = env.service.list_named(&thing, None, 2).await.unwrap();
    assert_eq!(p1.results, ["$package", "engine"]);
    let p2 = env
        .service
        .list_named(&thing, p1.next_token.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(p2.results, ["wipers"]);
    assert_eq!(p2.next_token, None);
    let nobody = ThingName::new("nobody").unwrap();
    assert!(
        env.service
            .list_named(&nobody, None, 10)
            .await
            .unwrap()
            .results
            .is_empty()
    );
    assert_eq!(
        env.service
            .list_named(&thing, Some("zz-bad"), 10)
            .await
            .unwrap_err()
            .code,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_requests_in_flight_for_one_thing_get_429() {
    let env = env().await;
    // 30 requests issued in one poll pass: the first ten are queued, the rest refused at
    // once, long before the first commit can free a place.
    let calls = (0..30).map(|n| {
        let service = env.service.clone();
        // Spread over shadows of one thing: the limit is per thing.
        let id = ShadowId::parse("busy", (n % 2 == 0).then_some("s")).unwrap();
        async move {
            let body = json!({"state": {"reported": {"n": n}}}).to_string();
            service.update(&id, Bytes::from(body)).await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let throttled: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(ok, MAX_IN_FLIGHT_PER_THING, "{results:?}");
    assert!(
        throttled
            .iter()
            .all(|e| e.code == 429 && e.aws_error_type() == "ThrottlingException")
    );
    // Another thing is not affected, and once the queue drained the thing is served again.
    let other = env
        .service
        .update(
            &classic("calm"),
            Bytes::from_static(br#"{"state":{"reported":{"a":1}}}"#),
        )
        .await;
    assert!(other.is_ok());
    assert!(env.service.get(&classic("busy")).await.is_ok());

    // Over MQTT the refusal is a rejected document with code 429.
    let mut device = env
        .client("burst", &["$aws/things/burst/shadow/update/+"])
        .await;
    for n in 0..40 {
        publish(
            &device,
            "$aws/things/burst/shadow/update",
            json!({"state": {"reported": {"n": n}}, "clientToken": format!("c{n}")}),
        )
        .await;
    }
    let (mut accepted, mut rejected) = (0, 0);
    loop {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), device.recv()).await else {
            break;
        };
        if m.topic.ends_with("/accepted") {
            accepted += 1;
        } else if m.topic.ends_with("/rejected") {
            let r = body(&m);
            assert_eq!(
                (r["code"].clone(), r["message"].clone()),
                (json!(429), json!("Too many requests"))
            );
            assert!(r["clientToken"].as_str().unwrap().starts_with('c'));
            rejected += 1;
        }
    }
    assert_eq!(accepted + rejected, 40);
    assert_eq!(env.stored_version("burst", ""), Some(accepted));
    eprintln!("MQTT burst of 40: {accepted} accepted, {rejected} throttled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_update_publishes_like_mqtt_and_delete_publishes_delete_accepted() {
    let env = env().await;
    let mut watcher = env
        .client(
            "watch",
            &[
                "$aws/things/w/shadow/update/+",
                "$aws/things/w/shadow/delete/+",
            ],
        )
        .await;
    let outcome = env
        .service
        .update(
            &classic("w"),
            Bytes::from_static(br#"{"state":{"desired":{"c":"red"}},"clientToken":"h"}"#),
        )
        .await
        .unwrap();
    let topics = [
        "$aws/things/w/shadow/update/accepted",
        "$aws/things/w/shadow/update/delta",
        "$aws/things/w/shadow/update/documents",
    ];
    for topic in topics {
        let m = recv(&mut watcher).await;
        assert_eq!(m.topic, topic);
        assert_eq!(body(&m)["clientToken"], "h");
    }
    assert_eq!(
        serde_json::from_slice::<Value>(&outcome.accepted).unwrap()["version"],
        1
    );
    let refused = env
        .service
        .update(&classic("w"), Bytes::from_static(b"not json"))
        .await
        .unwrap_err();
    assert_eq!(refused.code, 400);
    assert_eq!(
        env.service
            .delete(&classic("w"), Some(5))
            .await
            .unwrap_err()
            .code,
        409
    );
    let body_bytes = env.service.delete(&classic("w"), None).await.unwrap();
    let m = recv(&mut watcher).await;
    assert_eq!(m.topic, "$aws/things/w/shadow/delete/accepted");
    assert_eq!(m.payload, Bytes::from(body_bytes));
    nothing_more(&mut watcher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_survive_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thingd.db");
    {
        let store = Store::open(&path).unwrap();
        let broker =
            Broker::new(BrokerConfig::default(), store.clone(), Arc::new(AllowAll)).unwrap();
        let shutdown = CancellationToken::new();
        let service = ShadowService::start(
            &broker,
            store.clone(),
            ShadowLimits::default(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        for n in 0..3 {
            let body = json!({"state": {"reported": {"n": n}}}).to_string();
            service
                .update(&classic("keep"), Bytes::from(body))
                .await
                .unwrap();
        }
        shutdown.cancel();
        broker.shutdown().await;
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.close())
            .await
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let broker = Broker::new(BrokerConfig::default(), store.clone(), Arc::new(AllowAll)).unwrap();
    let service = ShadowService::start(
        &broker,
        store,
        ShadowLimits::default(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let doc: Value = serde_json::from_slice(&service.get(&classic("keep")).await.unwrap()).unwrap();
    assert_eq!(doc["version"], 3);
    assert_eq!(doc["state"]["reported"], json!({"n": 2}));
}
