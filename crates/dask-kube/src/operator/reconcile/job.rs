//! DaskJob: a cluster named after the job and a runner pod against it; the cluster is
//! deleted when the runner ends.
//!
//! `status.jobStatus` as upstream: `JobCreated` (seen) -> `ClusterCreated` (cluster and runner
//! made; `clusterName`, `jobRunnerPodName` set) -> `Running` (`startTime`) -> `Successful` or
//! `Failed` (`endTime`), times as `%Y-%m-%dT%H:%M:%SZ`. A runner that ends before the operator
//! saw it running still gets a `startTime` (upstream's edge-triggered handler would leave it
//! out, and its own tests require one).

use super::{Action, Note, Plan};
use crate::Result;
use crate::operator::manifests;
use crate::operator::names;
use crate::operator::resources::DaskJob;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{Map, Value, json};

/// A DaskJob's `status.jobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Seen by the operator.
    JobCreated,
    /// Cluster and runner pod made.
    ClusterCreated,
    /// The runner pod runs.
    Running,
    /// The runner pod succeeded; the cluster is deleted.
    Successful,
    /// The runner pod failed; the cluster is deleted.
    Failed,
}

impl JobStatus {
    /// As written in `status.jobStatus`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::JobCreated => "JobCreated",
            JobStatus::ClusterCreated => "ClusterCreated",
            JobStatus::Running => "Running",
            JobStatus::Successful => "Successful",
            JobStatus::Failed => "Failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::JobCreated,
            Self::ClusterCreated,
            Self::Running,
            Self::Successful,
            Self::Failed,
        ]
        .into_iter()
        .find(|j| j.as_str() == s)
    }
}

/// What is observed of a job's parts.
#[derive(Debug, Clone, Copy)]
pub struct JobView<'a> {
    /// The job.
    pub job: &'a DaskJob,
    /// Whether its DaskCluster exists.
    pub cluster_exists: bool,
    /// Its runner pod, if it exists.
    pub runner: Option<&'a Pod>,
}

