//! Version `v1alpha1` of the CMQ API.

mod device_credential;
mod forward_rule;
mod mqtt_cluster;
mod topic_acl;
mod workloads;

pub use device_credential::*;
pub use forward_rule::*;
pub use mqtt_cluster::*;
pub use topic_acl::*;
pub use workloads::*;
