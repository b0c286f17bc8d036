//! The service registry's data model ([`Service`], [`ServiceNode`]) and the replicated address
//! book ([`MemberAddress`]), with their validation rules and limits.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::InvalidCommand;

/// Most bytes in a service name, a service kind or a service node id.
pub const MAX_NAME_BYTES: usize = 256;
/// Most bytes in an address (a service node's, or a member's raft or client address).
pub const MAX_ADDRESS_BYTES: usize = 256;
/// Most nodes in one service.
pub const MAX_SERVICE_NODES: usize = 256;
/// Most attributes on one service node.
pub const MAX_NODE_ATTRIBUTES: usize = 64;
/// Most bytes in one attribute name or value.
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;
/// Most entries in the member address book.
pub const MAX_MEMBER_ADDRESSES: usize = 1024;

/// A registered service: a named, typed group of nodes that clients are balanced over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Unique name (non-empty, at most [`MAX_NAME_BYTES`]).
    pub name: String,
    /// The service's type, free-form (at most [`MAX_NAME_BYTES`]; may be empty).
    pub kind: String,
    /// Its nodes, in the order given (at most [`MAX_SERVICE_NODES`], unique ids).
    pub nodes: Vec<ServiceNode>,
}

/// One node of a [`Service`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNode {
    /// Unique within the service (non-empty, at most [`MAX_NAME_BYTES`]).
    pub id: String,
    /// Where clients reach it (free-form, e.g. `10.0.0.5:8080`; at most [`MAX_ADDRESS_BYTES`]).
    pub address: String,
    /// Balancing weight: a node with priority 5 is picked five times as often as one with
    /// priority 1. **Priority 0 means "never picked"** (a registered standby).
    pub priority: u32,
    /// Free-form attributes (at most [`MAX_NODE_ATTRIBUTES`], each name and value at most
    /// [`MAX_ATTRIBUTE_BYTES`]).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Marked down: never picked until marked up again.
    #[serde(default)]
    pub down: bool,
}

impl ServiceNode {
    /// Whether the balancer may pick this node: not down and a priority above 0.
    pub fn is_live(&self) -> bool {
        !self.down && self.priority > 0
    }
}

impl Service {
    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&ServiceNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Checks the rules documented on the fields.
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        check_text("service name", &self.name, MAX_NAME_BYTES, false)?;
        check_text("service kind", &self.kind, MAX_NAME_BYTES, true)?;
        check_count("service nodes", self.nodes.len(), MAX_SERVICE_NODES)?;
        let mut ids = BTreeSet::new();
        for node in &self.nodes {
            check_text("service node id", &node.id, MAX_NAME_BYTES, false)?;
            check_text("service node address", &node.address, MAX_ADDRESS_BYTES, true)?;
            check_count("node attributes", node.attributes.len(), MAX_NODE_ATTRIBUTES)?;
            for (k, v) in &node.attributes {
                check_text("attribute name", k, MAX_ATTRIBUTE_BYTES, false)?;
                check_text("attribute value", v, MAX_ATTRIBUTE_BYTES, true)?;
            }
            if !ids.insert(node.id.as_str()) {
                return Err(InvalidCommand::DuplicateNode {
                    service: self.name.clone(),
                    node: node.id.clone(),
                });
            }
        }
        Ok(())
    }
}

/// An entry of the replicated address book: where member `id` listens for Raft traffic and for
/// clients. Lets a node that joins a running cluster be found by every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddress {
    /// The Raft node id.
    pub id: u64,
    /// The address peers connect to (non-empty, at most [`MAX_ADDRESS_BYTES`]).
    pub raft_addr: String,
    /// The address clients connect to (non-empty, at most [`MAX_ADDRESS_BYTES`]).
    pub client_addr: String,
}

impl MemberAddress {
    /// Checks the rules documented on the fields.
    pub fn validate(&self) -> Result<(), InvalidCommand> {
        check_text("raft address", &self.raft_addr, MAX_ADDRESS_BYTES, false)?;
        check_text("client address", &self.client_addr, MAX_ADDRESS_BYTES, false)
    }
}

/// Checks a string's length (and non-emptiness unless `may_be_empty`).
pub(crate) fn check_text(
    what: &'static str,
    text: &str,
    max: usize,
    may_be_empty: bool,
) -> Result<(), InvalidCommand> {
    if text.is_empty() && !may_be_empty {
        return Err(InvalidCommand::Empty { what });
    }
    if text.len() > max {
        return Err(InvalidCommand::TooLong { what, len: text.len(), max });
    }
    Ok(())
}

/// Checks a list's length.
pub(crate) fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), InvalidCommand> {
    if count > max {
        return Err(InvalidCommand::TooMany { what, count, max });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node with `priority`, up, without attributes.
    pub(crate) fn node(id: &str, priority: u32) -> ServiceNode {
        ServiceNode {
            id: id.into(),
            address: format!("{id}.example:80"),
            priority,
            attributes: BTreeMap::new(),
            down: false,
        }
    }

    /// A service of `kind` "http" with these nodes.
    pub(crate) fn service(name: &str, nodes: Vec<ServiceNode>) -> Service {
        Service { name: name.into(), kind: "http".into(), nodes }
    }

    #[test]
    fn validation_accepts_a_plain_service_and_refuses_each_broken_rule() {
        let ok = service("web", vec![node("a", 1), node("b", 0)]);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(service("", vec![]).validate(), Err(InvalidCommand::Empty { what: "service name" }));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(service(&long, vec![]).validate(), Err(InvalidCommand::TooLong { .. })));
        assert_eq!(
            service("web", vec![node("a", 1), node("a", 2)]).validate(),
            Err(InvalidCommand::DuplicateNode { service: "web".into(), node: "a".into() })
        );
        assert_eq!(
            service("web", vec![node("", 1)]).validate(),
            Err(InvalidCommand::Empty { what: "service node id" })
        );
        let many = (0..=MAX_SERVICE_NODES).map(|i| node(&i.to_string(), 1)).collect();
        assert!(matches!(service("web", many).validate(), Err(InvalidCommand::TooMany { .. })));
        let mut attrs = node("a", 1);
        attrs.attributes.insert(String::new(), "v".into());
        assert_eq!(
            service("web", vec![attrs]).validate(),
            Err(InvalidCommand::Empty { what: "attribute name" })
        );
    }

    #[test]
    fn priority_zero_and_down_nodes_are_not_live() {
        assert!(node("a", 1).is_live());
        assert!(!node("a", 0).is_live());
        assert!(!ServiceNode { down: true, ..node("a", 3) }.is_live());
    }

    #[test]
    fn member_address_validation() {
        let ok =
            MemberAddress { id: 4, raft_addr: "10.0.0.4:7000".into(), client_addr: "10.0.0.4:8000".into() };
        assert_eq!(ok.validate(), Ok(()));
        let empty = MemberAddress { raft_addr: String::new(), ..ok };
        assert_eq!(empty.validate(), Err(InvalidCommand::Empty { what: "raft address" }));
    }
}
