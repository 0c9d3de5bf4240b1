//! `thingd device provision`: everything a new device needs, in one command. It creates the
//! thing, a key pair and certificate signed by the thingd CA (registered ACTIVE), a
//! least-privilege policy for that thing, attaches the policy to the certificate and the
//! certificate to the thing, and writes the files firmware needs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use thingd_auth::CertificateAuthority;
use thingd_store::Store;
use thingd_store::registry::security::{attachments, policies, principals};
use thingd_store::registry::things::{self, NewThing};

use crate::config::Config;

/// What `provision` wrote.
#[derive(Debug)]
pub struct Provisioned {
    /// The certificate id.
    pub certificate_id: String,
    /// The policy created for the thing.
    pub policy_name: String,
    /// The files written, in the order they are listed to the user.
    pub files: Vec<PathBuf>,
}

/// The policy a provisioned thing gets: connect with its own name as client id; publish,
/// receive and retain under its shadow topics and `things/<name>/`; subscribe to filters
/// there; and read, update and delete its own shadows over HTTPS.
pub fn least_privilege_policy(config: &Config, thing: &str) -> String {
    let arn = |kind: &str, rest: &str| {
        format!(
            "arn:aws:iot:{}:{}:{kind}/{rest}",
            config.region, config.account_id
        )
    };
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": arn("client", thing),
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive", "iot:RetainPublish"],
                "Resource": [
                    arn("topic", &format!("$aws/things/{thing}/shadow/*")),
                    arn("topic", &format!("things/{thing}/*")),
                ],
            },
            {
                "Effect": "Allow",
                "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow"],
                "Resource": [arn("thing", thing), arn("thing", &format!("{thing}/*"))],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [
                    arn("topicfilter", &format!("$aws/things/{thing}/shadow/*")),
                    arn("topicfilter", &format!("things/{thing}/*")),
                ],
            },
        ],
    })
    .to_string()
}

/// Provisions `thing` and writes its files to `out`. Blocking.
pub fn provision(
    config: &Config,
    store: &Store,
    ca: &CertificateAuthority,
    thing: &str,
    out: &Path,
    rsa: bool,
) -> anyhow::Result<Provisioned> {
    let valid = !thing.is_empty()
        && thing.len() <= 128
        && thing
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
    if !valid {
        bail!(
            "{thing:?} is not a valid thing name: 1 to 128 characters of a-z, A-Z, 0-9, ':', '_' and '-'"
        );
    }
    let issued = ca.issue_and_register(store, thing, rsa)?;
    let certificate_arn = config.certificate_arn(issued.id.as_str());
    let policy_name = format!("{thing}-policy");
    let document = least_privilege_policy(config, thing);
    {
        let (thing_name, policy_name, document, certificate_arn) = (
            thing.to_owned(),
            policy_name.clone(),
            document.clone(),
            certificate_arn.clone(),
        );
        store
            .transact_blocking(move |conn| {
                let now = unix_now();
                // Provisioning an existing thing again is allowed: the thing is reused.
                things::create(
                    conn,
                    NewThing {
                        name: thing_name.clone(),
                        ..NewThing::default()
                    },
                    now,
                )?;
                if policies::get(conn, &policy_name)?.is_none() {
                    policies::create(conn, &policy_name, &document, now)?;
                }
                attachments::attach(conn, &policy_name, &certificate_arn, now)?;
                principals::attach(
                    conn,
                    &thing_name,
                    &certificate_arn,
                    "NON_EXCLUSIVE_THING",
                    now,
                )
            })
            .with_context(|| format!("registering thing {thing}"))?;
    }

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let endpoint = config.data_endpoint();
    let port = config.listeners.mqtts.map(|a| a.port()).unwrap_or(8883);
    let files = vec![
        (
            out.join("certificate.pem.crt"),
            issued.certificate_pem.clone(),
            0o644,
        ),
        (
            out.join("private.pem.key"),
            issued.private_key_pem.clone(),
            0o600,
        ),
        (out.join("root-ca.pem"), ca.root_pem().to_owned(), 0o644),
        (out.join("endpoint.txt"), format!("{endpoint}\n"), 0o644),
        (
            out.join("aws_certificate.h"),
            firmware_header(
                thing,
                &endpoint,
                port,
                ca.root_pem(),
                &issued.certificate_pem,
                &issued.private_key_pem,
            ),
            0o600,
        ),
    ];
    for (path, contents, mode) in &files {
        crate::cli::write_file(path, contents.as_bytes(), *mode)?;
    }
    Ok(Provisioned {
        certificate_id: issued.id.to_string(),
        policy_name,
        files: files.into_iter().map(|(path, _, _)| path).collect(),
    })
}

/// The current time in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A C header with the endpoint and the three PEM texts as string literals, one line of the
/// PEM per literal line, ready to `#include` in ESP32 (or any) firmware.
pub fn firmware_header(
    thing: &str,
    endpoint: &str,
    port: u16,
    root_ca: &str,
    certificate: &str,
    private_key: &str,
) -> String {
    let mut out = String::new();
    out.push_str(
        "// Generated by `thingd device provision`. Keep this file secret: it holds the\n",
    );
    out.push_str("// device's private key.\n#pragma once\n\n");
    out.push_str(&format!("#define THINGD_THING_NAME \"{thing}\"\n"));
    out.push_str(&format!("#define THINGD_ENDPOINT \"{endpoint}\"\n"));
    out.push_str(&format!("#define THINGD_MQTT_PORT {port}\n\n"));
    for (name, pem) in [
        ("AWS_ROOT_CA", root_ca),
        ("AWS_CERTIFICATE", certificate),
        ("AWS_PRIVATE_KEY", private_key),
    ] {
        out.push_str(&format!("static const char {name}[] =\n"));
        for line in pem.lines().filter(|l| !l.is_empty()) {
            out.push_str(&format!("    \"{line}\\n\"\n"));
        }
        out.push_str(";\n\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_holds_each_pem_line_as_a_literal() {
        let header = firmware_header(
            "dev1",
            "iot.example.com",
            8883,
            "-----BEGIN A-----\nAAA\n-----END A-----\n",
            "C",
            "K",
        );
        assert!(header.contains(
            "static const char AWS_ROOT_CA[] =\n    \"-----BEGIN A-----\\n\"\n    \"AAA\\n\""
        ));
        assert!(header.contains("#define THINGD_ENDPOINT \"iot.example.com\""));
        assert!(header.contains("static const char AWS_PRIVATE_KEY[] =\n    \"K\\n\"\n;"));
    }

    #[test]
    fn the_policy_names_only_the_things_own_resources() {
        let config = Config::default();
        let policy: serde_json::Value =
            serde_json::from_str(&least_privilege_policy(&config, "dev1")).unwrap();
        let text = policy.to_string();
        assert!(text.contains("client/dev1"));
        assert!(text.contains("topic/$aws/things/dev1/shadow/*"));
        assert!(text.contains("topicfilter/things/dev1/*"));
        assert!(!text.contains("\"Resource\":\"*\""));
        thingd_policy::PolicyDocument::parse(&policy.to_string()).unwrap();
    }
}
