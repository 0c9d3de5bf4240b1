//! Certificate-authenticated HTTPS on the TLS port: a provisioned device uses the iot-data
//! API with its client certificate and its least-privilege policy decides.

use std::process::Command;
use std::time::Duration;

use thingd_tests::{TestServer, python, repo_root, run_with_timeout, thingd_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_uses_its_shadow_over_https_with_its_certificate_and_policy() {
    let server = TestServer::start().await.expect("thingd starts");
    let https = server.running.https.expect("https listener");
    let out = server.data_dir.path().join("cert-https-device");
    let provisioned = Command::new(thingd_binary().expect("thingd binary"))
        .args(["device", "provision", "porch-light", "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(server.data_dir.path())
        .output()
        .expect("provision runs");
    assert!(
        provisioned.status.success(),
        "{}",
        String::from_utf8_lossy(&provisioned.stderr)
    );
    let mut command = Command::new(python().expect("the test virtualenv"));
    command
        .arg(repo_root().join("tests/python/cert_https.py"))
        .env("THINGD_HTTPS_PORT", https.port().to_string())
        .env("THINGD_ROOT_CA", out.join("root-ca.pem"))
        .env("DEVICE_CERT", out.join("certificate.pem.crt"))
        .env("DEVICE_KEY", out.join("private.pem.key"))
        .env("THING", "porch-light");
    let finished = tokio::task::block_in_place(|| {
        run_with_timeout(&mut command, "cert_https.py", Duration::from_secs(60))
    })
    .expect("the script runs");
    let finished = finished.ok().unwrap_or_else(|error| panic!("{error:#}"));
    assert!(finished.stdout.contains("ok cert https"), "{finished}");
    server.stop().await;
}
