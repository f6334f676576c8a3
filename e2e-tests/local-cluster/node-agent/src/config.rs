//! The agent's image mapping: which local environment stands in for a container image.
//!
//! There is no container runtime here, so an image name only selects a PATH (e.g. the dask
//! venv), extra env and the image's ENTRYPOINT/CMD defaults. The file format is documented in
//! the crate README; the first mapping whose pattern matches wins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The PATH a container starts from, before a mapping's `pathPrefix`.
pub const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMapping {
    name: String,
    #[serde(rename = "match")]
    patterns: OneOrMany,
    #[serde(default)]
    path_prefix: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    images: Vec<RawMapping>,
}

/// One image -> local environment mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMapping {
    /// Short name, reported in `imageID` as `local://<name>/<image>`.
    pub name: String,
    /// Glob patterns (`*`, `?`) matched against the image reference.
    pub patterns: Vec<String>,
    /// Directories put in front of [`BASE_PATH`].
    pub path_prefix: Vec<String>,
    /// The image's own environment (pod `env` overrides it).
    pub env: BTreeMap<String, String>,
    /// The image's ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// The image's CMD.
    pub cmd: Vec<String>,
}

/// The whole mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Mappings in file order.
    pub images: Vec<ImageMapping>,
}

impl Config {
    /// Reads and validates a mapping file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config file {}", path.display()), e))?;
        Self::parse(&text, path)
    }

    /// Parses mapping YAML; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let err = |message: String| Error::Config {
            path: PathBuf::from(path),
            message,
        };
        let raw: RawConfig = serde_norway::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut images = Vec::with_capacity(raw.images.len());
        for m in raw.images {
            let patterns = m.patterns.into_vec();
            if m.name.is_empty() || patterns.is_empty() || patterns.iter().any(String::is_empty) {
                return Err(err(format!(
                    "mapping {:?} needs a name and non-empty patterns",
                    m.name
                )));
            }
            if let Some(bad) = m
                .path_prefix
                .iter()
                .find(|p| !p.starts_with('/') || p.contains(':'))
            {
                return Err(err(format!(
                    "mapping {:?}: pathPrefix entry {bad:?} must be an absolute directory without ':'",
                    m.name
                )));
            }
            images.push(ImageMapping {
                name: m.name,
                patterns,
                path_prefix: m.path_prefix,
                env: m.env,
                entrypoint: m.entrypoint,
                cmd: m.cmd,
            });
        }
        Ok(Self { images })
    }

    /// The first mapping matching `image` (also tried without a `docker.io/library/` prefix).
    pub fn resolve(&self, image: &str) -> Option<&ImageMapping> {
        let short = image
            .strip_prefix("docker.io/library/")
            .or_else(|| image.strip_prefix("docker.io/"))
            .unwrap_or(image);
        self.images.iter().find(|m| {
            m.patterns
                .iter()
                .any(|p| glob_match(p, image) || glob_match(p, short))
        })
    }
}

impl ImageMapping {
    /// The process argv with Docker's rules: `command` replaces ENTRYPOINT (and drops CMD),
    /// `args` replaces CMD.
    pub fn argv(&self, command: &[String], args: &[String]) -> Result<Vec<String>> {
        let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
            (false, _) => command.iter().chain(args).cloned().collect(),
            (true, false) => self.entrypoint.iter().chain(args).cloned().collect(),
            (true, true) => self.entrypoint.iter().chain(&self.cmd).cloned().collect(),
        };
        if argv.is_empty() {
            return Err(Error::Spec(format!(
                "no command specified (image mapping {:?} has no entrypoint or cmd)",
                self.name
            )));
        }
        Ok(argv)
    }

    /// The container's PATH.
    pub fn path_env(&self) -> String {
        let mut parts: Vec<&str> = self.path_prefix.iter().map(String::as_str).collect();
        parts.push(BASE_PATH);
        parts.join(":")
    }

    /// What the pod status reports as `imageID`.
    pub fn image_id(&self, image: &str) -> String {
        format!("local://{}/{}", self.name, image)
    }
}