/// Plans one reconcile of a DaskJob; `now` is the time to record, already formatted.
///
/// # Errors
/// A job without uid, or without a runner pod spec.
pub fn plan_job(view: JobView<'_>, now: &str) -> Result<Plan> {
    let job = view.job;
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let current = status.job_status.as_deref().and_then(JobStatus::parse);
    let mut plan = Plan::default();
    let Some(current) = current else {
        plan.actions.push(Note::info(format!(
            "A DaskJob has been created called {name} in {namespace}."
        )));
        plan.actions.push(Action::PatchStatus(
            json!({"status": {"jobStatus": JobStatus::JobCreated.as_str()}}),
        ));
        return Ok(plan);
    };
    if matches!(current, JobStatus::Successful | JobStatus::Failed) {
        return Ok(plan);
    }
    let runner_phase = view
        .runner
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref());
    let mut patch = Map::new();
    patch.insert("clusterName".into(), json!(name));
    patch.insert(
        "jobRunnerPodName".into(),
        json!(names::job_runner_pod_name(&name)),
    );
    let start_time = status.start_time.clone().unwrap_or_else(|| now.to_owned());

    if let Some(end @ ("Succeeded" | "Failed")) = runner_phase {
        let (outcome, message) = if end == "Succeeded" {
            (
                JobStatus::Successful,
                "Job succeeded, deleting Dask cluster.",
            )
        } else {
            (JobStatus::Failed, "Job failed, deleting Dask cluster.")
        };
        plan.actions.push(Note::info(message));
        if view.cluster_exists {
            plan.actions.push(Action::DeleteCluster(name));
        }
        patch.insert("jobStatus".into(), json!(outcome.as_str()));
        patch.insert("startTime".into(), json!(start_time));
        patch.insert("endTime".into(), json!(now));
        plan.actions
            .push(Action::PatchStatus(json!({"status": Value::Object(patch)})));
        return Ok(plan);
    }

    if !view.cluster_exists || view.runner.is_none() {
        plan.actions
            .push(Note::info("Creating Dask job components."));
    }
    if !view.cluster_exists {
        plan.actions
            .push(Action::Create(manifests::job_cluster(job)?));
        plan.actions.push(Note::info(format!(
            "Cluster {name} for job {name} created in {namespace}."
        )));
    }
    if view.runner.is_none() {
        plan.actions
            .push(Action::Create(manifests::job_runner_pod(job)?));
    }
    let next = if runner_phase == Some("Running") {
        if current != JobStatus::Running {
            plan.actions.push(Note::info("Job now in running"));
        }
        patch.insert("startTime".into(), json!(start_time));
        JobStatus::Running
    } else if current == JobStatus::Running {
        JobStatus::Running
    } else {
        JobStatus::ClusterCreated
    };
    patch.insert("jobStatus".into(), json!(next.as_str()));
    let unchanged = status.job_status.as_deref() == Some(next.as_str())
        && status.cluster_name.as_deref() == Some(name.as_str())
        && status.job_runner_pod_name.is_some()
        && (next != JobStatus::Running || status.start_time.is_some());
    if !unchanged {
        plan.actions
            .push(Action::PatchStatus(json!({"status": Value::Object(patch)})));
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::operator::manifests::tests::upstream_resource;
    use crate::operator::resources::DaskJobStatus;
    use rstest::rstest;

    const NOW: &str = "2026-05-01T10:00:00Z";
    const EARLIER: &str = "2026-05-01T09:59:00Z";

    fn job(status: Option<&str>, start: Option<&str>) -> DaskJob {
        let mut j: DaskJob = upstream_resource("simplejob.yaml");
        j.status = status.map(|s| DaskJobStatus {
            job_status: Some(s.into()),
            cluster_name: (s != "JobCreated").then(|| "simple-job".into()),
            job_runner_pod_name: (s != "JobCreated").then(|| "simple-job-runner".into()),
            start_time: start.map(Into::into),
            end_time: None,
        });
        j
    }

    fn runner(phase: &str) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "simple-job-runner"}, "status": {"phase": phase}}),
        )
        .unwrap()
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Create(v) => format!(
                    "create {} {}",
                    v["kind"].as_str().unwrap(),
                    v["metadata"]["name"].as_str().unwrap()
                ),
                Action::DeleteCluster(n) => format!("delete cluster {n}"),
                Action::PatchStatus(v) => {
                    let s = &v["status"];
                    let mut out = format!("status {}", s["jobStatus"].as_str().unwrap());
                    for key in ["startTime", "endTime"] {
                        if let Some(t) = s[key].as_str() {
                            out += &format!(" {key}={}", if t == NOW { "now" } else { "earlier" });
                        }
                    }
                    out
                }
                Action::Note(n) => format!("note {}", n.message),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[rstest]
    #[case::first_sight(None, None, false, None, &["note A DaskJob has been created called simple-job in ns.", "status JobCreated"])]
    #[case::makes_cluster_and_runner(Some("JobCreated"), None, false, None, &[
        "note Creating Dask job components.",
        "create DaskCluster simple-job", "note Cluster simple-job for job simple-job created in ns.",
        "create Pod simple-job-runner",
        "status ClusterCreated"])]
    #[case::runner_pending(Some("ClusterCreated"), None, true, Some("Pending"), &[])]
    #[case::runner_running(Some("ClusterCreated"), None, true, Some("Running"), &["note Job now in running", "status Running startTime=now"])]
    #[case::still_running(Some("Running"), Some(EARLIER), true, Some("Running"), &[])]
    #[case::succeeded(Some("Running"), Some(EARLIER), true, Some("Succeeded"), &[
        "note Job succeeded, deleting Dask cluster.", "delete cluster simple-job",
        "status Successful startTime=earlier endTime=now"])]
    #[case::failed(Some("Running"), Some(EARLIER), true, Some("Failed"), &[
        "note Job failed, deleting Dask cluster.", "delete cluster simple-job",
        "status Failed startTime=earlier endTime=now"])]
    #[case::ended_before_seen_running(Some("ClusterCreated"), None, true, Some("Succeeded"), &[
        "note Job succeeded, deleting Dask cluster.", "delete cluster simple-job",
        "status Successful startTime=now endTime=now"])]
    #[case::cluster_already_gone(Some("Running"), Some(EARLIER), false, Some("Failed"), &[
        "note Job failed, deleting Dask cluster.",
        "status Failed startTime=earlier endTime=now"])]
    #[case::finished_is_final(Some("Successful"), Some(EARLIER), false, Some("Succeeded"), &[])]
    #[case::a_deleted_runner_is_made_again(Some("Running"), Some(EARLIER), true, None, &[
        "note Creating Dask job components.", "create Pod simple-job-runner"])]
    fn job_status_follows_the_runner(
        #[case] status: Option<&str>,
        #[case] start: Option<&str>,
        #[case] cluster_exists: bool,
        #[case] runner_phase: Option<&str>,
        #[case] expected: &[&str],
    ) {
        let j = job(status, start);
        let pod = runner_phase.map(runner);
        let plan = plan_job(
            JobView {
                job: &j,
                cluster_exists,
                runner: pod.as_ref(),
            },
            NOW,
        )
        .unwrap();
        assert_eq!(summary(&plan), expected);
    }

    #[test]
    fn the_final_status_has_upstreams_keys() {
        let j = job(Some("Running"), Some(EARLIER));
        let pod = runner("Succeeded");
        let plan = plan_job(
            JobView {
                job: &j,
                cluster_exists: true,
                runner: Some(&pod),
            },
            NOW,
        )
        .unwrap();
        let Some(Action::PatchStatus(v)) = plan.actions.last() else {
            panic!()
        };
        let mut keys: Vec<&String> = v["status"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "clusterName",
                "endTime",
                "jobRunnerPodName",
                "jobStatus",
                "startTime"
            ]
        );
        assert_eq!(v["status"]["clusterName"], "simple-job");
        assert_eq!(v["status"]["jobRunnerPodName"], "simple-job-runner");
    }
}
