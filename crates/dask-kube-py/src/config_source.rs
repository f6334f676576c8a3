//! The Python process's `dask.config` as the library's [`ConfigSource`]: read when the
//! library needs a value (a cluster's resolution, the cap before each scale and adapt), so
//! `dask.config.set({"kubernetes.count.max": 1})` while a cluster runs caps its next
//! `scale`, as in Dask.

use crate::interpreter_exit;
use crate::options::PythonConfigSnapshot;
use dask_kube::{ConfigSource, DaskConfig, Error, Result};
use pyo3::prelude::*;
use std::sync::Mutex;

/// Where the Python-side configuration comes from, for messages.
const ORIGIN: &str = "dask.config (Python)";

/// Calls a Python function answering JSON of [`PythonConfigSnapshot`] (the `dask.config`
/// and `os.environ` of the moment). Once the interpreter is exiting no Python runs: the
/// last configuration read is answered.
pub struct PythonConfig {
    getter: Py<PyAny>,
    last: Mutex<Option<DaskConfig>>,
}

impl PythonConfig {
    /// A source calling `getter`.
    pub fn new(getter: Py<PyAny>) -> Self {
        PythonConfig {
            getter,
            last: Mutex::new(None),
        }
    }

    fn read(&self) -> Result<String> {
        let answered = interpreter_exit::PYTHON.run(|| {
            Python::attach(|py| {
                self.getter
                    .call0(py)
                    .and_then(|v| v.extract::<String>(py))
                    .map_err(|e| e.to_string())
            })
        });
        match answered {
            Some(Ok(text)) => Ok(text),
            Some(Err(reason)) => Err(Error::Config {
                origin: ORIGIN.into(),
                reason,
            }),
            None => Err(Error::Config {
                origin: ORIGIN.into(),
                reason: "the interpreter is exiting".into(),
            }),
        }
    }
}

impl ConfigSource for PythonConfig {
    fn load(&self) -> Result<DaskConfig> {
        let last = || self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let text = match self.read() {
            Ok(text) => text,
            Err(e) => return last().ok_or(e),
        };
        let snapshot: PythonConfigSnapshot =
            serde_json::from_str(&text).map_err(|e| Error::Config {
                origin: ORIGIN.into(),
                reason: e.to_string(),
            })?;
        let config = snapshot.dask_config()?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(config.clone());
        Ok(config)
    }
}
