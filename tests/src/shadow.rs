//! The Device Shadow service end to end, with clients nobody here wrote: the seed article's
//! demo (a device reporting over MQTT with mutual TLS, the AWS CLI reading the shadow, boto3
//! setting `desired` and the device receiving the delta), the AWS IoT Device SDK v2 for
//! Python's shadow client over MQTT 3.1.1 and MQTT 5 (`tests/python/awsiotsdk_shadow.py`),
//! and a kill -9 that must not lose an acknowledged shadow version.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rumqttc::{MqttOptions, QoS};
use serde_json::{Value, json};
use thingd_tests::{
    DeviceFiles, ProcessServer, TestServer, issue_device, python, repo_root, run_with_timeout,
};

use crate::rumqttc_v311::V3;

const THING: &str = "MyJourneyIoTDevice";
const RUN: Duration = Duration::from_secs(120);

/// A command with the AWS CLI/boto3 environment of the data directory and API address.
fn aws_env(command: &mut Command, data_dir: &Path, api: std::net::SocketAddr) {
    command
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            data_dir.join("aws-credentials"),
        )
        .env("AWS_CONFIG_FILE", data_dir.join("aws-config"))
        .env("AWS_ENDPOINT_URL", format!("http://{api}"))
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_REGION");
}

/// `aws iot-data get-thing-shadow --thing-name <thing> out.json` (AWS CLI v1 from the venv);
/// returns the document it wrote.
fn cli_get_shadow(data_dir: &Path, api: std::net::SocketAddr, thing: &str) -> Value {
    let aws = repo_root().join(".venv/bin/aws");
    let out = data_dir.join(format!("{thing}-out.json"));
    let mut command = Command::new(aws);
    command
        .args(["iot-data", "get-thing-shadow", "--thing-name", thing])
        .arg(&out);
    aws_env(&mut command, data_dir, api);
    let finished = run_with_timeout(&mut command, "aws iot-data get-thing-shadow", RUN)
        .expect("the AWS CLI runs");
    finished.ok().unwrap_or_else(|error| panic!("{error:#}"));
    serde_json::from_slice(&std::fs::read(&out).expect("out.json written"))
        .expect("out.json is JSON")
}

/// Runs a boto3 snippet; its last stdout line must be a JSON object, which is returned.
fn boto3(data_dir: &Path, api: std::net::SocketAddr, code: &str) -> Value {
    let prelude = "import base64, json, boto3\nfrom botocore.exceptions import ClientError\n\
                   c = boto3.client('iot-data')\n\
                   def code_of(f):\n    try:\n        f()\n        return None\n    except ClientError as e:\n        return [e.response['Error']['Code'], e.response['ResponseMetadata']['HTTPStatusCode'], e.response['Error']['Message']]\n";
    let mut command = Command::new(python().expect("the test virtualenv"));
    command.arg("-c").arg(format!("{prelude}{code}"));
    aws_env(&mut command, data_dir, api);
    let finished = run_with_timeout(&mut command, "boto3 iot-data", RUN).expect("python runs");
    let finished = finished.ok().unwrap_or_else(|error| panic!("{error:#}"));
    let last = finished
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("no JSON line ({e}): {finished}"))
}

fn payload_json(p: &rumqttc::Publish) -> Value {
    serde_json::from_slice(&p.payload).expect("JSON payload")
}

/// The next PUBLISH on `topic` (others are skipped).
async fn next_on(device: &mut V3, topic: &str) -> Value {
    loop {
        let p = device.next_publish().await.expect("a publish");
        if p.topic == topic {
            return payload_json(&p);
        }
    }
}

