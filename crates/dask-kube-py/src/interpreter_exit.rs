//! Python awaitables on the tokio runtime that stay safe while the interpreter exits.
//!
//! pyo3-async-runtimes hands an awaitable's result back to Python from a runtime thread
//! (`spawn_blocking` + `Python::attach` + `loop.call_soon_threadsafe`). Its runtime is
//! never shut down, so a result that lands while `Py_Finalize` runs attaches to a dying
//! interpreter: a PyO3 panic ("The Python interpreter is not initialized") or a SIGSEGV
//! in a script that called `cluster.close()` and returned (PyO3/pyo3-async-runtimes#40).
//! Every call into Python from a runtime thread therefore passes an [`ExitGate`] that
//! `atexit` closes: closing waits (GIL released, bounded) for the calls already inside,
//! and later calls are skipped. Python's `atexit` callbacks run before finalization,
//! while the interpreter is whole.

use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use pyo3_async_runtimes::generic::{self, ContextExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How long `atexit` waits for results already being handed to Python.
pub const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Admits calls into Python until closed; [`close`](ExitGate::close) waits for the calls
/// already admitted.
#[derive(Default)]
pub struct ExitGate {
    closed: AtomicBool,
    inside: AtomicUsize,
    lock: Mutex<()>,
    left: Condvar,
}

/// Counts one admitted call out when dropped (also when the call panics).
struct Inside<'a>(&'a ExitGate);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        if self.0.inside.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Under the lock, so `close` cannot check the count and then miss this.
            let _held = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.0.left.notify_all();
        }
    }
}

impl ExitGate {
    /// An open gate (`const`: the process's gate is a `static`).
    pub const fn new() -> Self {
        ExitGate {
            closed: AtomicBool::new(false),
            inside: AtomicUsize::new(0),
            lock: Mutex::new(()),
            left: Condvar::new(),
        }
    }

    /// Runs `call` unless the gate is closed (then `None`). Entering is counted before
    /// the check and `close` sets the flag before it reads the count (both SeqCst): a call
    /// either sees the gate closed or is waited for.
    pub fn run<T>(&self, call: impl FnOnce() -> T) -> Option<T> {
        self.inside.fetch_add(1, Ordering::SeqCst);
        let inside = Inside(self);
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        let out = call();
        drop(inside);
        Some(out)
    }

    /// Closes the gate and waits up to `timeout` for the calls inside; true when none is.
    pub fn close(&self, timeout: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (_held, waited) = self
            .left
            .wait_timeout_while(held, timeout, |_| self.inside.load(Ordering::SeqCst) > 0)
            .unwrap_or_else(|e| e.into_inner());
        !waited.timed_out()
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// The one gate of this process's interpreter.
pub static PYTHON: ExitGate = ExitGate::new();

/// Called by `atexit` (registered when `dask_kube` is imported): closes [`PYTHON`], waiting
/// with the GIL released, since the calls inside need it to finish.
#[pyfunction]
pub fn close_at_interpreter_exit(py: Python<'_>) -> bool {
    py.detach(|| PYTHON.close(EXIT_WAIT))
}

/// pyo3-async-runtimes' tokio runtime (the same threads), with its hand-back to Python
/// passed through [`PYTHON`].
struct GatedTokio;

tokio::task_local! {
    static TASK_LOCALS: TaskLocals;
}

impl generic::Runtime for GatedTokio {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        pyo3_async_runtimes::tokio::get_runtime().spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        // A skipped hand-back drops `f` without the GIL; PyO3 defers those decrefs.
        pyo3_async_runtimes::tokio::get_runtime().spawn_blocking(move || {
            PYTHON.run(f);
        })
    }
}

impl ContextExt for GatedTokio {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(TASK_LOCALS.scope(locals, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(Clone::clone).ok()
    }
}

/// `fut` as an awaitable on the caller's running asyncio loop (what
/// `pyo3_async_runtimes::tokio::future_into_py` does, on [`GatedTokio`]).
pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    generic::future_into_py::<GatedTokio, _, T>(py, fut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::thread;

    #[test]
    fn an_open_gate_runs_the_call() {
        assert_eq!(ExitGate::new().run(|| 7), Some(7));
    }

    #[test]
    fn a_closed_gate_skips_the_call() {
        let gate = ExitGate::new();
        assert!(gate.close(Duration::from_millis(10)), "nothing was inside");
        let mut ran = false;
        assert_eq!(gate.run(|| ran = true), None);
        assert!(!ran && gate.is_closed());
    }

    #[test]
    fn close_waits_for_the_call_inside_then_returns_true() {
        let gate = Arc::new(ExitGate::new());
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let inside = {
            let gate = gate.clone();
            thread::spawn(move || {
                gate.run(|| {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    "handed back"
                })
            })
        };
        entered.recv().unwrap();
        let closer = {
            let gate = gate.clone();
            thread::spawn(move || gate.close(Duration::from_secs(30)))
        };
        // The closer is waiting: the call inside has not been released.
        thread::sleep(Duration::from_millis(50));
        assert!(
            !closer.is_finished(),
            "close returned while a call was inside"
        );
        release.send(()).unwrap();
        assert_eq!(inside.join().unwrap(), Some("handed back"));
        assert!(closer.join().unwrap());
    }

    #[test]
    fn close_gives_up_after_its_timeout_when_a_call_never_leaves() {
        let gate = Arc::new(ExitGate::new());
        let (entered_tx, entered) = mpsc::channel();
        let (_never, never_rx) = mpsc::channel::<()>();
        let _stuck = {
            let gate = gate.clone();
            thread::spawn(move || {
                gate.run(|| {
                    entered_tx.send(()).unwrap();
                    let _ = never_rx.recv();
                })
            })
        };
        entered.recv().unwrap();
        assert!(!gate.close(Duration::from_millis(20)));
    }

    #[test]
    fn a_panicking_call_still_counts_itself_out() {
        let gate = Arc::new(ExitGate::new());
        let g = gate.clone();
        assert!(
            thread::spawn(move || g.run(|| panic!("boom")))
                .join()
                .is_err()
        );
        assert!(gate.close(Duration::from_millis(10)));
    }
}
