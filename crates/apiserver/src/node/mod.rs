//! The node agent as a Kubernetes node. A node is the user `system:node:NAME`
//! in the group `system:nodes`, authenticated by a client certificate the
//! cluster CA signed for it ([`certificates`]: the bootstrap and renewal
//! endpoint). What it may do is decided by the node authorizer
//! ([`authorizer`], over the pod graph in [`graph`]) before RBAC, and what
//! it may write by NodeRestriction admission ([`admission`]).

use tessera_authn::UserInfo;

pub mod admission;
pub mod authorizer;
pub mod certificates;
pub mod graph;

/// The group every node is in.
pub const NODES_GROUP: &str = "system:nodes";
/// The prefix of a node's user name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// Whether a user is a node, and which (kube's default `NodeIdentifier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeIdentity<'a> {
    /// Not a node: the node authorizer and admission have nothing to say.
    NotANode,
    /// In `system:nodes` as `system:node:` with no name: refused.
    Unnamed(&'a str),
    /// The node `NAME`.
    Named(&'a str),
}

/// A user is a node when its name starts with `system:node:` and it is in
/// `system:nodes`; the rest of the name is the node's.
pub fn identify(user: &UserInfo) -> NodeIdentity<'_> {
    match user.username.strip_prefix(NODE_USER_PREFIX) {
        Some(_) if !user.in_group(NODES_GROUP) => NodeIdentity::NotANode,
        Some("") => NodeIdentity::Unnamed(&user.username),
        Some(name) => NodeIdentity::Named(name),
        None => NodeIdentity::NotANode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo { username: name.into(), groups: groups.iter().map(|g| (*g).to_owned()).collect(), ..Default::default() }
    }

    #[test]
    fn nodes_need_both_the_name_and_the_group() {
        assert_eq!(identify(&user("system:node:n1", &["system:nodes"])), NodeIdentity::Named("n1"));
        assert_eq!(identify(&user("system:node:n1", &["system:authenticated"])), NodeIdentity::NotANode);
        assert_eq!(identify(&user("n1", &["system:nodes"])), NodeIdentity::NotANode);
        assert_eq!(identify(&user("system:node:", &["system:nodes"])), NodeIdentity::Unnamed("system:node:"));
    }
}
