//! The security half of the `iot` control plane (certificates, CA certificates, the
//! registration code, policies and versions, policy targets, thing principals) driven by
//! boto3 and the AWS CLI v1, configured only through the files thingd writes into its data
//! directory; the certificates it hands out (and ones registered with or without a CA) are
//! then used by paho-mqtt over mutual TLS. The checks live in
//! `tests/python/boto3_security.py`.

use std::process::Command;
use std::time::Duration;

use thingd_tests::{TestServer, python, repo_root, run_with_timeout};

/// Upper bound for the whole script (it starts the AWS CLI and openssl many times).
const RUN: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_the_aws_cli_manage_certificates_and_policies() {
    let server = TestServer::start().await.expect("thingd starts");
    let api = server.running.api.expect("the api listener is on in tests");
    let data_dir = server.data_dir.path();
    let mut command = Command::new(python().expect("the test virtualenv"));
    command
        .arg(repo_root().join("tests/python/boto3_security.py"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            data_dir.join("aws-credentials"),
        )
        .env("AWS_CONFIG_FILE", data_dir.join("aws-config"))
        .env("AWS_ENDPOINT_URL", format!("http://{api}"))
        .env("THINGD_MQTTS", server.mqtts().to_string())
        .env("THINGD_ROOT_CA", &server.running.root_ca_path)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_REGION");
    let finished =
        tokio::task::block_in_place(|| run_with_timeout(&mut command, "boto3_security.py", RUN))
            .expect("the script runs");
    let finished = finished.ok().unwrap_or_else(|error| panic!("{error:#}"));
    assert!(finished.stdout.contains("ok "), "{finished}");
    eprintln!("boto3_security.py: {}", finished.stdout.trim());
    server.stop().await;
}
