//! `BrokerConfig` defaults and the small pure rules derived from it (keep-alive clamping,
//! session/message expiry caps, topic limits).

use std::time::Duration;

use thingd_mqtt::ReasonCode;
use thingd_topic::TopicLimits;

use crate::BrokerConfig;

impl Default for BrokerConfig {
    fn default() -> Self {
        let max_payload = 128 * 1024;
        BrokerConfig {
            max_payload,
            // Payload plus room for the fixed header, topic and properties.
            max_packet_size: max_payload + 16 * 1024,
            max_client_id_len: 128,
            topic_max_len: 256,
            topic_max_levels: 8,
            max_filters_per_subscribe: 8,
            max_subscriptions: 50,
            keep_alive_min: 30,
            keep_alive_max: 1200,
            receive_maximum: 100,
            max_inflight_out: 100,
            topic_alias_maximum: 8,
            maximum_qos: 2,
            max_session_expiry: 3600,
            max_queued_messages: 1000,
            outbound_queue: 4096,
            connect_timeout: Duration::from_secs(10),
            max_message_expiry: 604_800,
            max_publishes_per_second: 0,
        }
    }
}

impl BrokerConfig {
    /// Why a PUBLISH with this topic, these properties, a payload of `payload_len` bytes and
    /// `qos` must be refused: the reason code and a text for the log. Shared by clients'
    /// PUBLISHes and in-process publishes.
    pub(crate) fn check_publish(
        &self,
        topic: &str,
        properties: &thingd_mqtt::Properties,
        payload_len: usize,
        qos: thingd_mqtt::QoS,
    ) -> Result<(), (ReasonCode, &'static str)> {
        crate::reserved::check_publish_topic(topic, &self.topic_limits())
            .map_err(|why| (ReasonCode::TopicNameInvalid, why))?;
        // MQTT-3.3.2-14: a Response Topic is a topic name, never a filter.
        if let Some(response_topic) = &properties.response_topic
            && (response_topic.is_empty() || response_topic.contains(['+', '#']))
        {
            return Err((
                ReasonCode::ProtocolError,
                "response topic must be a topic name",
            ));
        }
        if payload_len > self.max_payload {
            return Err((ReasonCode::PacketTooLarge, "payload too large"));
        }
        if qos > self.max_qos() {
            return Err((ReasonCode::QoSNotSupported, "QoS not supported"));
        }
        Ok(())
    }

    /// The topic limits for the topic crate.
    pub(crate) fn topic_limits(&self) -> TopicLimits {
        TopicLimits {
            max_len: self.topic_max_len,
            max_levels: self.topic_max_levels,
        }
    }

    /// The keep-alive the server uses for a requested value: 0 means the maximum, and
    /// anything outside `keep_alive_min..=keep_alive_max` is clamped into it (AWS rule).
    pub(crate) fn effective_keep_alive(&self, requested: u16) -> u16 {
        clamp_keep_alive(requested, self.keep_alive_min, self.keep_alive_max)
    }

    /// The session expiry the server grants for a requested one.
    pub(crate) fn effective_session_expiry(&self, requested: u32) -> u32 {
        requested.min(self.max_session_expiry)
    }

    /// The maximum QoS as a `QoS` value (values above 2 count as 2).
    pub(crate) fn max_qos(&self) -> thingd_mqtt::QoS {
        thingd_mqtt::QoS::from_u8(self.maximum_qos.min(2)).unwrap_or(thingd_mqtt::QoS::AtMostOnce)
    }
}

/// Keep-alive clamping: 0 → `max`; below `min` → `min`; above `max` → `max`.
pub(crate) fn clamp_keep_alive(requested: u16, min: u16, max: u16) -> u16 {
    let min = min.min(max);
    if requested == 0 {
        max
    } else {
        requested.clamp(min, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_clamping() {
        assert_eq!(clamp_keep_alive(0, 30, 1200), 1200);
        assert_eq!(clamp_keep_alive(1, 30, 1200), 30);
        assert_eq!(clamp_keep_alive(29, 30, 1200), 30);
        assert_eq!(clamp_keep_alive(30, 30, 1200), 30);
        assert_eq!(clamp_keep_alive(600, 30, 1200), 600);
        assert_eq!(clamp_keep_alive(1201, 30, 1200), 1200);
        assert_eq!(clamp_keep_alive(u16::MAX, 30, 1200), 1200);
        // A misconfigured min > max never panics.
        assert_eq!(clamp_keep_alive(10, 50, 20), 20);
    }

    #[test]
    fn defaults_are_aws_limits() {
        let c = BrokerConfig::default();
        assert_eq!(c.max_payload, 131_072);
        assert_eq!(c.max_packet_size, 131_072 + 16_384);
        assert_eq!(c.effective_session_expiry(100_000), 3600);
        assert_eq!(c.max_qos(), thingd_mqtt::QoS::ExactlyOnce);
    }
}
