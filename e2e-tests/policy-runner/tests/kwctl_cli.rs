//! policy-runner's `annotate`, `run` and `bench` take exactly kwctl 1.36's flags, and a
//! module annotated by either tool runs in both.
//!
//! The flag lists below are kwctl's, as data. Source: Kubewarden's public monorepo
//! (github.com/kubewarden/adm-controller, formerly kubewarden-controller), file
//! `crates/kwctl/src/cli.rs`: `run_args()` (shared by `run` and `bench`),
//! `subcommand_bench()` (adds tiny-bench's tuning) and `subcommand_annotate()`; checked
//! against `crates/kwctl/cli-docs.adoc` of the same tree. The tree read was kwctl
//! 1.37.2 (commit 0913fbbbaf98); its run/bench/annotate flags are 1.36's: 1.36.0
//! (Cargo.toml at d25401b7ebff) differs only in `--execution-mode`'s values (1.37 added
//! `ferricel`, with the ferricel-core dependency 1.36.0 lacks), the 1.37 release notes add
//! no flag to these commands, and the flags added later (`--policy-memory-limit`,
//! `--disable-memory-limit`, 1.38) are not here. `--allowed-host-capabilities` came in
//! 1.35 (its release notes). Whether a flag takes a value is from the source
//! (`num_args(0)` = no value), since the generated docs show `<VALUE>` for every flag.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{BIN, annotate, annotated_module, plain_module, policy_metadata};
use policy_runner::metadata::{
    ANNOTATION_KWCTL_VERSION, KWCTL_COMPAT_VERSION, METADATA_SECTION, PolicyMetadata,
    ProtocolVersion, annotator_version,
};
use rstest::rstest;

/// The kwctl release these lists describe.
const KWCTL_VERSION: &str = "1.36.0";

/// One option: long name, short name, and the value it takes (`None`: a switch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Flag {
    long: String,
    short: Option<char>,
    value: Option<String>,
}

/// A flag as listed below: long name, short name, value name (`None`: a switch).
type FlagSpec = (&'static str, Option<char>, Option<&'static str>);

const fn flag(long: &'static str, short: Option<char>, value: Option<&'static str>) -> FlagSpec {
    (long, short, value)
}

/// kwctl 1.36 `run_args()`, plus clap's `--help`.
const RUN: &[FlagSpec] = &[
    flag("allow-context-aware", None, None),
    flag(
        "allowed-host-capabilities",
        None,
        Some("ALLOWED-HOST-CAPABILITIES"),
    ),
    flag("cert-email", None, Some("VALUE")),
    flag("cert-oidc-issuer", None, Some("VALUE")),
    flag("disable-wasmtime-cache", None, None),
    flag("docker-config-json-path", None, Some("PATH")),
    flag("execution-mode", Some('e'), Some("MODE")),
    flag("github-owner", None, Some("VALUE")),
    flag("github-repo", None, Some("VALUE")),
    flag("help", Some('h'), None),
    flag("raw", None, None),
    flag("record-host-capabilities-interactions", None, Some("FILE")),
    flag("replay-host-capabilities-interactions", None, Some("FILE")),
    flag("request-path", Some('r'), Some("PATH")),
    flag("settings-json", None, Some("VALUE")),
    flag("settings-path", Some('s'), Some("PATH")),
    flag("sigstore-trust-config", None, Some("PATH")),
    flag("sources-path", None, Some("PATH")),
    flag("verification-annotation", Some('a'), Some("KEY=VALUE")),
    flag("verification-config-path", None, Some("PATH")),
    flag("verification-key", Some('k'), Some("PATH")),
];

/// kwctl 1.36 `subcommand_bench()`: `run_args()` plus these.
const BENCH_EXTRA: &[FlagSpec] = &[
    flag("dump-results-to-disk", None, Some("DUMP_RESULTS_TO_DISK")),
    flag("measurement-time", None, Some("SECONDS")),
    flag("num-resamples", None, Some("NUM")),
    flag("num-samples", None, Some("NUM")),
    flag("warm-up-time", None, Some("SECONDS")),
];

/// kwctl 1.36 `subcommand_annotate()`, plus `--help`.
const ANNOTATE: &[FlagSpec] = &[
    flag("help", Some('h'), None),
    flag("metadata-path", Some('m'), Some("PATH")),
    flag("output-path", Some('o'), Some("PATH")),
    flag("usage-path", Some('u'), Some("PATH")),
];

/// kwctl 1.36's `Usage:` lines (clap's), with the binary name left out.
const USAGE: &[(&str, &str)] = &[
    (
        "run",
        "run [OPTIONS] --request-path <PATH> <uri_or_sha_prefix_or_yaml_file>",
    ),
    (
        "bench",
        "bench [OPTIONS] --request-path <PATH> <uri_or_sha_prefix_or_yaml_file>",
    ),
    (
        "annotate",
        "annotate [OPTIONS] --metadata-path <PATH> --output-path <PATH> <wasm-path>",
    ),
];

