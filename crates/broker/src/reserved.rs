//! Rules for topics a client may publish to. The AWS reserved-topic rules grow here.

use thingd_topic::TopicLimits;

/// Checks the topic of a PUBLISH (or a Will): a valid topic name, and for `$` topics one of
/// the reserved prefixes the server serves. Today that is `$aws/...` (device services attach
/// to those topics through internal clients); any other `$` topic, such as `$SYS/x`, is
/// treated as an invalid topic name.
pub(crate) fn check_publish_topic(topic: &str, limits: &TopicLimits) -> Result<(), &'static str> {
    if thingd_topic::validate_topic_name(topic, limits).is_err() {
        return Err("invalid topic name");
    }
    if topic.starts_with('$') && !topic.starts_with("$aws/") {
        return Err("reserved topic");
    }
    Ok(())
}

/// Whether a retained message may be stored on `topic`. AWS does not allow retained
/// messages on reserved (`$`) topics; such a publish is answered like a policy denial
/// (3.1.1: close; v5: PUBACK/PUBREC 0x87 for QoS 1/2, DISCONNECT 0x87 for QoS 0).
pub(crate) fn retain_allowed(topic: &str) -> bool {
    !topic.starts_with('$')
}
