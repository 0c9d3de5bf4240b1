//! The end-to-end tests: each module drives a real thingd with real clients.

mod api_security;
mod api_things;
mod aws_sdk_rust;
mod cert_https;
mod cli;
mod device_sdk;
mod file_limit;
mod https_api;
mod lifecycle_events;
mod metrics;
mod mosquitto_clients;
mod paho;
mod persistence;
mod policy_enforcement;
mod quickstart;
mod raw_protocol;
mod revocation;
mod rumqttc_v311;
mod rumqttc_v5;
mod shadow;
mod tls_refusals;
mod websocket;