fn device_options(id: &str, port: u16, device: &DeviceFiles) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_transport(device.rumqttc_transport());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_demo_device_reports_the_cli_reads_and_boto3_sets_desired() {
    let server = TestServer::start().await.expect("thingd starts");
    let api = server.running.api.expect("the api listener is on in tests");
    let data_dir = server.data_dir.path().to_path_buf();
    let files = server
        .issue_device(THING)
        .await
        .expect("device certificate");
    let (mut device, _) = V3::connect(device_options(THING, server.mqtts().port(), &files))
        .await
        .expect("the device connects");
    let prefix = format!("$aws/things/{THING}/shadow");
    device
        .sub(&format!("{prefix}/update/accepted"), QoS::AtLeastOnce)
        .await
        .unwrap();
    device
        .sub(&format!("{prefix}/update/delta"), QoS::AtLeastOnce)
        .await
        .unwrap();

    // The device publishes what the seed's ESP32 sends.
    device
        .client
        .publish(
            format!("{prefix}/update"),
            QoS::AtLeastOnce,
            false,
            r#"{"state":{"reported":{"temp":"32"}}}"#,
        )
        .await
        .unwrap();
    let accepted = next_on(&mut device, &format!("{prefix}/update/accepted")).await;
    assert_eq!(accepted["version"], 1, "{accepted}");

    // aws iot-data get-thing-shadow --thing-name MyJourneyIoTDevice out.json
    let doc = tokio::task::block_in_place(|| cli_get_shadow(&data_dir, api, THING));
    assert_eq!(doc["state"]["reported"], json!({"temp": "32"}), "{doc}");
    assert_eq!(doc["version"], 1);
    assert!(
        doc["metadata"]["reported"]["temp"]["timestamp"]
            .as_i64()
            .unwrap()
            > 0
    );

    // boto3 sets desired; then the error codes boto3 sees.
    let result = tokio::task::block_in_place(|| {
        boto3(
            &data_dir,
            api,
            &format!(
                r#"
r = c.update_thing_shadow(thingName='{THING}', payload=json.dumps({{'state': {{'desired': {{'temp': '25'}}}}}}).encode())
updated = json.loads(r['payload'].read())
missing = code_of(lambda: c.get_thing_shadow(thingName='NoSuchThing'))
conflict = code_of(lambda: c.update_thing_shadow(thingName='{THING}', payload=b'{{"state":{{"desired":{{"temp":"1"}}}},"version":1}}'))
bad = code_of(lambda: c.update_thing_shadow(thingName='{THING}', payload=b'not json'))
c.update_thing_shadow(thingName='{THING}', shadowName='config', payload=b'{{"state":{{"desired":{{"rate":10}}}}}}')
named = c.list_named_shadows_for_thing(thingName='{THING}')['results']
got = json.loads(c.get_thing_shadow(thingName='{THING}')['payload'].read())
c.publish(topic='demo/retained', qos=1, retain=True, payload=b'hello')
retained = c.get_retained_message(topic='demo/retained')
listed = [t['topic'] for t in c.list_retained_messages()['retainedTopics']]
print(json.dumps({{'updated': updated, 'missing': missing, 'conflict': conflict, 'bad': bad, 'named': named,
  'delta': got['state'].get('delta'), 'retained': [retained['topic'], retained['payload'].decode(), retained['qos']],
  'listed': listed}}))
"#
            ),
        )
    });
    assert_eq!(result["updated"]["version"], 2, "{result}");
    assert_eq!(
        result["updated"]["state"],
        json!({"desired": {"temp": "25"}})
    );
    assert_eq!(
        result["missing"],
        json!([
            "ResourceNotFoundException",
            404,
            "No shadow exists with name: 'NoSuchThing'"
        ])
    );
    assert_eq!(
        result["conflict"],
        json!(["ConflictException", 409, "Version conflict"])
    );
    assert_eq!(
        result["bad"],
        json!(["InvalidRequestException", 400, "Invalid JSON"])
    );
    assert_eq!(result["named"], json!(["config"]));
    assert_eq!(result["delta"], json!({"temp": "25"}));
    assert_eq!(result["retained"], json!(["demo/retained", "hello", 1]));
    assert_eq!(result["listed"], json!(["demo/retained"]));

    // The device receives the delta boto3 caused.
    let delta = next_on(&mut device, &format!("{prefix}/update/delta")).await;
    assert_eq!(delta["state"], json!({"temp": "25"}), "{delta}");
    assert_eq!(delta["version"], 2);
    drop(device);
    server.stop().await;
}

