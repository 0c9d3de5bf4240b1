//! Policies compiled for one connection, and the per-connection authorizer with its decision
//! cache. This is what the broker calls on every CONNECT, PUBLISH, SUBSCRIBE and delivery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::action::{Arns, IotAction, KNOWN_ACTIONS, ResourceKind};
use crate::document::Effect;
use crate::eval::{Decision, NamedPolicy};
use crate::pattern::{Elem, FastGlob, derive};
use crate::variables::Variables;

/// The resource side of one statement, specialised for one connection: the globs that the
/// rest of the ARN must match once a known leading part has been removed.
#[derive(Debug)]
struct ResourceSet {
    negated: bool,
    match_all: bool,
    globs: Vec<FastGlob>,
}

impl ResourceSet {
    /// Specialises resolved resource patterns to resources starting with `prefix`. `None`
    /// when the set can never match such a resource.
    fn new(patterns: &[Vec<Elem>], prefix: &str, negated: bool) -> Option<ResourceSet> {
        let mut globs: Vec<FastGlob> = Vec::new();
        let mut match_all = false;
        for pattern in patterns {
            for state in derive(pattern, prefix) {
                let glob = FastGlob::new(pattern.get(state..).unwrap_or(&[]));
                if glob.is_match_all() {
                    match_all = true;
                } else if !globs.contains(&glob) {
                    globs.push(glob);
                }
            }
        }
        if match_all {
            globs.clear();
        }
        let can_match = if negated {
            !match_all
        } else {
            match_all || !globs.is_empty()
        };
        can_match.then_some(ResourceSet {
            negated,
            match_all,
            globs,
        })
    }

    fn matches(&self, rest: &str) -> bool {
        (self.match_all || self.globs.iter().any(|g| g.matches(rest))) != self.negated
    }
}

#[derive(Debug, Clone)]
struct Rule {
    policy: usize,
    resources: Arc<ResourceSet>,
}

#[derive(Debug, Default)]
struct RuleList {
    deny: Vec<Rule>,
    allow: Vec<Rule>,
}

impl RuleList {
    fn push(&mut self, effect: Effect, rule: Rule) {
        match effect {
            Effect::Allow => self.allow.push(rule),
            Effect::Deny => self.deny.push(rule),
        }
    }

    fn outcome(&self, rest: &str) -> Outcome {
        if let Some(r) = self.deny.iter().find(|r| r.resources.matches(rest)) {
            return Outcome::Deny(r.policy);
        }
        match self.allow.iter().find(|r| r.resources.matches(rest)) {
            Some(r) => Outcome::Allow(r.policy),
            None => Outcome::Implicit,
        }
    }
}

/// Rules of one known action: against the ARN after `arn:aws:iot:<r>:<a>:` (`general`), and
/// against the name after the action's own resource type (`named`, `topic/` for Publish).
#[derive(Debug, Default)]
struct ActionRules {
    general: RuleList,
    named: RuleList,
}

/// A statement kept for actions this crate does not know by name.
#[derive(Debug)]
struct OtherRule {
    effect: Effect,
    action_globs: Vec<FastGlob>,
    actions_negated: bool,
    rule: Rule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allow(usize),
    Deny(usize),
    Implicit,
}

/// A [`PolicySet`](crate::PolicySet) compiled for one connection by
/// [`PolicySet::compile`](crate::PolicySet::compile).
///
/// Conditions were decided at compile time (all condition keys are per-connection facts),
/// statements whose conditions fail are gone, variables are substituted (as literal text),
/// and the rules are grouped by action. A check matches only pre-built globs against the part
/// of the ARN that varies, with no allocation for the known actions.
#[derive(Debug)]
pub struct CompiledPolicies {
    names: Vec<String>,
    arns: Arns,
    known: Vec<ActionRules>,
    other: Vec<OtherRule>,
}