/// Glob matching with `*` (any run of characters, `/` and `:` included) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The default mapping written by the up hook, for a venv at `venv` and the dask-kube binary
/// in `dask_kube_dir`.
pub fn default_yaml(venv: &Path, dask_kube_dir: &Path) -> String {
    format!(
        r#"# node-agent image mapping (see e2e-tests/local-cluster/node-agent/README.md).
# First match wins. Images select a local environment; nothing is pulled.
images:
  - name: dask-kube
    # dask-kube's image: the dask image plus the dask-kube binary as ENTRYPOINT, so a pod runs
    # `args: [adapt, ...]`, and `command: [python, ...]` has dask and distributed.
    match: ["ghcr.io/dask-on-k8s/dask-kube*"]
    pathPrefix: ["{dask_kube_dir}", "{venv}/bin"]
    env:
      VIRTUAL_ENV: "{venv}"
      PYTHONUNBUFFERED: "1"
    entrypoint: ["dask-kube"]
    cmd: ["--help"]
  - name: dask
    # The dask image's ENTRYPOINT (tini + prepare.sh) just execs its args.
    match: ["ghcr.io/dask/dask*", "daskdev/dask*", "ghcr.io/dask/distributed*"]
    pathPrefix: ["{venv}/bin"]
    env:
      VIRTUAL_ENV: "{venv}"
      PYTHONUNBUFFERED: "1"
    entrypoint: []
    cmd: ["python"]
  - name: python
    match: ["python*", "docker.io/library/python*"]
    pathPrefix: ["{venv}/bin"]
    env:
      VIRTUAL_ENV: "{venv}"
      PYTHONUNBUFFERED: "1"
    entrypoint: []
    cmd: ["python3"]
  - name: host
    # busybox, alpine, anything else: the host's /bin.
    match: "*"
    entrypoint: []
    cmd: ["sh"]
"#,
        venv = venv.display(),
        dask_kube_dir = dask_kube_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn config() -> Config {
        Config::parse(
            &default_yaml(Path::new("/venv"), Path::new("/target/debug")),
            Path::new("test.yaml"),
        )
        .unwrap()
    }

    #[rstest]
    #[case::dask_kube("ghcr.io/dask-on-k8s/dask-kube:0.1.0", "dask-kube")]
    #[case::dask_kube_latest("ghcr.io/dask-on-k8s/dask-kube", "dask-kube")]
    #[case::dask_with_tag("ghcr.io/dask/dask:2026.8.0", "dask")]
    #[case::dask_latest("ghcr.io/dask/dask", "dask")]
    #[case::dask_with_digest("ghcr.io/dask/dask@sha256:abc", "dask")]
    #[case::old_daskdev("daskdev/dask:2024.1.0", "dask")]
    #[case::python("python:3.11-slim", "python")]
    #[case::python_docker_io("docker.io/library/python:3.11", "python")]
    #[case::busybox("busybox:1.36", "host")]
    #[case::busybox_docker_io("docker.io/library/busybox", "host")]
    #[case::anything_else("registry.example/team/tool:v1", "host")]
    fn image_mapping(#[case] image: &str, #[case] expected: &str) {
        assert_eq!(config().resolve(image).unwrap().name, expected);
    }

    #[rstest]
    #[case::star_prefix("*dask", "ghcr.io/dask/dask", true)]
    #[case::star_middle("ghcr.io/*/dask", "ghcr.io/dask/dask", true)]
    #[case::question("busybox:1.3?", "busybox:1.36", true)]
    #[case::question_needs_a_char("busybox:1.3?", "busybox:1.3", false)]
    #[case::exact("busybox", "busybox", true)]
    #[case::exact_mismatch("busybox", "busybox:1", false)]
    #[case::backtracking("a*b*c", "aXbYbZc", true)]
    #[case::backtracking_fail("a*b*c", "aXbYbZ", false)]
    #[case::only_star("*", "", true)]
    fn globs(#[case] pattern: &str, #[case] text: &str, #[case] expected: bool) {
        assert_eq!(glob_match(pattern, text), expected);
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[rstest]
    #[case::dask_args_run_directly("ghcr.io/dask/dask", &[], &["dask", "worker", "tcp://s:8786"], &["dask", "worker", "tcp://s:8786"])]
    #[case::dask_no_command_runs_cmd("ghcr.io/dask/dask", &[], &[], &["python"])]
    #[case::command_and_args("busybox", &["sh", "-c"], &["echo hi"], &["sh", "-c", "echo hi"])]
    #[case::command_drops_image_cmd("busybox", &["sleep"], &[], &["sleep"])]
    #[case::busybox_default_shell("busybox", &[], &[], &["sh"])]
    #[case::dask_kube_args_go_to_the_binary("ghcr.io/dask-on-k8s/dask-kube:0.1.0", &[], &["adapt", "c1"], &["dask-kube", "adapt", "c1"])]
    #[case::dask_kube_default_cmd("ghcr.io/dask-on-k8s/dask-kube:0.1.0", &[], &[], &["dask-kube", "--help"])]
    #[case::dask_kube_image_runs_python("ghcr.io/dask-on-k8s/dask-kube:0.1.0", &["python", "nb.py"], &[], &["python", "nb.py"])]
    fn argv_follows_docker_rules(
        #[case] image: &str,
        #[case] command: &[&str],
        #[case] args: &[&str],
        #[case] expected: &[&str],
    ) {
        let c = config();
        let m = c.resolve(image).unwrap();
        assert_eq!(
            m.argv(&strings(command), &strings(args)).unwrap(),
            strings(expected)
        );
    }

    #[test]
    fn empty_argv_is_a_clear_error() {
        let c = Config::parse("images: [{name: bare, match: '*'}]", Path::new("x.yaml")).unwrap();
        let err = c.images[0].argv(&[], &[]).unwrap_err().to_string();
        assert!(err.contains("no command specified"), "{err}");
    }

    #[test]
    fn path_env_prefixes_the_venv() {
        let c = config();
        let m = c.resolve("ghcr.io/dask/dask").unwrap();
        assert_eq!(m.path_env(), format!("/venv/bin:{BASE_PATH}"));
        let k = c.resolve("ghcr.io/dask-on-k8s/dask-kube:0.1.0").unwrap();
        assert_eq!(k.path_env(), format!("/target/debug:/venv/bin:{BASE_PATH}"));
        assert_eq!(
            m.image_id("ghcr.io/dask/dask:1"),
            "local://dask/ghcr.io/dask/dask:1"
        );
    }

    #[rstest]
    #[case::unknown_field("images: [{name: a, match: '*', nope: 1}]", "unknown field")]
    #[case::missing_images("{}", "missing field `images`")]
    #[case::relative_path_prefix(
        "images: [{name: a, match: '*', pathPrefix: [venv/bin]}]",
        "absolute directory"
    )]
    #[case::empty_pattern("images: [{name: a, match: ''}]", "non-empty patterns")]
    #[case::not_yaml("images: [", "")]
    fn invalid_configs_name_the_problem(#[case] text: &str, #[case] needle: &str) {
        let err = Config::parse(text, Path::new("bad.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config file bad.yaml: "), "{err}");
        assert!(err.contains(needle), "{err}");
    }
}
