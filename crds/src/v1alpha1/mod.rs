//! Version `v1alpha1` of the CMQ API.

mod device_credential;
mod mqtt_cluster;
mod topic_acl;

pub use device_credential::*;
pub use mqtt_cluster::*;
pub use topic_acl::*;