fn kwctl_flags(lists: &[&[FlagSpec]]) -> BTreeSet<Flag> {
    lists
        .iter()
        .flat_map(|list| list.iter())
        .map(|(long, short, value)| Flag {
            long: (*long).to_owned(),
            short: *short,
            value: value.map(str::to_owned),
        })
        .collect()
}

fn help(command: &str) -> anyhow::Result<String> {
    let out = Command::new(BIN).args([command, "--help"]).output()?;
    anyhow::ensure!(out.status.success(), "{command} --help failed");
    Ok(String::from_utf8(out.stdout)?)
}

/// The options clap lists under `Options:`: `  -r, --request-path <PATH>  text`.
fn flags_in_help(help: &str) -> anyhow::Result<BTreeSet<Flag>> {
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        let spec = line.split("  ").next().unwrap_or_default();
        let mut short = None;
        let mut rest = spec;
        if let Some(after) = spec.strip_prefix('-')
            && !after.starts_with('-')
        {
            short = after.chars().next();
            rest = after.get(1..).unwrap_or_default().trim_start_matches(", ");
        }
        let rest = rest
            .strip_prefix("--")
            .ok_or_else(|| anyhow::anyhow!("no long name in {line:?}"))?;
        let (long, value) = match rest.split_once(' ') {
            None => (rest, None),
            Some((long, value)) => {
                let name = value
                    .trim_matches(|c| matches!(c, '[' | ']' | '<' | '>' | '.'))
                    .to_uppercase();
                (long, Some(name))
            }
        };
        flags.insert(Flag {
            long: long.to_owned(),
            short,
            value,
        });
    }
    Ok(flags)
}

#[rstest]
#[case::run("run", kwctl_flags(&[RUN]))]
#[case::bench("bench", kwctl_flags(&[RUN, BENCH_EXTRA]))]
#[case::annotate("annotate", kwctl_flags(&[ANNOTATE]))]
fn flags_are_kwctls(#[case] command: &str, #[case] kwctl: BTreeSet<Flag>) -> anyhow::Result<()> {
    let ours = flags_in_help(&help(command)?)?;
    let extra: Vec<_> = ours.difference(&kwctl).collect();
    let missing: Vec<_> = kwctl.difference(&ours).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "`{command}` differs from kwctl {KWCTL_VERSION}: not in kwctl {extra:?}; missing {missing:?}"
    );
    Ok(())
}

#[test]
fn usage_lines_are_kwctls() -> anyhow::Result<()> {
    assert_eq!(KWCTL_COMPAT_VERSION, KWCTL_VERSION);
    for (command, usage) in USAGE {
        let help = help(command)?;
        let line = help
            .lines()
            .find_map(|l| l.strip_prefix("Usage: policy-runner "))
            .ok_or_else(|| anyhow::anyhow!("no usage line in {help}"))?;
        assert_eq!(line, *usage, "`{command}`");
    }
    Ok(())
}

#[test]
fn the_parser_of_this_test_reads_clap_help() -> anyhow::Result<()> {
    let sample = "Options:\n  -r, --request-path <PATH>  File\n      --raw  Validate\n      --allowed-host-capabilities [<allowed-host-capabilities>...]  Host\n  -h, --help  Print help\n";
    let flags = flags_in_help(sample)?;
    assert_eq!(
        flags,
        kwctl_flags(&[&[
            flag("request-path", Some('r'), Some("PATH")),
            flag("raw", None, None),
            flag(
                "allowed-host-capabilities",
                None,
                Some("ALLOWED-HOST-CAPABILITIES")
            ),
            flag("help", Some('h'), None),
        ]])
    );
    Ok(())
}

