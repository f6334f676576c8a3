//! `dask-kube list`: one [`ClusterRow`] per scheduler pod, with its workers counted by
//! phase, its age, its supervisor and a dashboard link that answers from here (a live
//! local supervisor's, or the Service's from inside the cluster), as typed rows both shells
//! render.

use crate::Result;
use crate::apiserver::ClusterApi;
use crate::manifests::{self, ADAPT_ANNOTATION, DASHBOARD_PORT, SUPERVISOR_ANNOTATION};
use crate::scaling::{WorkerCounts, WorkerPodState};
use crate::supervisor::{self, StateDir};
use dask_worker_spec::labels;
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use std::collections::BTreeMap;

/// One Dask cluster as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRow {
    /// Namespace.
    pub namespace: String,
    /// Cluster name.
    pub name: String,
    /// The scheduler pod's phase.
    pub status: String,
    /// Worker pods by state.
    pub workers: WorkerCounts,
    /// Seconds since the scheduler pod was created.
    pub age_seconds: i64,
    /// The supervisor holding its local listeners (`host:pid`), if any.
    pub supervisor: Option<String>,
    /// The adaptive range the supervisor runs (`MIN:MAX`), if any.
    pub adapt: Option<String>,
    /// A dashboard link that answers from here, if there is one.
    pub dashboard: Option<String>,
}

/// Where a listed cluster's dashboard answers from this process: a live supervisor of this
/// host serves it locally; inside the cluster the Service does; otherwise nothing does until
/// `dask-kube attach NAME`.
fn dashboard_here(namespace: &str, name: &str, dir: &StateDir, in_cluster: bool) -> Option<String> {
    if let Some(state) = dir.read(namespace, name)
        && state.host == supervisor::hostname()
        && supervisor::is_supervisor(state.pid, name)
    {
        return Some(state.dashboard);
    }
    in_cluster.then(|| {
        format!(
            "http://{}.{namespace}:{DASHBOARD_PORT}/status",
            manifests::service_name(name)
        )
    })
}

/// Rows from the scheduler and worker pods, sorted by namespace and name (pure).
pub fn cluster_rows(
    schedulers: &[Pod],
    workers: &[Pod],
    now: i64,
    dashboard: impl Fn(&str, &str) -> Option<String>,
) -> Vec<ClusterRow> {
    let mut by_cluster: BTreeMap<(String, String), Vec<WorkerPodState>> = BTreeMap::new();
    for pod in workers {
        let cluster = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::CLUSTER_NAME))
            .cloned()
            .unwrap_or_default();
        by_cluster
            .entry((pod.metadata.namespace.clone().unwrap_or_default(), cluster))
            .or_default()
            .push(WorkerPodState::from_pod(pod));
    }
    let mut rows: Vec<ClusterRow> = schedulers
        .iter()
        .map(|pod| {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let workers = WorkerCounts::of(
                by_cluster
                    .get(&(namespace.clone(), name.clone()))
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            );
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| t.0.as_second());
            ClusterRow {
                dashboard: dashboard(&namespace, &name),
                status: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Unknown".into()),
                workers,
                age_seconds: now - created,
                supervisor: annotations.get(SUPERVISOR_ANNOTATION).cloned(),
                adapt: annotations.get(ADAPT_ANNOTATION).cloned(),
                namespace,
                name,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// Lists the Dask clusters of `api`'s namespace, or of every namespace.
pub async fn list_clusters(
    api: &ClusterApi,
    all_namespaces: bool,
    dir: &StateDir,
) -> Result<Vec<ClusterRow>> {
    let selector = |component: &str| {
        format!(
            "{}={},{}={component}",
            manifests::APP_LABEL.0,
            manifests::APP_LABEL.1,
            labels::COMPONENT,
        )
    };
    let (schedulers, workers) = if all_namespaces {
        (
            api.list_pods_all_namespaces(&selector(labels::SCHEDULER))
                .await?,
            api.list_pods_all_namespaces(&selector(labels::WORKER))
                .await?,
        )
    } else {
        (
            api.list_pods(&selector(labels::SCHEDULER)).await?,
            api.list_pods(&selector(labels::WORKER)).await?,
        )
    };
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    Ok(cluster_rows(&schedulers, &workers, now, |ns, name| {
        dashboard_here(ns, name, dir, in_cluster)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, component: &str, cluster: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {"dask.org/component": component, "dask.org/cluster-name": cluster},
                         "annotations": if component == "scheduler" { json!({SUPERVISOR_ANNOTATION: "host:42", ADAPT_ANNOTATION: "1:4"}) } else { json!({}) }},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn rows_count_each_clusters_workers_by_phase_and_carry_the_dashboard() {
        let schedulers = [
            pod("b", "c2", "scheduler", "c2", "Running"),
            pod("a", "c1", "scheduler", "c1", "Pending"),
        ];
        let workers = [
            pod("a", "c1-worker-x", "worker", "c1", "Running"),
            pod("a", "c1-worker-y", "worker", "c1", "Pending"),
            pod("b", "c2-worker-z", "worker", "c2", "Failed"),
            // Same cluster name in another namespace is another cluster.
            pod("b", "c1-worker-q", "worker", "c1", "Running"),
        ];
        let now = k8s_openapi::jiff::Timestamp::from_second(1_767_225_600 + 90)
            .unwrap()
            .as_second();
        let rows = cluster_rows(&schedulers, &workers, now, |ns, name| {
            (ns == "a").then(|| format!("http://127.0.0.1:1/{name}"))
        });
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].namespace.as_str(), rows[0].name.as_str()),
            ("a", "c1")
        );
        assert_eq!(rows[0].status, "Pending");
        assert_eq!((rows[0].workers.running, rows[0].workers.pending), (1, 1));
        assert_eq!(rows[0].age_seconds, 90);
        assert_eq!(rows[0].supervisor.as_deref(), Some("host:42"));
        assert_eq!(rows[0].adapt.as_deref(), Some("1:4"));
        assert_eq!(rows[0].dashboard.as_deref(), Some("http://127.0.0.1:1/c1"));
        assert_eq!(rows[1].workers.finished, 1);
        assert_eq!(rows[1].workers.running, 0);
        assert_eq!(rows[1].dashboard, None);
    }

    #[test]
    fn outside_the_cluster_without_a_supervisor_no_link_answers() {
        let dir = StateDir(std::env::temp_dir().join("dask-kube-listing-test-none"));
        assert_eq!(dashboard_here("ns", "c", &dir, false), None);
        assert_eq!(
            dashboard_here("ns", "c", &dir, true).as_deref(),
            Some("http://c-scheduler.ns:8787/status")
        );
    }
}
