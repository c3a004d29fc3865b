//! Version `v1alpha1` of the CMQ API.

mod mqtt_cluster;

pub use mqtt_cluster::*;