impl CompiledPolicies {
    pub(crate) fn build(
        policies: &[NamedPolicy],
        arns: &Arns,
        variables: &Variables,
    ) -> CompiledPolicies {
        let mut known: Vec<ActionRules> = KNOWN_ACTIONS
            .iter()
            .map(|_| ActionRules::default())
            .collect();
        let mut other = Vec::new();
        for (index, policy) in policies.iter().enumerate() {
            for st in policy.document.statements() {
                if !st.conditions_hold(variables) {
                    continue;
                }
                let clause = st.resources();
                let resolved: Vec<Vec<Elem>> = clause
                    .patterns
                    .iter()
                    .map(|p| p.resolve(variables))
                    .collect();
                let general =
                    ResourceSet::new(&resolved, arns.prefix(), clause.negated).map(Arc::new);
                // Per resource kind, built on first use.
                let mut by_kind: [Option<Option<Arc<ResourceSet>>>; 4] = Default::default();
                for (ai, action) in KNOWN_ACTIONS.iter().enumerate() {
                    if !st.actions().covers_known(ai) {
                        continue;
                    }
                    let rules = &mut known[ai];
                    if let Some(set) = &general {
                        rules.general.push(
                            st.effect(),
                            Rule {
                                policy: index,
                                resources: Arc::clone(set),
                            },
                        );
                    }
                    if let Some(kind) = action.resource_kind() {
                        let slot = &mut by_kind[kind.index()];
                        let set = slot.get_or_insert_with(|| {
                            let prefix = format!("{}{}", arns.prefix(), kind.prefix());
                            ResourceSet::new(&resolved, &prefix, clause.negated).map(Arc::new)
                        });
                        if let Some(set) = set {
                            rules.named.push(
                                st.effect(),
                                Rule {
                                    policy: index,
                                    resources: Arc::clone(set),
                                },
                            );
                        }
                    }
                }
                if let Some(set) = &general {
                    let actions = st.actions();
                    other.push(OtherRule {
                        effect: st.effect(),
                        action_globs: actions.fast.clone(),
                        actions_negated: actions.negated,
                        rule: Rule {
                            policy: index,
                            resources: Arc::clone(set),
                        },
                    });
                }
            }
        }
        CompiledPolicies {
            names: policies.iter().map(|p| p.name.clone()).collect(),
            arns: arns.clone(),
            known,
            other,
        }
    }

    /// The ARN builder the policies were compiled for.
    pub fn arns(&self) -> &Arns {
        &self.arns
    }

    /// The names of the compiled policies, in set order.
    pub fn policy_names(&self) -> &[String] {
        &self.names
    }

    /// Whether `action` on the resource `arn:aws:iot:<region>:<account>:<resource_suffix>` is
    /// allowed (`resource_suffix` is `topic/a/b`, `client/c`, ...).
    pub fn allows(&self, action: &IotAction, resource_suffix: &str) -> bool {
        matches!(self.outcome(action, resource_suffix), Outcome::Allow(_))
    }

    /// The full decision for `action` on `arn:aws:iot:<region>:<account>:<resource_suffix>`.
    pub fn decide(&self, action: &IotAction, resource_suffix: &str) -> Decision {
        self.to_decision(self.outcome(action, resource_suffix))
    }

    /// Whether `action` on the resource of `kind` named `name` (`client/<name>`,
    /// `topic/<name>`, ...) is allowed. When `kind` is the action's usual resource kind (see
    /// [`IotAction::resource_kind`]) nothing is formatted or allocated; this is the broker's
    /// hot path.
    pub fn allows_resource(&self, action: &IotAction, kind: ResourceKind, name: &str) -> bool {
        matches!(self.outcome_resource(action, kind, name), Outcome::Allow(_))
    }

    /// The full decision for `action` on the resource of `kind` named `name`.
    pub fn decide_resource(&self, action: &IotAction, kind: ResourceKind, name: &str) -> Decision {
        self.to_decision(self.outcome_resource(action, kind, name))
    }

    fn to_decision(&self, outcome: Outcome) -> Decision {
        let name = |i: usize| self.names.get(i).cloned().unwrap_or_default();
        match outcome {
            Outcome::Allow(i) => Decision::Allowed { by: name(i) },
            Outcome::Deny(i) => Decision::ExplicitDeny { by: name(i) },
            Outcome::Implicit => Decision::ImplicitDeny,
        }
    }

    fn outcome_resource(&self, action: &IotAction, kind: ResourceKind, name: &str) -> Outcome {
        if action.resource_kind() == Some(kind)
            && let Some(rules) = action.known_index().and_then(|i| self.known.get(i))
        {
            return rules.named.outcome(name);
        }
        let suffix = format!("{}{name}", kind.prefix());
        self.outcome(action, &suffix)
    }

    fn outcome(&self, action: &IotAction, suffix: &str) -> Outcome {
        if let Some(rules) = action.known_index().and_then(|i| self.known.get(i)) {
            return rules.general.outcome(suffix);
        }
        let lower = action.name().to_lowercase();
        let applies = |r: &&OtherRule| {
            r.action_globs.iter().any(|g| g.matches(&lower)) != r.actions_negated
                && r.rule.resources.matches(suffix)
        };
        if let Some(r) = self
            .other
            .iter()
            .filter(|r| r.effect == Effect::Deny)
            .find(applies)
        {
            return Outcome::Deny(r.rule.policy);
        }
        match self
            .other
            .iter()
            .filter(|r| r.effect == Effect::Allow)
            .find(applies)
        {
            Some(r) => Outcome::Allow(r.rule.policy),
            None => Outcome::Implicit,
        }
    }
}

