//! The getting-started flow with the AWS SDK for Rust (`aws-sdk-iot`), pointed at thingd with
//! an endpoint URL: create a thing, keys and a certificate, a policy, attach both, describe
//! the endpoint — then the device connects over mutual TLS with what the SDK returned.

use std::time::Duration;

use aws_sdk_iot::config::{BehaviorVersion, Credentials, Region};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use thingd_tests::TestServer;

/// Reads the admin key thingd wrote for the AWS CLI.
fn admin_key(data_dir: &std::path::Path) -> (String, String) {
    let text = std::fs::read_to_string(data_dir.join("aws-credentials")).expect("credentials file");
    let value = |key: &str| {
        text.lines()
            .find_map(|l| {
                l.split_once('=')
                    .filter(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim().to_owned())
            })
            .expect("key in the credentials file")
    };
    (value("aws_access_key_id"), value("aws_secret_access_key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_for_rust_runs_the_getting_started_flow() {
    let server = TestServer::start().await.expect("thingd starts");
    let api = server.running.api.expect("api listener");
    let (key, secret) = admin_key(server.data_dir.path());
    let config = aws_sdk_iot::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{api}"))
        .credentials_provider(Credentials::new(key, secret, None, None, "thingd-test"))
        .build();
    let iot = aws_sdk_iot::Client::from_conf(config);

    let thing = iot
        .create_thing()
        .thing_name("MyJourneyIoTDevice")
        .send()
        .await
        .expect("create-thing");
    assert_eq!(thing.thing_name(), Some("MyJourneyIoTDevice"));
    let keys = iot
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .expect("create-keys-and-certificate");
    let certificate_arn = keys.certificate_arn().expect("certificate arn").to_owned();
    let certificate_pem = keys.certificate_pem().expect("certificate pem").to_owned();
    let private_key = keys
        .key_pair()
        .and_then(|k| k.private_key())
        .expect("private key")
        .to_owned();
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:*:client/MyJourneyIoTDevice"},
        {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"arn:aws:iot:us-east-1:*:topic/$aws/things/MyJourneyIoTDevice/shadow/*"},
        {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws:iot:us-east-1:*:topicfilter/$aws/things/MyJourneyIoTDevice/shadow/*"}]}"#;
    iot.create_policy()
        .policy_name("dev")
        .policy_document(policy)
        .send()
        .await
        .expect("create-policy");
    iot.attach_policy()
        .policy_name("dev")
        .target(&certificate_arn)
        .send()
        .await
        .expect("attach-policy");
    iot.attach_thing_principal()
        .thing_name("MyJourneyIoTDevice")
        .principal(&certificate_arn)
        .send()
        .await
        .expect("attach-thing-principal");
    let endpoint = iot
        .describe_endpoint()
        .endpoint_type("iot:Data-ATS")
        .send()
        .await
        .expect("describe-endpoint");
    assert_eq!(endpoint.endpoint_address(), Some("localhost"));

    // A typed error comes back as the SDK's modeled error.
    let missing = iot
        .describe_thing()
        .thing_name("nope")
        .send()
        .await
        .expect_err("missing thing");
    assert!(
        missing
            .into_service_error()
            .is_resource_not_found_exception()
    );

    // The device connects with what the SDK returned and gets its shadow update accepted.
    thingd_tests::install_crypto_provider();
    let root = std::fs::read(&server.running.root_ca_path).expect("root CA");
    let mut options = MqttOptions::new("MyJourneyIoTDevice", "localhost", server.mqtts().port());
    options.set_transport(Transport::tls(
        root,
        Some((certificate_pem.into_bytes(), private_key.into_bytes())),
        None,
    ));
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe(
            "$aws/things/MyJourneyIoTDevice/shadow/update/accepted",
            QoS::AtLeastOnce,
        )
        .await
        .expect("subscribe queued");
    let mut published = false;
    let accepted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await.expect("connection stays up") {
                Event::Incoming(Packet::SubAck(_)) if !published => {
                    published = true;
                    client
                        .publish(
                            "$aws/things/MyJourneyIoTDevice/shadow/update",
                            QoS::AtLeastOnce,
                            false,
                            r#"{"state":{"reported":{"temp":"32"}}}"#,
                        )
                        .await
                        .expect("publish queued");
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("update/accepted within 10 s");
    let body: serde_json::Value = serde_json::from_slice(&accepted.payload).expect("json");
    assert_eq!(body["state"]["reported"]["temp"], "32");
    server.stop().await;
}
