//! The end-to-end tests: each module drives a real thingd with real clients.

mod api_security;
mod api_things;
mod cli;
mod device_sdk;
mod metrics;
mod mosquitto_clients;
mod paho;
mod persistence;
mod quickstart;
mod raw_protocol;
mod revocation;
mod shadow;
mod rumqttc_v311;
mod rumqttc_v5;
mod tls_refusals;
mod websocket;
mod policy_enforcement;
mod https_api;
mod aws_sdk_rust;
mod lifecycle_events;
mod cert_https;
