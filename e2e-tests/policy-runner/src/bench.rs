//! Benchmarks of the evaluation path.
//!
//! - [`run_like_kwctl`]: `bench`, what `kwctl bench` does: settings validated once, then
//!   tiny-bench (the library kwctl uses) times `validate_settings` and `validate` on one
//!   instance, with kwctl's flags and output.
//! - [`run`]: `timings`, what policy-server pays per request (fresh instance +
//!   `validate` + response building) split into phases, with medians and p99,
//!   optionally against the same logic compiled natively.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::admission::{AdmissionRequest, AdmissionResponse};
use crate::evaluator::{DEFAULT_TIMEOUT, PolicyModule, validate_payload};
use crate::settings::Settings;
use crate::{Error, Result};

/// `kwctl bench`'s tuning flags; `None` keeps tiny-bench's default, as in kwctl.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KwctlBenchFlags {
    /// `--measurement-time <SECONDS>`.
    pub measurement_time: Option<u64>,
    /// `--num-resamples <NUM>`.
    pub num_resamples: Option<usize>,
    /// `--num-samples <NUM>`.
    pub num_samples: Option<usize>,
    /// `--warm-up-time <SECONDS>`.
    pub warm_up_time: Option<u64>,
    /// `--dump-results-to-disk <VALUE>`: given at all means on (kwctl checks presence).
    pub dump_results_to_disk: bool,
}

impl KwctlBenchFlags {
    /// The tiny-bench configuration kwctl builds from these flags. (kwctl 1.36 stores
    /// `--num-samples` into `num_resamples` by mistake; here it sets the sample count,
    /// as its help text says.)
    pub fn to_config(&self) -> tiny_bench::BenchmarkConfig {
        let mut config = tiny_bench::BenchmarkConfig::default();
        if let Some(seconds) = self.measurement_time {
            config.measurement_time = Duration::from_secs(seconds);
        }
        if let Some(n) = self.num_resamples {
            config.num_resamples = n;
        }
        if let Some(n) = self.num_samples {
            config.num_samples = n;
        }
        if let Some(seconds) = self.warm_up_time {
            config.warm_up_time = Duration::from_secs(seconds);
        }
        config.dump_results_to_disk = self.dump_results_to_disk;
        config
    }
}

/// `kwctl bench`: checks protocol and settings (invalid settings fail as in `run`), then
/// lets tiny-bench time `validate_settings` and `validate` (+ response building) on one
/// instance, printing its report to stdout under those two labels.
pub fn run_like_kwctl(
    module: &PolicyModule,
    settings: &Settings,
    request: &AdmissionRequest,
    flags: &KwctlBenchFlags,
) -> Result<()> {
    if flags.num_samples == Some(0) {
        return Err(Error::Bench("--num-samples must be at least 1".to_owned()));
    }
    let config = flags.to_config();
    let instance = module.instantiate()?;
    instance.protocol_version()?;
    instance.validate_settings(settings)?;
    tiny_bench::bench_with_configuration_labeled("validate_settings", &config, || {
        instance.validate_settings(settings).is_ok()
    });
    tiny_bench::bench_with_configuration_labeled("validate", &config, || {
        instance.validate(settings, request)
    });
    Ok(())
}

/// Summary statistics of one timed phase, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stats {
    /// Number of samples.
    pub samples: usize,
    /// Median (mean of the two middle samples for an even count).
    pub median_us: f64,
    /// 99th percentile, nearest-rank.
    pub p99_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Fastest sample.
    pub min_us: f64,
    /// Slowest sample.
    pub max_us: f64,
}

