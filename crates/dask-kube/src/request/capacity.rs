//! What one worker pod brings to a cluster, read from its worker command line: what
//! `scale(memory=, cores=)` divides by.

use serde_json::Value;

/// What one worker pod brings to the cluster: its threads (`--nthreads` x `--nworkers`) and
/// memory (`--memory-limit` x `--nworkers`) as Dask counts them, each `None` when its flags
/// do not say (`auto`, a fraction, absent). What `scale(memory=, cores=)` divides by.
pub fn worker_capacity(worker_pod: &Value) -> (Option<u64>, Option<u64>) {
    let Some(container) = worker_pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|containers| containers.iter().find(|c| command_line(c).is_some()))
    else {
        return (None, None);
    };
    let Some(line) = command_line(container) else {
        return (None, None);
    };
    let flag = |name: &str| line.flag(name).ok().flatten();
    let processes = match flag("--nworkers").or_else(|| flag("--nprocs")) {
        None => Some(1),
        Some(n) => n.parse::<u64>().ok().filter(|n| *n > 0),
    };
    let threads = flag("--nthreads")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .zip(processes)
        .map(|(t, p)| t * p);
    let memory = flag("--memory-limit")
        .and_then(|m| dask_worker_spec::MemoryLimit::parse(&m).ok())
        .and_then(|m| m.bytes())
        .zip(processes)
        .map(|(b, p)| b * p);
    (threads, memory)
}

fn command_line(container: &Value) -> Option<dask_worker_spec::WorkerCommandLine> {
    let words = |key: &str| -> Vec<String> {
        container
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    dask_worker_spec::WorkerCommandLine::find(&words("command"), &words("args"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case::flags(&["dask", "worker", "--nthreads", "2", "--memory-limit", "3GB"], (Some(2), Some(3_000_000_000)))]
    #[case::processes(&["dask", "worker", "--nworkers", "2", "--nthreads", "2", "--memory-limit", "1GiB"], (Some(4), Some(2 * 1024 * 1024 * 1024)))]
    #[case::auto_memory(&["dask", "worker", "--nthreads", "1", "--memory-limit", "auto"], (Some(1), None))]
    #[case::no_flags(&["dask", "worker"], (None, None))]
    #[case::not_a_worker(&["sleep", "1"], (None, None))]
    fn what_a_worker_pod_brings(
        #[case] args: &[&str],
        #[case] expected: (Option<u64>, Option<u64>),
    ) {
        let pod = json!({"spec": {"containers": [{"name": "w", "image": "i", "args": args}]}});
        assert_eq!(worker_capacity(&pod), expected);
    }
}
