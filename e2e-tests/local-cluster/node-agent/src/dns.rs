//! Keeps every pod's hosts file current as Services and pods change.
//!
//! Files are rewritten in place (truncate + write, never rename): each container sees its
//! pod's file through a bind mount of that inode, and glibc re-reads /etc/hosts on every
//! lookup, so a name that appears later (a scheduler pod becoming Ready) resolves without
//! restarting anything.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::hosts::{HostEntry, PodIdentity, render};

/// The facts a pod's hosts file is rendered from.
#[derive(Debug, Clone)]
pub struct PodHostsFile {
    /// File path.
    pub path: PathBuf,
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod IP.
    pub ip: Option<IpAddr>,
    /// `spec.hostname`.
    pub hostname: Option<String>,
    /// `spec.subdomain`.
    pub subdomain: Option<String>,
    /// `spec.hostAliases`.
    pub host_aliases: Vec<(String, Vec<String>)>,
}

impl PodHostsFile {
    fn render(&self, entries: &[HostEntry], domain: &str) -> String {
        let id = PodIdentity {
            name: &self.name,
            namespace: &self.namespace,
            ip: self.ip,
            hostname: self.hostname.as_deref(),
            subdomain: self.subdomain.as_deref(),
            host_aliases: self.host_aliases.clone(),
        };
        render(&id, entries, domain)
    }
}

#[derive(Default)]
struct State {
    entries: Vec<HostEntry>,
    files: HashMap<String, (PodHostsFile, String)>,
}

/// All hosts files of this agent.
pub struct HostsManager {
    domain: String,
    state: Mutex<State>,
}

/// Truncates and rewrites `path` (same inode, so bind mounts see the new content).
pub fn write_in_place(path: &Path, content: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening hosts file {}", path.display()), e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| Error::io(format!("writing hosts file {}", path.display()), e))
}

impl HostsManager {
    /// A manager for cluster domain `domain` (`cluster.local`).
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_string(),
            state: Mutex::default(),
        }
    }

    /// Writes a pod's hosts file now and keeps it updated until [`Self::unregister`].
    pub fn register(&self, uid: &str, file: PodHostsFile) -> Result<()> {
        let Ok(mut st) = self.state.lock() else {
            return Err(Error::Network("hosts manager lock poisoned".into()));
        };
        let content = file.render(&st.entries, &self.domain);
        write_in_place(&file.path, &content)?;
        st.files.insert(uid.to_string(), (file, content));
        Ok(())
    }

    /// Stops updating a pod's file.
    pub fn unregister(&self, uid: &str) {
        if let Ok(mut st) = self.state.lock() {
            st.files.remove(uid);
        }
    }

    /// New service entries: rewrites the files whose content changes.
    pub fn update_entries(&self, entries: Vec<HostEntry>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.entries == entries {
            return;
        }
        st.entries = entries;
        let State { entries, files } = &mut *st;
        for (uid, (file, written)) in files.iter_mut() {
            let content = file.render(entries, &self.domain);
            if &content == written {
                continue;
            }
            match write_in_place(&file.path, &content) {
                Ok(()) => {
                    debug!(pod_uid = %uid, path = %file.path.display(), "hosts file updated");
                    *written = content;
                }
                Err(e) => warn!(pod_uid = %uid, error = %e, "could not update hosts file"),
            }
        }
    }

    /// The current service entries.
    pub fn entries(&self) -> Vec<HostEntry> {
        self.state
            .lock()
            .map(|s| s.entries.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn rewrites_in_place_when_services_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let mgr = HostsManager::new("cluster.local");
        mgr.register(
            "u1",
            PodHostsFile {
                path: path.clone(),
                name: "w".into(),
                namespace: "ns".into(),
                ip: Some("10.244.0.9".parse().unwrap()),
                hostname: None,
                subdomain: None,
                host_aliases: vec![],
            },
        )
        .unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("sched"));
        mgr.update_entries(vec![HostEntry {
            ip: "10.244.0.5".parse().unwrap(),
            names: vec!["sched.ns".into()],
            namespace: "ns".into(),
            short_name: "sched".into(),
        }]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("10.244.0.5\tsched.ns sched\n"), "{text}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "same inode: bind mounts see it"
        );
        mgr.unregister("u1");
        mgr.update_entries(vec![]);
        assert!(
            std::fs::read_to_string(&path).unwrap().contains("sched"),
            "unregistered files stay untouched"
        );
    }
}
