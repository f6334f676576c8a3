//! Names and labels exactly as dask-kubernetes' operator gives them, so its client
//! (`dask_kubernetes.operator.KubeCluster`), its tests and users' `kubectl` selectors find
//! what this operator creates.

/// Label naming the cluster an object belongs to (dask-kube's own).
pub const CLUSTER_LABEL: &str = dask_worker_spec::labels::CLUSTER_NAME;
/// Label naming an object's role: `scheduler`, `worker`, `workergroup`, `job-runner`.
pub const COMPONENT_LABEL: &str = dask_worker_spec::labels::COMPONENT;
/// Label naming a worker pod's DaskWorkerGroup.
pub const WORKER_GROUP_LABEL: &str = "dask.org/workergroup-name";
/// Upstream keeps Istio's sidecar out of scheduler, worker and runner pods (Dask's comms
/// do not go through a mesh proxy).
pub const ISTIO_INJECT_LABEL: &str = "sidecar.istio.io/inject";

/// `dask.org/component` of the scheduler's Deployment, pod and Service.
pub const SCHEDULER_COMPONENT: &str = dask_worker_spec::labels::SCHEDULER;
/// `dask.org/component` of worker pods.
pub const WORKER_COMPONENT: &str = dask_worker_spec::labels::WORKER;
/// `dask.org/component` of the default DaskWorkerGroup.
pub const WORKER_GROUP_COMPONENT: &str = "workergroup";
/// `dask.org/component` of a DaskJob's runner pod.
pub const JOB_RUNNER_COMPONENT: &str = "job-runner";

/// Env var naming a worker (upstream sets it to the worker's own object name; the
/// policy's and dask-kube's worker name too).
pub const WORKER_NAME_ENV: &str = dask_worker_spec::WORKER_NAME_ENV;
/// dask-kube's ports and scheduler address variable are upstream's.
pub use crate::manifests::{DASHBOARD_PORT, SCHEDULER_ADDRESS_ENV, SCHEDULER_PORT};

/// Annotation prefixes upstream does not copy from a resource onto what it creates: kopf's
/// bookkeeping and `kubectl apply`'s last-applied configuration.
pub const UNCOPIED_ANNOTATION_PREFIXES: &[&str] = &["kopf.zalando.org", "kubectl.kubernetes.io"];

/// Longest Kubernetes object name that is also a DNS label (a Service name).
const MAX_DNS_LABEL: usize = 63;
/// Suffix of the scheduler's Deployment and Service.
const SCHEDULER_SUFFIX: &str = "-scheduler";
/// Longest cluster name whose `<name>-scheduler` Service is still a DNS label (53).
pub const MAX_CLUSTER_NAME_LEN: usize = MAX_DNS_LABEL - SCHEDULER_SUFFIX.len();

/// The scheduler's Deployment and Service: `<cluster>-scheduler`, dask-kube's Service name.
pub fn scheduler_name(cluster: &str) -> String {
    crate::manifests::service_name(cluster)
}

/// The DaskWorkerGroup a DaskCluster creates: `<cluster>-default`.
pub fn default_worker_group_name(cluster: &str) -> String {
    format!("{cluster}-default")
}

/// A worker of a group: `<group>-worker-<10 hex digits>`, upstream's Deployment name, here
/// the pod's name and (through `DASK_WORKER_NAME`) the Dask worker's name.
pub fn worker_name(group: &str, suffix: &str) -> String {
    format!("{group}-worker-{suffix}")
}

/// A DaskJob's runner pod: `<job>-runner`.
pub fn job_runner_pod_name(job: &str) -> String {
    format!("{job}-runner")
}

/// The address workers and job runners connect to: the scheduler Service's cluster DNS name.
pub fn scheduler_address(cluster: &str, namespace: &str) -> String {
    format!(
        "tcp://{}.{namespace}.svc.cluster.local:{SCHEDULER_PORT}",
        scheduler_name(cluster)
    )
}

/// Checks a DaskCluster name as upstream does (`validate_cluster_name`): a DNS label short
/// enough for `<name>-scheduler`. The error is upstream's message, which its tests and
/// users see in the cluster's events.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_CLUSTER_NAME_LEN
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "The DaskCluster {name} is invalid: a lowercase RFC 1123 subdomain must consist of \
             lower case alphanumeric characters, '-' or '.', and must start and end with an \
             alphanumeric character. DaskCluster name must also be under \
             {MAX_CLUSTER_NAME_LEN} characters."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::simple("simple", true)]
    #[case::digits_and_dashes("a-1-b", true)]
    #[case::one_char("a", true)]
    #[case::max_len(&"a".repeat(53), true)]
    #[case::one_too_long(&"a".repeat(54), false)]
    #[case::dots("invalid.chars.in.name", false)]
    #[case::upper("Simple", false)]
    #[case::leading_dash("-a", false)]
    #[case::trailing_dash("a-", false)]
    #[case::empty("", false)]
    #[case::underscore("a_b", false)]
    fn cluster_names_as_upstream_validates_them(#[case] name: &str, #[case] valid: bool) {
        assert_eq!(validate_cluster_name(name).is_ok(), valid, "{name}");
    }

    #[test]
    fn names_follow_upstream() {
        assert_eq!(scheduler_name("simple"), "simple-scheduler");
        assert_eq!(default_worker_group_name("simple"), "simple-default");
        assert_eq!(
            worker_name("simple-default", "0123456789"),
            "simple-default-worker-0123456789"
        );
        assert_eq!(job_runner_pod_name("simple-job"), "simple-job-runner");
        assert_eq!(
            scheduler_address("simple", "ns"),
            "tcp://simple-scheduler.ns.svc.cluster.local:8786"
        );
    }
}