fn run_sdk(protocol: &str, files: &DeviceFiles, port: u16, thing: &str) -> Value {
    let mut command = Command::new(python().expect("the test virtualenv"));
    command
        .arg(repo_root().join("tests/python/awsiotsdk_shadow.py"))
        .args([
            "--protocol",
            protocol,
            "--endpoint",
            "localhost",
            "--port",
            &port.to_string(),
        ])
        .arg("--ca")
        .arg(&files.ca)
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .args(["--thing", thing]);
    let finished = run_with_timeout(
        &mut command,
        &format!("awsiotsdk_shadow.py --protocol {protocol}"),
        RUN,
    )
    .expect("the script runs");
    finished
        .paho_result()
        .unwrap_or_else(|error| panic!("{error:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_iot_device_sdk_shadow_client_over_mqtt_311_and_mqtt_5() {
    let server = TestServer::start().await.expect("thingd starts");
    let files = server
        .issue_device("sdk-device")
        .await
        .expect("device certificate");
    let port = server.mqtts().port();
    for (protocol, thing) in [("311", "SdkThing311"), ("5", "SdkThing5")] {
        let result = tokio::task::block_in_place(|| run_sdk(protocol, &files, port, thing));
        assert_eq!(result["protocol"], protocol);
        assert_eq!(result["delta"], json!({"temp": "20", "fan": "on"}));
        assert_eq!(result["recreated_version"], 4);
    }
    server.stop().await;
}

fn api_addr(data_dir: &Path) -> std::net::SocketAddr {
    let text = std::fs::read_to_string(data_dir.join("listeners.json")).expect("listeners.json");
    let json: Value = serde_json::from_str(&text).expect("listeners.json is JSON");
    json["api"]
        .as_str()
        .expect("api address")
        .parse()
        .expect("api address parses")
}

#[test]
fn a_shadow_and_its_version_survive_kill_9() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let files = rt
        .block_on(issue_device(dir.path(), THING))
        .expect("thingd cert issue");
    let mut server =
        ProcessServer::start(dir.path(), &["--api", "127.0.0.1:0"]).expect("thingd serve starts");
    let prefix = format!("$aws/things/{THING}/shadow");

    rt.block_on(async {
        let (mut device, _) = V3::connect(device_options(THING, server.mqtts.port(), &files))
            .await
            .expect("the device connects");
        device
            .sub(&format!("{prefix}/update/accepted"), QoS::AtLeastOnce)
            .await
            .unwrap();
        for n in 1..=5 {
            let body = json!({"state": {"reported": {"temp": format!("{}", 30 + n)}}});
            device
                .client
                .publish(
                    format!("{prefix}/update"),
                    QoS::AtLeastOnce,
                    false,
                    body.to_string(),
                )
                .await
                .unwrap();
            let accepted = next_on(&mut device, &format!("{prefix}/update/accepted")).await;
            assert_eq!(accepted["version"], n);
        }
    });
    // Killed right after the last `accepted`: it was committed before it was sent.
    server.kill9();
    server
        .restart()
        .expect("thingd restarts on the same data directory");

    let doc = cli_get_shadow(dir.path(), api_addr(dir.path()), THING);
    assert_eq!(doc["version"], 5, "{doc}");
    assert_eq!(doc["state"]["reported"], json!({"temp": "35"}));

    // The next update continues from the kept version.
    rt.block_on(async {
        let (mut device, _) = V3::connect(device_options(THING, server.mqtts.port(), &files))
            .await
            .expect("the device reconnects");
        device
            .sub(&format!("{prefix}/update/accepted"), QoS::AtLeastOnce)
            .await
            .unwrap();
        device
            .client
            .publish(
                format!("{prefix}/update"),
                QoS::AtLeastOnce,
                false,
                r#"{"state":{"reported":{"temp":"40"}}}"#,
            )
            .await
            .unwrap();
        let accepted = next_on(&mut device, &format!("{prefix}/update/accepted")).await;
        assert_eq!(accepted["version"], 6);
    });
    server.terminate().expect("thingd stops");
}
