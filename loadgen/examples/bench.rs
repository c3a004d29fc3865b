//! Stand-alone driver: `cargo run --release -p cmq-loadgen --example bench -- --mode pubsub ...`
//! (same flags as `cmq bench`).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "bench", about = "MQTT load generator (cmq bench)")]
struct Cli {
    #[command(flatten)]
    args: cmq_loadgen::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cmq_loadgen::run_blocking(cli.args)?;
    Ok(())
}
