//! The `cmq` binary: `cmq standalone` runs the broker, `cmq bench` measures any broker.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "cmq",
    version,
    about = "CMQ: MQTT and CoAP message platform for IoT fleets",
    // A flag given twice takes its last value (scripts append overrides to defaults).
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run hub and dispatch in one process with in-memory state.
    Standalone(cmq::server::StandaloneArgs),
    /// Run a hub of a cluster: state shared with the other hubs over NATS JetStream.
    Hub(cmq::server::ClusterHubArgs),
    /// Run a dispatcher of a cluster: ForwardRules on the message streams, to Kafka,
    /// NATS, HTTP or MQTT.
    Dispatch(cmq::dispatch::cluster::DispatchArgs),
    /// Load-test an MQTT broker (CMQ or any other).
    Bench(cmq_loadgen::BenchArgs),
    /// Write DeviceCredentials and TopicAcls into a cluster's NATS KV (what the operator
    /// does), or delete them.
    Registry(cmq::registry_cli::RegistryArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // HTTP sinks (reqwest) use rustls with the process-wide provider: ring, as the listeners.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,rustls=error,webrtc_dtls=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Standalone(args) => {
            let runtime = hub_runtime()?;
            runtime.block_on(cmq::server::run_standalone(args))
        }
        Command::Hub(args) => {
            let runtime = hub_runtime()?;
            runtime.block_on(cmq::server::run_cluster_hub(args))
        }
        Command::Dispatch(args) => {
            let runtime = hub_runtime()?;
            runtime.block_on(cmq::dispatch::cluster::run(args))
        }
        Command::Bench(args) => cmq_loadgen::run_blocking(args).map(|_| ()),
        Command::Registry(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cmq::registry_cli::run(args))
        }
    }
}

/// The hub's runtime. Few blocking threads: password hashes (argon2: 19 MiB each) run on
/// them, and every thread that ever ran one keeps its malloc arena's memory, so a reconnect
/// storm of many devices would otherwise leave hundreds of MiB behind.
fn hub_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(cores.max(2))
        .build()
}
