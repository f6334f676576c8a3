//! The client's copy of a cluster's certificates: files on the client's machine, and how
//! Dask is told about them (`Security(**...)`, `DASK_*` variables, a Dask config file).

use super::certificates::{CA_KEY, CERT_KEY, ClusterTls, KEY_KEY};
use super::pods::{CA_FILE_ENV, REQUIRE_ENCRYPTION_ENV, TLS_ENV_PREFIX};
use crate::{Error, Result};
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

impl ClusterTls {
    /// Writes the client's copy into `dir` (created `0700`; the key `0600`): what a
    /// `distributed.Client` on this machine needs, as files (see [`ClientTlsFiles`]).
    pub fn write_client_files(&self, dir: &Path) -> Result<ClientTlsFiles> {
        let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", dir.display()), e);
        std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
        set_mode(dir, 0o700).map_err(|e| io("restricting", e))?;
        let files = ClientTlsFiles::in_dir(dir);
        write_private(&files.ca_file, &self.ca_pem)?;
        write_private(&files.cert_file, &self.cert_pem)?;
        write_private(&files.key_file, &self.key_pem)?;
        let config = serde_norway::to_string(&files.dask_config())
            .map_err(|e| Error::io("writing the Dask config", std::io::Error::other(e)))?;
        write_private(&files.dask_config_file, &config)?;
        Ok(files)
    }
}

/// A client's copy of a cluster's certificates as files, and how Dask is told about them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientTlsFiles {
    /// The CA certificate (`tls_ca_file`).
    pub ca_file: PathBuf,
    /// The client certificate (`tls_client_cert`).
    pub cert_file: PathBuf,
    /// Its key (`tls_client_key`).
    pub key_file: PathBuf,
    /// The same settings as a Dask config file (`dask.yaml`): what
    /// `dask.config.update(dask.config.config, yaml.safe_load(open(path)))` or a copy in
    /// `~/.config/dask/` loads.
    pub dask_config_file: PathBuf,
}

impl ClientTlsFiles {
    /// The files' paths in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        ClientTlsFiles {
            ca_file: dir.join(CA_KEY),
            cert_file: dir.join(CERT_KEY),
            key_file: dir.join(KEY_KEY),
            dask_config_file: dir.join("dask.yaml"),
        }
    }

    /// The client's settings as Dask config (`distributed.comm.*`).
    pub fn dask_config(&self) -> Value {
        json!({"distributed": {"comm": {
            "require-encryption": true,
            "tls": {
                "ca-file": self.ca_file,
                "client": {"cert": self.cert_file, "key": self.key_file},
            },
        }}})
    }

    /// The keyword arguments of `distributed.security.Security(**kwargs)` for a client.
    pub fn security_kwargs(&self) -> Value {
        json!({
            "require_encryption": true,
            "tls_ca_file": self.ca_file,
            "tls_client_cert": self.cert_file,
            "tls_client_key": self.key_file,
        })
    }

    /// The same as `DASK_*` variables, which a plain `distributed.Client(address)` reads
    /// through `dask.config` (`export` them, or `dask.config.set` the keys).
    pub fn client_env(&self) -> Vec<(String, String)> {
        let path = |p: &Path| p.display().to_string();
        vec![
            (REQUIRE_ENCRYPTION_ENV.to_owned(), "True".to_owned()),
            (CA_FILE_ENV.to_owned(), path(&self.ca_file)),
            (
                format!("{TLS_ENV_PREFIX}CLIENT__CERT"),
                path(&self.cert_file),
            ),
            (format!("{TLS_ENV_PREFIX}CLIENT__KEY"), path(&self.key_file)),
        ]
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::io(format!("writing {}", path.display()), e);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    set_mode(path, 0o600).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn issued() -> ClusterTls {
        ClusterTls::issue(
            "etl",
            "team",
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
        .unwrap()
    }

    #[test]
    fn client_files_are_private_and_named_to_dask() {
        let dir = tempfile::tempdir().unwrap();
        let tls = issued();
        let files = tls.write_client_files(&dir.path().join("tls")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&files.key_file).unwrap(),
            tls.key_pem
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("tls")), 0o700);
            assert_eq!(mode(&files.key_file), 0o600);
        }
        let env: std::collections::BTreeMap<_, _> = files.client_env().into_iter().collect();
        assert_eq!(env[REQUIRE_ENCRYPTION_ENV], "True");
        assert_eq!(
            env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"],
            files.key_file.display().to_string()
        );
        assert_eq!(files.security_kwargs()["require_encryption"], true);
        let config: Value =
            serde_norway::from_str(&std::fs::read_to_string(&files.dask_config_file).unwrap())
                .unwrap();
        assert_eq!(
            config["distributed"]["comm"]["tls"]["client"]["key"],
            files.key_file.display().to_string()
        );
        assert_eq!(config["distributed"]["comm"]["require-encryption"], true);
    }
}