impl Stats {
    /// Summarises samples; `None` when there are none.
    pub fn from_durations(samples: &[Duration]) -> Option<Self> {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let n = us.len();
        let (first, last) = (*us.first()?, *us.last()?);
        let median = if n % 2 == 1 {
            us[n / 2]
        } else {
            (us[n / 2 - 1] + us[n / 2]) / 2.0
        };
        Some(Self {
            samples: n,
            median_us: median,
            p99_us: nearest_rank(&us, 99.0),
            mean_us: us.iter().sum::<f64>() / n as f64,
            min_us: first,
            max_us: last,
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn nearest_rank(sorted: &[f64], percentile: f64) -> f64 {
    let rank = (percentile / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How many evaluations to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchConfig {
    /// Timed evaluations.
    pub iterations: usize,
    /// Untimed evaluations first (warms caches, lazy init).
    pub warmup: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            iterations: 2000,
            warmup: 100,
        }
    }
}

/// The native counterpart of the guest's `validate`: the policy crate's
/// `validate_payload(payload) -> Result<Vec<u8>, String>`.
pub type NativeValidate<'a> = &'a dyn Fn(&[u8]) -> std::result::Result<Vec<u8>, String>;

/// Native timings and how they compare.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NativeReport {
    /// `validate_payload` called natively on the same payload.
    pub validate: Stats,
    /// Median wasm full path / median native.
    pub ratio_evaluate: f64,
    /// Median wasm `validate` call (+ response) / median native.
    pub ratio_validate: f64,
    /// Whether the native answer is the same JSON as the guest's answer.
    pub same_answer_as_wasm: bool,
}

/// Everything `bench` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Module size in bytes.
    pub module_bytes: usize,
    /// Time to compile the module once, in milliseconds.
    pub compile_ms: f64,
    /// Timed evaluations.
    pub iterations: usize,
    /// Untimed evaluations before.
    pub warmup: usize,
    /// The response of the last evaluation (all are identical for a pure policy).
    pub response: AdmissionResponse,
    /// Full path: fresh instance + `validate` + response building.
    pub evaluate: Stats,
    /// Instantiation alone (store + `wapc_init`).
    pub instantiate: Stats,
    /// `validate` call + response building alone.
    pub validate: Stats,
    /// The native comparison, with `--native`.
    pub native: Option<NativeReport>,
}

/// Compiles the module, checks protocol and settings once, then times `iterations`
/// evaluations on fresh instances (and the native function on the same payload).
pub fn run(
    module_bytes: &[u8],
    settings: &Settings,
    request: &AdmissionRequest,
    config: BenchConfig,
    native: Option<NativeValidate<'_>>,
) -> Result<BenchReport> {
    if config.iterations == 0 {
        return Err(Error::Bench("--iterations must be at least 1".to_owned()));
    }
    let start = Instant::now();
    let module = PolicyModule::from_bytes(module_bytes, DEFAULT_TIMEOUT)?;
    let compile = start.elapsed();
    {
        let instance = module.instantiate()?;
        instance.protocol_version()?;
        instance.validate_settings(settings)?;
    }

    let mut evaluate = Vec::with_capacity(config.iterations);
    let mut instantiate = Vec::with_capacity(config.iterations);
    let mut validate = Vec::with_capacity(config.iterations);
    let mut response = AdmissionResponse::default();
    for i in 0..config.warmup + config.iterations {
        let t0 = Instant::now();
        let instance = module.instantiate()?;
        let t1 = Instant::now();
        response = instance.validate(settings, request);
        let t2 = Instant::now();
        drop(instance);
        if i >= config.warmup {
            instantiate.push(t1 - t0);
            validate.push(t2 - t1);
            evaluate.push(t2 - t0);
        }
    }
    let summary = |samples: &[Duration]| {
        Stats::from_durations(samples).ok_or_else(|| Error::Bench("no samples".to_owned()))
    };
    let (evaluate, instantiate, validate) = (
        summary(&evaluate)?,
        summary(&instantiate)?,
        summary(&validate)?,
    );

    let native = match native {
        Some(f) => Some(bench_native(
            f, &module, settings, request, config, &evaluate, &validate,
        )?),
        None => None,
    };
    Ok(BenchReport {
        module_bytes: module.size_bytes(),
        compile_ms: compile.as_secs_f64() * 1e3,
        iterations: config.iterations,
        warmup: config.warmup,
        response,
        evaluate,
        instantiate,
        validate,
        native,
    })
}

fn bench_native(
    f: NativeValidate<'_>,
    module: &PolicyModule,
    settings: &Settings,
    request: &AdmissionRequest,
    config: BenchConfig,
    wasm_evaluate: &Stats,
    wasm_validate: &Stats,
) -> Result<NativeReport> {
    let payload = validate_payload(settings, request)?;
    let wasm_answer = module.instantiate()?.call("validate", &payload)?;
    let native_answer =
        f(&payload).map_err(|e| Error::Bench(format!("native validate_payload failed: {e}")))?;
    let same_answer_as_wasm = serde_json::from_slice::<serde_json::Value>(&wasm_answer).ok()
        == serde_json::from_slice::<serde_json::Value>(&native_answer).ok();

    let mut samples = Vec::with_capacity(config.iterations);
    for i in 0..config.warmup + config.iterations {
        let t0 = Instant::now();
        let out = f(&payload);
        let elapsed = t0.elapsed();
        std::hint::black_box(out).map_err(|e| Error::Bench(format!("native failed: {e}")))?;
        if i >= config.warmup {
            samples.push(elapsed);
        }
    }
    let validate =
        Stats::from_durations(&samples).ok_or_else(|| Error::Bench("no samples".to_owned()))?;
    let ratio = |wasm: f64| {
        if validate.median_us > 0.0 {
            wasm / validate.median_us
        } else {
            f64::INFINITY
        }
    };
    Ok(NativeReport {
        validate,
        ratio_evaluate: ratio(wasm_evaluate.median_us),
        ratio_validate: ratio(wasm_validate.median_us),
        same_answer_as_wasm,
    })
}

impl BenchReport {
    /// The human-readable report.
    pub fn to_text(&self, module_label: &str) -> String {
        let row = |name: &str, s: &Stats| {
            format!(
                "{name:<28}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}\n",
                s.median_us, s.p99_us, s.mean_us, s.min_us, s.max_us
            )
        };
        let patched = self.response.patch.is_some();
        let mut out = format!(
            "module:     {module_label} ({} bytes, {:.1} KiB), compiled in {:.0} ms\n\
             response:   allowed={} patched={patched}\n\
             iterations: {} (warmup {}), fresh instance per evaluation\n\n\
             {:<28}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            self.module_bytes,
            self.module_bytes as f64 / 1024.0,
            self.compile_ms,
            self.response.allowed,
            self.iterations,
            self.warmup,
            "time (us)",
            "median",
            "p99",
            "mean",
            "min",
            "max",
        );
        out.push_str(&row("wasm evaluate (full path)", &self.evaluate));
        out.push_str(&row("  instantiate", &self.instantiate));
        out.push_str(&row("  validate + response", &self.validate));
        if let Some(native) = &self.native {
            out.push_str(&row("native validate_payload", &native.validate));
            out.push_str(&format!(
                "\nwasm/native (medians): {:.1}x full path, {:.1}x validate only; same answer: {}\n",
                native.ratio_evaluate, native.ratio_validate, native.same_answer_as_wasm
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn us(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_micros(*v)).collect()
    }

    #[rstest]
    #[case::single(&[5], 5.0, 5.0, 5.0, 5.0, 5.0)]
    #[case::odd_count(&[3, 1, 2], 2.0, 3.0, 2.0, 1.0, 3.0)]
    #[case::even_count_averages_middles(&[4, 1, 3, 2], 2.5, 4.0, 2.5, 1.0, 4.0)]
    #[case::p99_of_hundred_is_99th(&(1..=100).collect::<Vec<_>>(), 50.5, 99.0, 50.5, 1.0, 100.0)]
    #[case::p99_of_thousand(&(1..=1000).collect::<Vec<_>>(), 500.5, 990.0, 500.5, 1.0, 1000.0)]
    #[case::outlier_shows_in_max_not_median(&[10, 10, 10, 10, 1000], 10.0, 1000.0, 208.0, 10.0, 1000.0)]
    fn summarises_samples(
        #[case] samples: &[u64],
        #[case] median: f64,
        #[case] p99: f64,
        #[case] mean: f64,
        #[case] min: f64,
        #[case] max: f64,
    ) {
        let Some(s) = Stats::from_durations(&us(samples)) else {
            panic!("samples given");
        };
        assert_eq!(s.samples, samples.len());
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(s.median_us, median), "median {s:?}");
        assert!(close(s.p99_us, p99), "p99 {s:?}");
        assert!(close(s.mean_us, mean), "mean {s:?}");
        assert!(
            close(s.min_us, min) && close(s.max_us, max),
            "min/max {s:?}"
        );
    }

    #[rstest]
    #[case::defaults(KwctlBenchFlags::default(), 5, 100_000, 100, 3, false)]
    #[case::all_given(KwctlBenchFlags { measurement_time: Some(2), num_resamples: Some(10),
        num_samples: Some(20), warm_up_time: Some(1), dump_results_to_disk: true }, 2, 10, 20, 1, true)]
    fn kwctl_flags_become_tiny_bench_config(
        #[case] flags: KwctlBenchFlags,
        #[case] measurement_s: u64,
        #[case] resamples: usize,
        #[case] samples: usize,
        #[case] warm_up_s: u64,
        #[case] dump: bool,
    ) {
        let config = flags.to_config();
        assert_eq!(config.measurement_time, Duration::from_secs(measurement_s));
        assert_eq!(config.num_resamples, resamples);
        assert_eq!(config.num_samples, samples);
        assert_eq!(config.warm_up_time, Duration::from_secs(warm_up_s));
        assert_eq!(config.dump_results_to_disk, dump);
        assert_eq!(config.max_iterations, None);
    }

    #[test]
    fn no_samples_no_stats() {
        assert_eq!(Stats::from_durations(&[]), None);
    }
}
