//! Direct evaluation of a set of policies against one request (the control plane's
//! TestAuthorization, and the reference the compiled form is tested against).

use std::sync::Arc;

use crate::action::{Arns, IotAction};
use crate::compiled::CompiledPolicies;
use crate::document::{Effect, PolicyDocument, Statement};
use crate::pattern::naive_match;
use crate::variables::Variables;

/// One request to authorize.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What is asked.
    pub action: &'a IotAction,
    /// The full resource ARN (`arn:aws:iot:us-east-1:123456789012:topic/a/b`).
    pub resource: &'a str,
    /// What is known about the connection.
    pub variables: &'a Variables,
}

/// The outcome of an authorization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Some statement allows the request and none denies it.
    Allowed {
        /// The first policy (in set order) with an allowing statement.
        by: String,
    },
    /// A statement denies the request.
    ExplicitDeny {
        /// The first policy (in set order) with a denying statement.
        by: String,
    },
    /// No statement matches: denied by default.
    ImplicitDeny,
}

impl Decision {
    /// Whether the request may go ahead.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }

    /// The TestAuthorization `authDecision` string: `ALLOWED`, `EXPLICIT_DENY` or
    /// `IMPLICIT_DENY`.
    pub fn auth_decision(&self) -> &'static str {
        match self {
            Decision::Allowed { .. } => "ALLOWED",
            Decision::ExplicitDeny { .. } => "EXPLICIT_DENY",
            Decision::ImplicitDeny => "IMPLICIT_DENY",
        }
    }

    /// The deciding policy, if any.
    pub fn policy(&self) -> Option<&str> {
        match self {
            Decision::Allowed { by } | Decision::ExplicitDeny { by } => Some(by),
            Decision::ImplicitDeny => None,
        }
    }
}

/// The full story of one decision, for TestAuthorization's `AuthResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision.
    pub decision: Decision,
    /// Every policy with a statement allowing the request, in set order.
    pub allowing: Vec<String>,
    /// Every policy with a statement denying the request, in set order.
    pub denying: Vec<String>,
}

/// A named policy document in a [`PolicySet`].
#[derive(Debug, Clone)]
pub struct NamedPolicy {
    /// The policy name.
    pub name: String,
    /// Its (default version's) document.
    pub document: Arc<PolicyDocument>,
}

/// The policies that apply to one principal, evaluated together: default deny, any matching
/// `Deny` wins, otherwise one matching `Allow` is enough.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<NamedPolicy>,
}

impl PolicySet {
    /// An empty set (which denies everything).
    pub fn new() -> PolicySet {
        PolicySet::default()
    }

    /// Adds a policy; evaluation reports the first deciding policy in insertion order.
    pub fn push(&mut self, name: impl Into<String>, document: Arc<PolicyDocument>) {
        self.policies.push(NamedPolicy {
            name: name.into(),
            document,
        });
    }

    /// Adds a policy (builder style).
    pub fn with(mut self, name: impl Into<String>, document: PolicyDocument) -> PolicySet {
        self.push(name, Arc::new(document));
        self
    }

    /// The policies, in order.
    pub fn policies(&self) -> &[NamedPolicy] {
        &self.policies
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set has no policy.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether compiling the set needs the connection's facts: some statement has a condition
    /// or a policy variable in a resource. When it does not, [`PolicySet::compile`] gives the
    /// same result for every connection, which can then share one compiled set.
    pub fn depends_on_connection(&self) -> bool {
        self.policies
            .iter()
            .flat_map(|p| p.document.statements())
            .any(|st| {
                st.has_conditions() || st.resources().patterns.iter().any(|p| p.has_variables())
            })
    }

    /// Decides one request by evaluating every statement directly (variables substituted and
    /// patterns matched on each call). Fine for the control plane; the broker should use
    /// [`PolicySet::compile`].
    pub fn authorize(&self, request: &Request<'_>) -> Decision {
        let lower_action = request.action.name().to_lowercase();
        let mut allowed_by = None;
        for policy in &self.policies {
            for st in policy.document.statements() {
                if !statement_applies(st, &lower_action, request) {
                    continue;
                }
                match st.effect() {
                    Effect::Deny => {
                        return Decision::ExplicitDeny {
                            by: policy.name.clone(),
                        };
                    }
                    Effect::Allow => {
                        if allowed_by.is_none() {
                            allowed_by = Some(policy.name.clone());
                        }
                    }
                }
            }
        }
        match allowed_by {
            Some(by) => Decision::Allowed { by },
            None => Decision::ImplicitDeny,
        }
    }

    /// Like [`PolicySet::authorize`], also listing every allowing and denying policy.
    pub fn explain(&self, request: &Request<'_>) -> Explanation {
        let lower_action = request.action.name().to_lowercase();
        let mut allowing = Vec::new();
        let mut denying = Vec::new();
        for policy in &self.policies {
            let (mut allows, mut denies) = (false, false);
            for st in policy.document.statements() {
                if statement_applies(st, &lower_action, request) {
                    match st.effect() {
                        Effect::Allow => allows = true,
                        Effect::Deny => denies = true,
                    }
                }
            }
            if allows {
                allowing.push(policy.name.clone());
            }
            if denies {
                denying.push(policy.name.clone());
            }
        }
        let decision = if let Some(by) = denying.first() {
            Decision::ExplicitDeny { by: by.clone() }
        } else if let Some(by) = allowing.first() {
            Decision::Allowed { by: by.clone() }
        } else {
            Decision::ImplicitDeny
        };
        Explanation {
            decision,
            allowing,
            denying,
        }
    }

    /// Compiles the set for one connection: conditions are decided, variables substituted,
    /// the `arn:aws:iot:<region>:<account>:` part removed from every resource pattern, and the
    /// globs pre-parsed, so that [`CompiledPolicies::allows`] does no parsing, formatting or
    /// allocation.
    pub fn compile(&self, arns: &Arns, variables: &Variables) -> CompiledPolicies {
        CompiledPolicies::build(&self.policies, arns, variables)
    }
}

/// Whether a statement matches a request (action, resource, conditions), effect aside.
fn statement_applies(st: &Statement, lower_action: &str, request: &Request<'_>) -> bool {
    if !st.actions().covers(lower_action) {
        return false;
    }
    let resources = st.resources();
    let any = resources
        .patterns
        .iter()
        .any(|p| naive_match(&p.resolve(request.variables), request.resource));
    if any == resources.negated {
        return false;
    }
    st.conditions_hold(request.variables)
}
