//! Kubernetes `$(VAR)` expansion, ported from k8s.io/kubernetes `third_party/forked/golang/expansion`.
//!
//! Exact semantics matter because dask pod specs rely on them (`$(DASK_SCHEDULER_ADDRESS)` in
//! args): `$$` escapes a `$`, an unknown or unterminated reference is left as written, and
//! there is no recursion (a value is expanded once, when its variable is defined).

/// Expands `$(NAME)` references in `input` with `lookup`; unknown names stay `$(NAME)`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let Some(next) = after.chars().next() else {
            // A trailing `$` is copied as is.
            out.push('$');
            rest = after;
            break;
        };
        match next {
            '$' => {
                // Escaped operator: `$$` becomes `$`.
                out.push('$');
                rest = &after[1..];
            }
            '(' => match after[1..].find(')') {
                Some(close) => {
                    let name = &after[1..1 + close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 2..];
                }
                None => {
                    // Incomplete reference: copy `$(` and go on after it.
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            other => {
                // A `$` that starts no expression keeps the following character.
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Expands against an ordered list of `(name, value)` pairs (later definitions win,
/// like the kubelet's map of already-defined variables).
pub fn expand_with(input: &str, vars: &[(String, String)]) -> String {
    expand(input, &|name| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn vars() -> Vec<(String, String)> {
        [
            ("VAR_A", "A"),
            ("VAR_B", "B"),
            ("VAR_C", "C"),
            ("VAR_REF", "$(VAR_A)"),
            ("VAR_EMPTY", ""),
            ("SCHED", "tcp://sched.ns:8786"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    // Cases from k8s.io/kubernetes third_party/forked/golang/expansion/expand_test.go.
    #[rstest]
    #[case::whole_string("$(VAR_A)", "A")]
    #[case::repeat("$(VAR_A)-$(VAR_A)", "A-A")]
    #[case::beginning("$(VAR_A)-1", "A-1")]
    #[case::middle("___$(VAR_B)___", "___B___")]
    #[case::end("___$(VAR_C)", "___C")]
    #[case::compound("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C")]
    #[case::escaped_reference_is_not_expanded("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A")]
    #[case::double_escape_then_reference("$$$$(VAR_A)", "$$(VAR_A)")]
    #[case::escape_then_reference("$$$(VAR_A)", "$A")]
    #[case::nested_value_is_not_reexpanded("$(VAR_REF)", "$(VAR_A)")]
    #[case::unknown_variable_left_as_is("$(NOPE)-$(VAR_A)", "$(NOPE)-A")]
    #[case::empty_value("x$(VAR_EMPTY)y", "xy")]
    #[case::incomplete_reference("$(VAR_A", "$(VAR_A")]
    #[case::incomplete_reference_after_good_one("$(VAR_A)$(VAR_B", "A$(VAR_B")]
    #[case::dollar_without_paren("$VAR_A", "$VAR_A")]
    #[case::trailing_dollar("abc$", "abc$")]
    #[case::lone_dollar("$", "$")]
    #[case::empty_name("$()", "$()")]
    #[case::nested_parens("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))")]
    #[case::no_references("plain text", "plain text")]
    #[case::non_ascii_after_dollar("$é$(VAR_A)", "$éA")]
    #[case::dask_scheduler_arg("$(SCHED)", "tcp://sched.ns:8786")]
    fn expands_like_kubernetes(#[case] input: &str, #[case] expected: &str) {
        assert_eq!(expand_with(input, &vars()), expected);
    }

    #[test]
    fn later_definition_wins() {
        let vars = vec![
            ("X".to_string(), "1".to_string()),
            ("X".to_string(), "2".to_string()),
        ];
        assert_eq!(expand_with("$(X)", &vars), "2");
    }
}
