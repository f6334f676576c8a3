//! What the agent knows about the pods it runs, for the kubelet HTTPS API (`kubectl logs`,
//! port-forward): where their logs are, their IPs, which containers run.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// One pod of this node.
#[derive(Debug, Clone, Default)]
pub struct PodEntry {
    /// Pod UID (a pod re-created with the same name replaces the entry).
    pub uid: String,
    /// `<state>/pods/<ns>_<name>_<uid>`.
    pub dir: PathBuf,
    /// Pod IP while its network namespace exists.
    pub ip: Option<IpAddr>,
    /// Containers with a live process.
    pub running: BTreeSet<String>,
}

/// Pods by (namespace, name).
#[derive(Debug, Default)]
pub struct PodRegistry {
    pods: RwLock<HashMap<(String, String), PodEntry>>,
}

/// The log file of a container's current run inside a pod directory.
pub fn log_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.log"))
}

/// The log file of the previous run.
pub fn previous_log_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.previous.log"))
}

impl PodRegistry {
    /// Adds or replaces a pod.
    pub fn insert(&self, namespace: &str, name: &str, entry: PodEntry) {
        if let Ok(mut m) = self.pods.write() {
            m.insert((namespace.to_string(), name.to_string()), entry);
        }
    }

    /// Changes a pod's entry if it still belongs to `uid`.
    pub fn update(&self, namespace: &str, name: &str, uid: &str, f: impl FnOnce(&mut PodEntry)) {
        if let Ok(mut m) = self.pods.write()
            && let Some(e) = m.get_mut(&(namespace.to_string(), name.to_string()))
            && e.uid == uid
        {
            f(e);
        }
    }

    /// Removes a pod if it still belongs to `uid`.
    pub fn remove(&self, namespace: &str, name: &str, uid: &str) {
        if let Ok(mut m) = self.pods.write() {
            let key = (namespace.to_string(), name.to_string());
            if m.get(&key).is_some_and(|e| e.uid == uid) {
                m.remove(&key);
            }
        }
    }

    /// A copy of a pod's entry.
    pub fn get(&self, namespace: &str, name: &str) -> Option<PodEntry> {
        self.pods
            .read()
            .ok()?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Number of pods known.
    pub fn len(&self) -> usize {
        self.pods.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True if no pod is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl kubelet_api::PodDirectory for PodRegistry {
    fn container_log(&self, namespace: &str, pod: &str, container: &str) -> Option<PathBuf> {
        let entry = self.get(namespace, pod)?;
        let path = log_path(&entry.dir, container);
        path.exists().then_some(path)
    }

    fn pod_ip(&self, namespace: &str, pod: &str) -> Option<IpAddr> {
        self.get(namespace, pod)?.ip
    }

    fn previous_container_log(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Option<PathBuf> {
        let entry = self.get(namespace, pod)?;
        let path = previous_log_path(&entry.dir, container);
        path.exists().then_some(path)
    }

    fn container_running(&self, namespace: &str, pod: &str, container: &str) -> bool {
        self.get(namespace, pod)
            .is_some_and(|e| e.running.contains(container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelet_api::PodDirectory;

    #[test]
    fn directory_answers_from_entries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(log_path(dir.path(), "worker"), "hi\n").unwrap();
        let reg = PodRegistry::default();
        reg.insert(
            "ns",
            "p",
            PodEntry {
                uid: "u1".into(),
                dir: dir.path().to_path_buf(),
                ip: Some("10.244.0.5".parse().unwrap()),
                running: ["worker".to_string()].into(),
            },
        );
        assert_eq!(
            reg.container_log("ns", "p", "worker"),
            Some(log_path(dir.path(), "worker"))
        );
        assert_eq!(reg.container_log("ns", "p", "other"), None);
        assert_eq!(reg.previous_container_log("ns", "p", "worker"), None);
        assert_eq!(reg.pod_ip("ns", "p"), Some("10.244.0.5".parse().unwrap()));
        assert!(reg.container_running("ns", "p", "worker"));
        reg.update("ns", "p", "other-uid", |e| e.running.clear());
        assert!(
            reg.container_running("ns", "p", "worker"),
            "a stale uid must not change the entry"
        );
        reg.update("ns", "p", "u1", |e| e.running.clear());
        assert!(!reg.container_running("ns", "p", "worker"));
        reg.remove("ns", "p", "u1");
        assert_eq!(reg.pod_ip("ns", "p"), None);
    }
}
