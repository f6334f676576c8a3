//! The classic `KubeCluster` session in Rust: start a cluster from a worker template, scale
//! it, print where a `distributed.Client` connects, adapt, and close on Ctrl-C.
//!
//! ```text
//! cargo run -p dask-kube --example quickstart -- worker-spec.yml
//! ```

use dask_kube::KubeCluster;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let template = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "worker-spec.yml".to_owned());
    let mut cluster = KubeCluster::from_yaml(template).await?;
    println!("scheduler address: {}", cluster.scheduler_address());
    println!("dashboard:         {}", cluster.dashboard_link());

    cluster.scale(2).await?;
    cluster
        .wait_for_workers(2, Duration::from_secs(300))
        .await?;
    for worker in cluster.workers().await? {
        println!(
            "worker pod {} ({:?}), connected as {:?}",
            worker.pod, worker.phase, worker.connected
        );
    }

    // From now on the scheduler decides: between 1 and 10 workers.
    cluster.adapt(1, 10)?;
    println!("adapting between 1 and 10 workers; Ctrl-C closes the cluster");
    tokio::signal::ctrl_c().await?;
    let report = cluster.close().await?;
    println!(
        "closed: {} pods deleted, {} workers retired first",
        report.deleted_pods, report.retired
    );
    Ok(())
}
