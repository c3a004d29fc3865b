//! CMQ's Kubernetes API (group `cmq.io`): the custom resource types that the operator
//! reconciles and that standalone mode reads from YAML files.
//!
//! No client and no runtime live here: only types, their schemas, defaults and validation.

pub mod v1alpha1;

/// The API group of every CMQ resource.
pub const GROUP: &str = "cmq.io";
