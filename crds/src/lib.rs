//! CMQ's Kubernetes API (group `cmq.io`): the custom resource types that the operator
//! reconciles and that standalone mode reads from YAML files.
//!
//! No client and no runtime live here: only types, their schemas, defaults and validation.

pub mod v1alpha1;

/// The API group of every CMQ resource.
pub const GROUP: &str = "cmq.io";

pub mod argon;
pub mod kv;
pub mod seal;
pub mod template;

/// Why a resource is invalid: the field (a path such as `spec.password.hash`) and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
