//! The HTTP APIs on the TLS port (ALPN http/1.1 or none): boto3 with `endpoint_url=https://...`
//! and the thingd root CA, no client certificate.

use std::process::Command;
use std::time::Duration;

use thingd_tests::{TestServer, python, repo_root, run_with_timeout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reaches_both_planes_over_https_without_a_client_certificate() {
    let server = TestServer::start().await.expect("thingd starts");
    let https = server
        .running
        .https
        .expect("the https listener is on in tests");
    let data_dir = server.data_dir.path();
    let mut command = Command::new(python().expect("the test virtualenv"));
    command
        .arg(repo_root().join("tests/python/https_api.py"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            data_dir.join("aws-credentials"),
        )
        .env("AWS_CONFIG_FILE", data_dir.join("aws-config"))
        .env(
            "THINGD_HTTPS_URL",
            format!("https://localhost:{}", https.port()),
        )
        .env("THINGD_ROOT_CA", &server.running.root_ca_path)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let finished = tokio::task::block_in_place(|| {
        run_with_timeout(&mut command, "https_api.py", Duration::from_secs(60))
    })
    .expect("the script runs");
    let finished = finished.ok().unwrap_or_else(|error| panic!("{error:#}"));
    assert!(finished.stdout.contains("ok https"), "{finished}");
    server.stop().await;
}
