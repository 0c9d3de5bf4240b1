//! Actions (`iot:Publish`, ...), the resource kinds they apply to, and ARN helpers.

use std::fmt;

/// An action a request asks to perform.
///
/// Names are matched ignoring case, as IAM does: [`IotAction::from_name`] maps any spelling of a
/// known action to its variant, so [`IotAction::Other`] never holds a known action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IotAction {
    /// `iot:Connect`, resource `client/<clientId>`.
    Connect,
    /// `iot:Publish`, resource `topic/<topic>`.
    Publish,
    /// `iot:Subscribe`, resource `topicfilter/<filter>`.
    Subscribe,
    /// `iot:Receive`, resource `topic/<topic>`, checked on every delivery.
    Receive,
    /// `iot:RetainPublish`, resource `topic/<topic>`, for a retained PUBLISH or Will.
    RetainPublish,
    /// `iot:GetThingShadow`, resource `thing/<thing>[/<shadow>]`.
    GetThingShadow,
    /// `iot:UpdateThingShadow`, resource `thing/<thing>[/<shadow>]`.
    UpdateThingShadow,
    /// `iot:DeleteThingShadow`, resource `thing/<thing>[/<shadow>]`.
    DeleteThingShadow,
    /// `iot:ListNamedShadowsForThing`, resource `thing/<thing>` (or `*`).
    ListNamedShadowsForThing,
    /// `iot:GetRetainedMessage`, resource `topic/<topic>`.
    GetRetainedMessage,
    /// `iot:ListRetainedMessages`, resource `*`.
    ListRetainedMessages,
    /// Any other action, by its full name (`iot:DescribeJobExecution`, `greengrass:Discover`).
    Other(String),
}

/// The known actions, in index order.
pub(crate) const KNOWN_ACTIONS: [IotAction; 11] = [
    IotAction::Connect,
    IotAction::Publish,
    IotAction::Subscribe,
    IotAction::Receive,
    IotAction::RetainPublish,
    IotAction::GetThingShadow,
    IotAction::UpdateThingShadow,
    IotAction::DeleteThingShadow,
    IotAction::ListNamedShadowsForThing,
    IotAction::GetRetainedMessage,
    IotAction::ListRetainedMessages,
];

const KNOWN_NAMES: [&str; 11] = [
    "iot:Connect",
    "iot:Publish",
    "iot:Subscribe",
    "iot:Receive",
    "iot:RetainPublish",
    "iot:GetThingShadow",
    "iot:UpdateThingShadow",
    "iot:DeleteThingShadow",
    "iot:ListNamedShadowsForThing",
    "iot:GetRetainedMessage",
    "iot:ListRetainedMessages",
];

impl IotAction {
    /// The action for a name such as `iot:Publish` (any case).
    pub fn from_name(name: &str) -> IotAction {
        match KNOWN_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
        {
            Some(i) => KNOWN_ACTIONS[i].clone(),
            None => IotAction::Other(name.to_owned()),
        }
    }

    /// The action for a TestAuthorization `AuthInfo.actionType` (`PUBLISH`, `SUBSCRIBE`,
    /// `RECEIVE`, `CONNECT`); `None` for anything else.
    pub fn from_auth_info_action_type(action_type: &str) -> Option<IotAction> {
        match action_type {
            "PUBLISH" => Some(IotAction::Publish),
            "SUBSCRIBE" => Some(IotAction::Subscribe),
            "RECEIVE" => Some(IotAction::Receive),
            "CONNECT" => Some(IotAction::Connect),
            _ => None,
        }
    }

    /// The full name, `iot:Publish` for example.
    pub fn name(&self) -> &str {
        match self.known_index() {
            Some(i) => KNOWN_NAMES[i],
            None => match self {
                IotAction::Other(name) => name,
                _ => "",
            },
        }
    }

    /// The kind of resource the action is normally checked against; `None` for
    /// `ListRetainedMessages` (resource `*`) and for other actions.
    pub fn resource_kind(&self) -> Option<ResourceKind> {
        match self {
            IotAction::Connect => Some(ResourceKind::Client),
            IotAction::Publish
            | IotAction::Receive
            | IotAction::RetainPublish
            | IotAction::GetRetainedMessage => Some(ResourceKind::Topic),
            IotAction::Subscribe => Some(ResourceKind::TopicFilter),
            IotAction::GetThingShadow
            | IotAction::UpdateThingShadow
            | IotAction::DeleteThingShadow
            | IotAction::ListNamedShadowsForThing => Some(ResourceKind::Thing),
            IotAction::ListRetainedMessages | IotAction::Other(_) => None,
        }
    }