/// What annotate stores, read back as kwctl reads it: the section kwctl uses, kwctl's
/// JSON fields, the protocol version found by asking the module, and the annotator.
#[test]
fn annotate_writes_kwctls_metadata_section() -> anyhow::Result<()> {
    let plain = std::fs::read(plain_module()?)?;
    let annotated = std::fs::read(annotated_module()?)?;
    assert!(
        annotated.starts_with(&plain),
        "the module itself is untouched, the section is appended"
    );
    let section = policy_runner::wasm_section::custom_section(&annotated, METADATA_SECTION)?
        .ok_or_else(|| anyhow::anyhow!("no {METADATA_SECTION} section"))?;
    // kwctl's field order (serde_json::Value would sort the keys: read the text).
    let text = std::str::from_utf8(section)?;
    let positions: Vec<Option<usize>> = [
        "protocolVersion",
        "rules",
        "annotations",
        "mutating",
        "backgroundAudit",
        "executionMode",
        "policyType",
        "contextAwareResources",
    ]
    .iter()
    .map(|key| text.find(&format!("\"{key}\":")))
    .collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.is_sorted(),
        "fields out of kwctl's order: {positions:?} in {text}"
    );
    assert!(
        text.starts_with(r#"{"protocolVersion":"v1","rules":[{"apiGroups":[""]"#),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_slice(section)?;
    assert_eq!(json["protocolVersion"], "v1");
    assert_eq!(json["executionMode"], "kubewarden-wapc");
    assert_eq!(
        json["annotations"][ANNOTATION_KWCTL_VERSION],
        annotator_version()
    );

    // Everything the author wrote is there.
    let written = PolicyMetadata::from_yaml(&std::fs::read_to_string(policy_metadata())?)?;
    let stored =
        PolicyMetadata::from_module(&annotated)?.ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    assert_eq!(stored.rules, written.rules);
    assert_eq!(stored.mutating, written.mutating);
    assert_eq!(stored.background_audit, written.background_audit);
    for (key, value) in written.annotations.unwrap_or_default() {
        assert_eq!(
            stored.annotations.as_ref().and_then(|a| a.get(&key)),
            Some(&value),
            "{key}"
        );
    }
    Ok(())
}

#[test]
fn annotate_twice_replaces_the_metadata_and_adds_usage() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let usage = dir.path().join("usage.md");
    std::fs::write(
        &usage,
        "Set `onMismatch` to `useFlags` to trust the flags.\n",
    )?;
    let twice = dir.path().join("twice.wasm");
    let out = Command::new(BIN)
        .args(["annotate", "-m"])
        .arg(
            common::repo_root()
                .join("e2e-tests/policy-runner/tests/fixtures/metadata-not-mutating.yml"),
        )
        .arg("-u")
        .arg(&usage)
        .arg("-o")
        .arg(&twice)
        .arg(annotated_module()?)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&twice)?;
    let meta =
        PolicyMetadata::from_module(&bytes)?.ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    assert!(!meta.mutating, "the second metadata wins");
    let usage_annotation = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get("io.kubewarden.policy.usage"))
        .cloned();
    assert_eq!(
        usage_annotation.as_deref(),
        Some("Set `onMismatch` to `useFlags` to trust the flags.\n")
    );
    // One section only: the plain module plus one metadata section of this size.
    let plain_len = std::fs::metadata(plain_module()?)?.len();
    let section = policy_runner::wasm_section::custom_section(&bytes, METADATA_SECTION)?
        .map(<[u8]>::len)
        .unwrap_or_default() as u64;
    assert!(
        bytes.len() as u64 <= plain_len + section + 32,
        "one section"
    );
    Ok(())
}

/// A module as kwctl annotates it: its `annotations` come from a HashMap (any order),
/// and it carries fields this host does not use. `run` reads it and runs it.
#[test]
fn a_module_annotated_the_kwctl_way_runs() -> anyhow::Result<()> {
    let kwctl_json = serde_json::json!({
        "protocolVersion": "v1",
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"]}],
        "annotations": {"io.kubewarden.policy.title": "dask-worker-defaults", "io.kubewarden.kwctl": KWCTL_VERSION},
        "mutating": true,
        "backgroundAudit": false,
        "executionMode": "kubewarden-wapc",
        "policyType": "kubernetes",
        "contextAwareResources": [],
        "hostCapabilities": []
    });
    let plain = std::fs::read(plain_module()?)?;
    let module = policy_runner::wasm_section::replace_custom_section(
        &plain,
        METADATA_SECTION,
        &serde_json::to_vec(&kwctl_json)?,
    )?;
    let meta =
        PolicyMetadata::from_module(&module)?.ok_or_else(|| anyhow::anyhow!("no metadata"))?;
    assert_eq!(meta.protocol_version, Some(ProtocolVersion::V1));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kwctl-annotated.wasm");
    std::fs::write(&path, &module)?;
    let review = common::repo_root()
        .join("e2e-tests/policy-runner/tests/fixtures/worker-pod-create-review.json");
    let out = Command::new(BIN)
        .arg("run")
        .arg("-r")
        .arg(&review)
        .arg("-e")
        .arg("kubewarden")
        .arg(&path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_some(), "{response}");
    Ok(())
}

#[rstest]
#[case::text_format(b"(module)".as_slice(), "not a WebAssembly binary module")]
#[case::not_a_wapc_policy(b"\0asm\x01\0\0\0".as_slice(), "protocol version")]
fn annotate_refuses_modules_it_cannot_annotate(
    #[case] module: &[u8],
    #[case] needle: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.wasm");
    std::fs::write(&input, module)?;
    let output = dir.path().join("out.wasm");
    let err = annotate(&input, &policy_metadata(), &output)
        .err()
        .ok_or_else(|| anyhow::anyhow!("annotate must fail"))?;
    assert!(format!("{err:#}").contains(needle), "{err:#}");
    assert!(!output.exists(), "nothing is written on failure");
    Ok(())
}