/// Default bound of [`ConnectionAuthorizer`]'s decision cache, in entries.
pub const DEFAULT_CACHE_CAPACITY: usize = 256;

/// The actions whose decisions are cached, by cache slot.
const CACHED: [IotAction; 4] = [
    IotAction::Publish,
    IotAction::RetainPublish,
    IotAction::Subscribe,
    IotAction::Receive,
];

/// Looked up for every message a connection receives, with foldhash (seeded per process;
/// cheaper than SipHash, and its hasher state is half the size). Its entries are bounded,
/// so a client choosing colliding topics can slow only its own lookups.
#[derive(Debug, Default)]
struct DecisionCache {
    slots: [HashMap<Box<str>, bool, foldhash::fast::RandomState>; 4],
    len: usize,
}

/// Authorization for one live connection: [`CompiledPolicies`] plus a small cache of
/// decisions for `Publish`, `RetainPublish`, `Subscribe` and `Receive`, keyed by topic or
/// filter. The cache holds at most its capacity in entries and is emptied entirely when full
/// (cheap, and a device usually uses a handful of topics). Methods take `&self`; the cache
/// sits behind a mutex that only this connection's tasks touch.
#[derive(Debug)]
pub struct ConnectionAuthorizer {
    /// Shared between connections when the policies do not depend on the connection.
    policies: Arc<CompiledPolicies>,
    capacity: usize,
    cache: Mutex<DecisionCache>,
}

impl ConnectionAuthorizer {
    /// An authorizer with a cache of [`DEFAULT_CACHE_CAPACITY`] entries.
    pub fn new(policies: impl Into<Arc<CompiledPolicies>>) -> ConnectionAuthorizer {
        ConnectionAuthorizer::with_cache_capacity(policies, DEFAULT_CACHE_CAPACITY)
    }

    /// An authorizer whose cache holds at most `capacity` decisions (0 disables it).
    pub fn with_cache_capacity(
        policies: impl Into<Arc<CompiledPolicies>>,
        capacity: usize,
    ) -> ConnectionAuthorizer {
        ConnectionAuthorizer {
            policies: policies.into(),
            capacity,
            cache: Mutex::new(DecisionCache::default()),
        }
    }

    /// The compiled policies.
    pub fn policies(&self) -> &CompiledPolicies {
        &self.policies
    }

    /// `iot:Connect` on `client/<client_id>`.
    pub fn can_connect(&self, client_id: &str) -> bool {
        self.policies
            .allows_resource(&IotAction::Connect, ResourceKind::Client, client_id)
    }

    /// `iot:Publish` on `topic/<topic>`, and with `retain` also `iot:RetainPublish` on it.
    pub fn can_publish(&self, topic: &str, retain: bool) -> bool {
        self.cached(0, topic) && (!retain || self.cached(1, topic))
    }

    /// `iot:Subscribe` on `topicfilter/<filter>` (the filter as sent).
    pub fn can_subscribe(&self, filter: &str) -> bool {
        self.cached(2, filter)
    }

    /// `iot:Receive` on `topic/<topic>`, for each delivery.
    pub fn can_receive(&self, topic: &str) -> bool {
        self.cached(3, topic)
    }

    /// Any action on the resource of `kind` named `name`, cached when the action is one of
    /// the cached four and `kind` its usual resource kind.
    pub fn allows(&self, action: &IotAction, kind: ResourceKind, name: &str) -> bool {
        match CACHED.iter().position(|a| a == action) {
            Some(slot) if action.resource_kind() == Some(kind) => self.cached(slot, name),
            _ => self.policies.allows_resource(action, kind, name),
        }
    }

    /// Number of cached decisions (for tests and metrics).
    pub fn cached_decisions(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len
    }

    fn cached(&self, slot: usize, name: &str) -> bool {
        let action = &CACHED[slot % CACHED.len()];
        let decide = || {
            action
                .resource_kind()
                .is_some_and(|kind| self.policies.allows_resource(action, kind, name))
        };
        if self.capacity == 0 {
            return decide();
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let cache = &mut *cache;
        let Some(map) = cache.slots.get_mut(slot) else {
            return decide();
        };
        if let Some(&hit) = map.get(name) {
            return hit;
        }
        let allowed = decide();
        if cache.len >= self.capacity {
            for map in &mut cache.slots {
                map.clear();
            }
            cache.len = 0;
        }
        if let Some(map) = cache.slots.get_mut(slot) {
            map.insert(name.into(), allowed);
            cache.len += 1;
        }
        allowed
    }
}