    /// Position in [`KNOWN_ACTIONS`].
    pub(crate) fn known_index(&self) -> Option<usize> {
        Some(match self {
            IotAction::Connect => 0,
            IotAction::Publish => 1,
            IotAction::Subscribe => 2,
            IotAction::Receive => 3,
            IotAction::RetainPublish => 4,
            IotAction::GetThingShadow => 5,
            IotAction::UpdateThingShadow => 6,
            IotAction::DeleteThingShadow => 7,
            IotAction::ListNamedShadowsForThing => 8,
            IotAction::GetRetainedMessage => 9,
            IotAction::ListRetainedMessages => 10,
            IotAction::Other(_) => return None,
        })
    }
}

impl fmt::Display for IotAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The resource types of the MQTT and shadow actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// `client/<clientId>`.
    Client,
    /// `topic/<topic>`.
    Topic,
    /// `topicfilter/<filter>` (the filter as sent, `+` and `#` included).
    TopicFilter,
    /// `thing/<thingName>` or `thing/<thingName>/<shadowName>`.
    Thing,
}

impl ResourceKind {
    /// The resource-type part of the ARN including its slash: `topic/`.
    pub fn prefix(self) -> &'static str {
        match self {
            ResourceKind::Client => "client/",
            ResourceKind::Topic => "topic/",
            ResourceKind::TopicFilter => "topicfilter/",
            ResourceKind::Thing => "thing/",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ResourceKind::Client => 0,
            ResourceKind::Topic => 1,
            ResourceKind::TopicFilter => 2,
            ResourceKind::Thing => 3,
        }
    }
}

/// Builds the resource ARNs of one account and region:
/// `arn:aws:iot:<region>:<account>:<type>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arns {
    region: String,
    account: String,
    prefix: String,
}

impl Arns {
    /// ARNs in `region` (`us-east-1`) of `account` (twelve digits).
    pub fn new(region: &str, account: &str) -> Arns {
        Arns {
            region: region.to_owned(),
            account: account.to_owned(),
            prefix: format!("arn:aws:iot:{region}:{account}:"),
        }
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The account id.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// `arn:aws:iot:<region>:<account>:`, what every resource ARN here starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The ARN of a resource of `kind` named `name`.
    pub fn resource(&self, kind: ResourceKind, name: &str) -> String {
        format!("{}{}{name}", self.prefix, kind.prefix())
    }

    /// `...:client/<client_id>`.
    pub fn client(&self, client_id: &str) -> String {
        self.resource(ResourceKind::Client, client_id)
    }

    /// `...:topic/<topic>`.
    pub fn topic(&self, topic: &str) -> String {
        self.resource(ResourceKind::Topic, topic)
    }

    /// `...:topicfilter/<filter>`.
    pub fn topicfilter(&self, filter: &str) -> String {
        self.resource(ResourceKind::TopicFilter, filter)
    }

    /// `...:thing/<thing>`, or `...:thing/<thing>/<shadow>` for a named shadow.
    pub fn thing(&self, thing: &str, shadow: Option<&str>) -> String {
        match shadow {
            Some(shadow) => format!("{}thing/{thing}/{shadow}", self.prefix),
            None => self.resource(ResourceKind::Thing, thing),
        }
    }

    /// `...:cert/<certificate_id>`.
    pub fn cert(&self, certificate_id: &str) -> String {
        format!("{}cert/{certificate_id}", self.prefix)
    }

    /// `...:policy/<policy_name>`.
    pub fn policy(&self, policy_name: &str) -> String {
        format!("{}policy/{policy_name}", self.prefix)
    }

    /// The part of `arn` after [`Arns::prefix`], when it starts with it.
    pub fn suffix<'a>(&self, arn: &'a str) -> Option<&'a str> {
        arn.strip_prefix(self.prefix.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in KNOWN_ACTIONS {
            assert_eq!(IotAction::from_name(a.name()), a);
            assert_eq!(IotAction::from_name(&a.name().to_uppercase()), a);
            assert_eq!(
                a.known_index().map(|i| KNOWN_ACTIONS[i].clone()),
                Some(a.clone())
            );
        }
        assert_eq!(
            IotAction::from_name("iot:DescribeJobExecution"),
            IotAction::Other("iot:DescribeJobExecution".to_owned())
        );
    }

    #[test]
    fn arns() {
        let arns = Arns::new("us-east-1", "123456789012");
        assert_eq!(
            arns.client("c"),
            "arn:aws:iot:us-east-1:123456789012:client/c"
        );
        assert_eq!(
            arns.topicfilter("a/#"),
            "arn:aws:iot:us-east-1:123456789012:topicfilter/a/#"
        );
        assert_eq!(
            arns.thing("t", Some("s")),
            "arn:aws:iot:us-east-1:123456789012:thing/t/s"
        );
        assert_eq!(arns.suffix(&arns.topic("x")), Some("topic/x"));
    }
}
