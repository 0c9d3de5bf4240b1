//! Certificate-authenticated HTTPS for the data plane, as AWS IoT serves it to devices on
//! port 8443: a request that carries no SigV4 signature but arrived over TLS with a client
//! certificate is authorized by the IoT policies attached to that certificate, with the
//! action and resource the operation names (`iot:GetThingShadow` on `thing/<name>[/<shadow>]`,
//! `iot:Publish` on `topic/<topic>`, ...).

use std::collections::HashMap;

use thingd_policy::IotAction;

/// Decides whether a certificate may perform an action on a resource (a full ARN).
pub trait HttpAuthorizer: Send + Sync + 'static {
    /// True if the policies of `certificate_id` allow `action` on `resource`.
    fn allows(&self, certificate_id: &str, action: &IotAction, resource: &str) -> bool;
}

/// The actions and resources (as `kind/name`, without the ARN prefix) that a data-plane
/// request needs; `None` for a path that is not a data-plane operation.
pub(crate) fn required_permissions(
    method: &axum::http::Method,
    path: &str,
    query: &HashMap<String, String>,
) -> Option<Vec<(IotAction, String)>> {
    use axum::http::Method;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    if let Some(rest) = path.strip_prefix("/things/")
        && let Some(thing) = rest.strip_suffix("/shadow")
    {
        let thing = decode(thing);
        let resource = match query.get("name") {
            Some(shadow) => format!("thing/{thing}/{shadow}"),
            None => format!("thing/{thing}"),
        };
        let action = match *method {
            Method::GET => IotAction::GetThingShadow,
            Method::POST => IotAction::UpdateThingShadow,
            Method::DELETE => IotAction::DeleteThingShadow,
            _ => return None,
        };
        return Some(vec![(action, resource)]);
    }
    if let Some(thing) = path.strip_prefix("/api/things/shadow/ListNamedShadowsForThing/") {
        return Some(vec![(
            IotAction::ListNamedShadowsForThing,
            format!("thing/{}", decode(thing)),
        )]);
    }
    if let Some(topic) = path.strip_prefix("/topics/") {
        let resource = format!("topic/{}", decode(topic));
        let mut needed = vec![(IotAction::Publish, resource.clone())];
        if query
            .get("retain")
            .is_some_and(|r| r.eq_ignore_ascii_case("true"))
        {
            needed.push((IotAction::RetainPublish, resource));
        }
        return Some(needed);
    }
    if let Some(topic) = path.strip_prefix("/retainedMessage/") {
        return Some(vec![(
            IotAction::GetRetainedMessage,
            format!("topic/{}", decode(topic)),
        )]);
    }
    if path == "/retainedMessage" {
        return Some(vec![(IotAction::ListRetainedMessages, "*".to_owned())]);
    }
    None
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn each_operation_names_its_action_and_resource() {
        let none = HashMap::new();
        let named: HashMap<String, String> = [("name".to_owned(), "cfg".to_owned())].into();
        let retain: HashMap<String, String> = [("retain".to_owned(), "true".to_owned())].into();
        assert_eq!(
            required_permissions(&Method::GET, "/things/dev%3A1/shadow", &none),
            Some(vec![(IotAction::GetThingShadow, "thing/dev:1".to_owned())])
        );
        assert_eq!(
            required_permissions(&Method::POST, "/things/dev1/shadow", &named),
            Some(vec![(
                IotAction::UpdateThingShadow,
                "thing/dev1/cfg".to_owned()
            )])
        );
        assert_eq!(
            required_permissions(&Method::POST, "/topics/a%2Fb", &retain),
            Some(vec![
                (IotAction::Publish, "topic/a/b".to_owned()),
                (IotAction::RetainPublish, "topic/a/b".to_owned())
            ])
        );
        assert_eq!(
            required_permissions(&Method::GET, "/retainedMessage", &none),
            Some(vec![(IotAction::ListRetainedMessages, "*".to_owned())])
        );
        assert_eq!(
            required_permissions(&Method::GET, "/things/dev1", &none),
            None
        );
    }
}
