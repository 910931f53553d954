//! Access control as Dapr applies it (`dapr/pkg/acl/acl.go`, `dapr/pkg/config/acl_trie.go`):
//! the callee's sidecar decides, from the caller's verified identity, the normalized method and
//! the verb, whether a request reaches its app. Pure: [`Acl::compile`] turns a validated
//! `spec.accessControl` into lookup tables, [`Acl::check`] decides one request.
//!
//! The rules, in Dapr's order:
//! 1. No verified identity (no mTLS): the global `defaultAction`.
//! 2. No policy for the caller's `appId` and namespace, or its trust domain or namespace differ
//!    from the identity's: the global `defaultAction`.
//! 3. The policy's `defaultAction`, when it has one, replaces the global one.
//! 4. The method is matched against the policy's operations (segments split on `/`; `*` within
//!    a segment matches any characters; a final `/*` matches one more segment, `/**` any depth;
//!    an operation also covers every path below it; the first operation written wins among
//!    siblings). Matching is case-insensitive for HTTP apps.
//! 5. A matched operation decides by the request's verb, else by its `*` entry, else the
//!    current action stands. A request without a verb Dapr knows takes the policy's
//!    `defaultAction` (none: deny). A gRPC app takes the operation's action, verbs ignored.

use std::collections::HashMap;

use ferry_api::{
    SpiffeId,
    configuration::{AccessControlErrors, AccessControlSpec, Action, HTTP_VERBS},
};

/// Which action decided: a caller's policy, or the global default (Dapr's metric names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    App,
    Global,
}

/// The decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub scope: Scope,
}

/// A compiled `spec.accessControl`.
#[derive(Debug, Clone)]
pub struct Acl {
    default_action: Action,
    trust_domain: String,
    /// Keyed by the caller's app ID and namespace.
    policies: HashMap<(String, String), Policy>,
    /// HTTP apps match case-insensitively and by verb.
    http: bool,
}

#[derive(Debug, Clone)]
struct Policy {
    default_action: Option<Action>,
    trust_domain: String,
    namespace: String,
    operations: Trie,
}

/// What one operation says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Operation {
    /// By verb as written (`GET`, `*`).
    verbs: HashMap<String, Action>,
    /// For callers without verbs (gRPC).
    action: Action,
}

impl Acl {
    /// `None` when the spec says nothing (Dapr: no access control, everything is allowed).
    /// `http`: the app speaks HTTP (every Ferry app today).
    pub fn compile(
        spec: &AccessControlSpec,
        http: bool,
    ) -> Result<Option<Self>, AccessControlErrors> {
        if spec.is_empty() {
            return Ok(None);
        }
        spec.validate()?;
        let default_action = match spec.default_action.as_deref().filter(|a| !a.is_empty()) {
            Some(a) => Action::parse(a).expect("validated"),
            // Policies without a global default: the safer choice, as Dapr (which warns).
            None if !spec.policies.is_empty() => Action::Deny,
            None => Action::Allow,
        };
        let mut policies = HashMap::new();
        for p in &spec.policies {
            let mut operations = Trie::default();
            for op in &p.operations {
                let mut name = if op.name.starts_with('/') {
                    op.name.clone()
                } else {
                    format!("/{}", op.name)
                };
                if http {
                    name = name.to_lowercase();
                }
                let action = Action::parse(&op.action).expect("validated");
                operations.put(
                    &name,
                    Operation {
                        verbs: op.http_verb.iter().map(|v| (v.clone(), action)).collect(),
                        action,
                    },
                );
            }
            let namespace = p.namespace.clone().unwrap_or_default();
            // A later policy for the same caller replaces an earlier one, as in Dapr.
            policies.insert(
                (p.app_id.clone(), namespace.clone()),
                Policy {
                    default_action: p
                        .default_action
                        .as_deref()
                        .filter(|a| !a.is_empty())
                        .map(|a| Action::parse(a).expect("validated")),
                    trust_domain: p.trust_domain.clone().unwrap_or_default(),
                    namespace,
                    operations,
                },
            );
        }
        Ok(Some(Self {
            default_action,
            trust_domain: spec.trust_domain().to_owned(),
            policies,
            http,
        }))
    }

