//! CMQ data plane: the hub (an MQTT 3.1/3.1.1/5.0 broker), its state layer, dispatch (the
//! ForwardRule engine), and the standalone mode that runs hub and dispatch in one process.

pub mod access;
pub mod admin;
pub mod broker;
pub mod coap;
pub mod codec;
pub mod config;
pub mod connection;
pub mod dispatch;
pub mod listener;
pub mod manifests;
pub mod metrics;
pub mod registry_cli;
pub mod server;
pub mod state;
pub mod tls;
