//! The `dask-kube-operator` command: parses arguments, sets up logging, runs the library.

use clap::Parser;
use dask_kube_operator::OperatorCommand;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// A Kubernetes operator for dask-kubernetes' resources.
#[derive(Debug, Parser)]
#[command(name = "dask-kube-operator", version)]
struct Cli {
    #[command(flatten)]
    command: OperatorCommand,
}

fn main() {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("dask_kube_operator=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let code = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(cli.command.run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            1
        }
    };
    std::process::exit(code);
}