    /// This app's trust domain (`accessControl.trustDomain`, default `public`).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Decides one request: `caller` is the verified identity (none without mTLS), `method`
    /// the normalized method (with or without its leading `/`), `verb` the HTTP verb (`None`
    /// for gRPC; a verb Dapr does not know counts as none).
    pub fn check(&self, caller: Option<&SpiffeId>, method: &str, verb: Option<&str>) -> Verdict {
        let global = Verdict {
            allowed: self.default_action == Action::Allow,
            scope: Scope::Global,
        };
        let Some(id) = caller else {
            return global;
        };
        let key = (
            id.app_id.as_str().to_owned(),
            id.namespace.as_str().to_owned(),
        );
        let Some(policy) = self.policies.get(&key) else {
            return global;
        };
        if policy.trust_domain != id.trust_domain.as_str()
            || policy.namespace != id.namespace.as_str()
        {
            return global;
        }
        let (mut action, scope) = match policy.default_action {
            Some(a) => (Some(a), Scope::App),
            None => (Some(self.default_action), Scope::Global),
        };
        let mut op = if method.starts_with('/') {
            method.to_owned()
        } else {
            format!("/{method}")
        };
        if self.http {
            op = op.to_lowercase();
        }
        if let Some(found) = policy.operations.search(&op) {
            if self.http {
                match verb.filter(|v| HTTP_VERBS.contains(v)) {
                    Some(v) => {
                        if let Some(a) = found.verbs.get(v).or_else(|| found.verbs.get("*")) {
                            action = Some(*a);
                        }
                    }
                    None => action = policy.default_action,
                }
            } else {
                action = Some(found.action);
            }
        }
        Verdict {
            allowed: action == Some(Action::Allow),
            scope,
        }
    }
}

/// Dapr's denial text (the caller's sidecar prefixes it with the gRPC status, as Dapr's does):
/// the identity's URL (empty without one), the method without its leading `/`, the verb's name
/// (`NONE` for one Dapr does not know).
pub fn denial(caller: Option<&SpiffeId>, method: &str, verb: &str) -> String {
    let id = caller.map(SpiffeId::uri).unwrap_or_default();
    let verb = if HTTP_VERBS.contains(&verb) {
        verb
    } else {
        "NONE"
    };
    format!(
        "access control policy has denied access to id: {id} operation: {} verb: {verb}",
        method.trim_start_matches('/')
    )
}

// === the operation trie ===

const ONE: &str = "/*";
const ANY: &str = "/**";

/// Operations by path segment, each segment kept with its leading `/` (Dapr's layout, so that
/// its matching order is kept exactly).
#[derive(Debug, Clone, Default)]
struct Trie {
    root: Node,
}

#[derive(Debug, Clone, Default)]
struct Node {
    segment: String,
    data: Option<Operation>,
    children: Vec<Node>,
}

impl Trie {
    fn put(&mut self, operation: &str, data: Operation) {
        let parts: Vec<&str> = operation.split('/').skip(1).collect();
        let mut node = &mut self.root;
        for (i, part) in parts.iter().enumerate() {
            let segment = format!("/{part}");
            let last = i == parts.len() - 1;
            match node.children.iter().position(|c| c.segment == segment) {
                None => {
                    node.children.push(Node {
                        segment,
                        data: last.then(|| data.clone()),
                        children: Vec::new(),
                    });
                    node = node.children.last_mut().expect("just pushed");
                }
                Some(at) if last => {
                    // The first operation written for a path keeps it.
                    let child = &mut node.children[at];
                    if child.data.is_none() {
                        child.data = Some(data.clone());
                    }
                }
                Some(at) => node = &mut node.children[at],
            }
        }
    }

    fn search(&self, operation: &str) -> Option<&Operation> {
        let parts: Vec<&str> = operation.split('/').skip(1).collect();
        let mut node = &self.root;
        for (i, part) in parts.iter().enumerate() {
            let end = i == parts.len() - 1;
            let segment = format!("/{part}");
            node = node.child(&segment, end)?;
            if let Some(data) = &node.data {
                // A `/*` in the middle is one segment, not the end of the match.
                if !end && node.segment.ends_with(ONE) && !node.segment.ends_with(ANY) {
                    continue;
                }
                return Some(data);
            } else if end {
                return node.child(ONE, end).and_then(|n| n.data.as_ref());
            }
        }
        None
    }
}

impl Node {
    /// The first child that matches `segment`, in the order they were written.
    fn child(&self, segment: &str, end: bool) -> Option<&Node> {
        for c in &self.children {
            if c.segment == segment {
                return Some(c);
            }
            if c.segment == ONE {
                if end {
                    return Some(c);
                }
                continue;
            }
            if c.segment == ANY || glob(segment.as_bytes(), c.segment.as_bytes()) {
                return Some(c);
            }
        }
        None
    }
}

/// `*` matches any run of characters, possibly empty; everything else matches itself.
fn glob(target: &[u8], pattern: &[u8]) -> bool {
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < target.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == target[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests;
