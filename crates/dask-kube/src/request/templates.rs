//! Where a request's pod templates come from and what it sets in them: a template file
//! read with `$VAR`/`${VAR}` expanded (as classic's `from_yaml`), a pod value as given, a
//! worker pod made from an image (operator-era `image=`), and the request's environment in
//! a template's first container.

use super::{DEFAULT_WORKER_COMMAND, TemplateSource, WorkerCommand};
use crate::manifests::set_env;
use crate::template::PodTemplate;
use crate::{Error, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A template from its source: a file read (and `${VAR}` expanded), or a pod value.
pub(super) fn template_of(
    source: &TemplateSource,
    what: &'static str,
    origin: &str,
    env: &[(String, String)],
) -> Result<PodTemplate> {
    match source {
        TemplateSource::File(path) => {
            let mut template = PodTemplate::from_file(path, what)?;
            expand_environment_variables(&mut template.pod, env);
            PodTemplate::from_value(template.pod, &template.origin, what)
        }
        TemplateSource::Pod(pod) => PodTemplate::from_value(pod.clone(), origin, what),
    }
}

/// Expands `$VAR` and `${VAR}` in every string of `value` from `env`, as Python's
/// `os.path.expandvars` does through `dask.config.expand_environment_variables` (classic
/// dask-kubernetes applies it to template files and config templates): a name is letters,
/// digits and `_`; an unknown variable, `$(VAR)` (Kubernetes' own syntax) and a lone `$`
/// are left as written. Keys are not expanded.
pub fn expand_environment_variables(value: &mut Value, env: &[(String, String)]) {
    match value {
        Value::String(s) if s.contains('$') => *s = expandvars(s, env),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| expand_environment_variables(v, env)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| expand_environment_variables(v, env)),
        _ => {}
    }
}

fn expandvars(text: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (Some(&braced[..end]), end + 2),
                None => (None, 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            ((end > 0).then(|| &after[..end]), end)
        };
        match name.and_then(lookup) {
            Some(value) => {
                out.push_str(value);
                rest = &after[consumed..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Sets `env` in the pod's first container: a variable already there gets the new value.
/// The one place dask-kube sets container env from a request ([`set_env`] underneath).
pub(super) fn set_first_container_env(
    template: &mut PodTemplate,
    env: &BTreeMap<String, String>,
) -> Result<()> {
    if env.is_empty() {
        return Ok(());
    }
    let origin = template.origin.clone();
    let container = template
        .pod
        .pointer_mut("/spec/containers/0")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Error::InvalidTemplate {
            what: "worker",
            origin,
            reason: "spec.containers[0] must be a container to set env in".into(),
        })?;
    for (name, value) in env {
        set_env(container, name, value, true);
    }
    Ok(())
}

/// The worker pod of operator-era `KubeCluster(image=..., resources=..., worker_command=...)`
/// (and `kubernetes.image`): `resources` must be a mapping of `limits` and/or `requests`,
/// each a mapping, as upstream checks it.
pub fn image_worker_pod(
    image: &str,
    resources: Option<&Value>,
    worker_command: Option<&WorkerCommand>,
) -> Result<Value> {
    let argv = worker_command.map_or_else(
        || DEFAULT_WORKER_COMMAND.map(str::to_owned).to_vec(),
        WorkerCommand::argv,
    );
    if argv.is_empty() {
        return Err(Error::Usage("worker_command= is empty".into()));
    }
    let mut container = json!({"name": "worker", "image": image, "args": argv});
    if let Some(resources) = resources.filter(|r| !r.is_null()) {
        check_resources(resources)?;
        if resources.as_object().is_some_and(|m| !m.is_empty()) {
            container["resources"] = resources.clone();
        }
    }
    Ok(json!({
        "kind": "Pod",
        "metadata": {},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }))
}

/// `resources=` as the operator's `KubeCluster` checks it: a mapping whose keys are
/// `limits` and `requests`, each a mapping.
fn check_resources(resources: &Value) -> Result<()> {
    let Some(map) = resources.as_object() else {
        return Err(Error::Usage(format!(
            "resources= must be a mapping like {{\"limits\": {{\"memory\": \"2G\"}}}}, not {resources}"
        )));
    };
    for (key, value) in map {
        if key != "limits" && key != "requests" {
            return Err(Error::Usage(format!(
                "resources= has unknown field {key:?} (only \"limits\" and \"requests\")"
            )));
        }
        if !value.is_object() {
            return Err(Error::Usage(format!(
                "resources= {key:?} must be a mapping, not {value}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::braced("x${HOME}y", "x/home/ay")]
    #[case::bare("$HOME/w", "/home/a/w")]
    #[case::name_ends_at_a_symbol("$HOME.d", "/home/a.d")]
    #[case::unknown_is_kept("$NOPE and ${NOPE}", "$NOPE and ${NOPE}")]
    #[case::kubernetes_syntax_is_kept("$(DASK_WORKER_NAME)", "$(DASK_WORKER_NAME)")]
    #[case::lone_dollar("costs $ 5", "costs $ 5")]
    #[case::trailing_dollar("x$", "x$")]
    #[case::unclosed_brace("${HOME", "${HOME")]
    #[case::two("$A$B", "12")]
    fn variables_expand_as_os_path_expandvars(#[case] text: &str, #[case] expected: &str) {
        let env = [
            ("HOME".to_owned(), "/home/a".to_owned()),
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned()),
        ];
        let mut value = json!({"k": [text], "$HOME": text});
        expand_environment_variables(&mut value, &env);
        assert_eq!(value["k"][0], expected);
        assert!(value.get("$HOME").is_some(), "keys are not expanded");
    }

    #[rstest]
    #[case::string(json!("dask worker --nthreads 2"), &["dask", "worker", "--nthreads", "2"])]
    #[case::list(json!(["python", "-m", "distributed.cli.dask_worker"]), &["python", "-m", "distributed.cli.dask_worker"])]
    fn image_worker_command(#[case] command: Value, #[case] argv: &[&str]) {
        let command: WorkerCommand = serde_json::from_value(command).unwrap();
        let pod = image_worker_pod("img", None, Some(&command)).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["args"], json!(argv));
    }
}
