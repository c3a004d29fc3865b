//! Reconcile errors, by category: the category is a metric label and an Event reason.

/// Why a reconcile did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is invalid: a condition says why; nothing is retried until it changes.
    #[error("invalid spec: {0}")]
    Invalid(String),
    /// The MqttCluster the object refers to does not exist (yet).
    #[error("MqttCluster {0} not found")]
    ClusterNotFound(String),
    /// A Secret the object refers to is missing or lacks the key.
    #[error("{0}")]
    Secret(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A short label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "Invalid",
            Self::ClusterNotFound(_) => "ClusterNotFound",
            Self::Secret(_) => "SecretNotFound",
            Self::Nats(_) => "NatsUnavailable",
            Self::Kube(_) => "KubeApiError",
            Self::Finalizer(_) => "FinalizerError",
        }
    }

    /// Whether retrying can help without a change to the object.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Invalid(_))
    }
}
