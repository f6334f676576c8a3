//! Python `str.format` for the templates Dask users already write (`dask-{user}-{uuid}`,
//! `{scheme}://{host}:{port}/status`), so a template that works with dask-kubernetes works
//! here unchanged.
//!
//! Only what those templates use: `{name}` fields and `{{`/`}}` escapes. Conversions and
//! format specs (`{x!r}`, `{x:>5}`) are refused with a message instead of being half
//! supported.

use thiserror::Error;

/// Why a template cannot be formatted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' at character {position}")]
    Unclosed {
        /// Character offset of the `{`.
        position: usize,
    },
    /// A `}` that closes nothing.
    #[error("single '}}' at character {position} (write '}}}}' for a literal brace)")]
    StrayClose {
        /// Character offset of the `}`.
        position: usize,
    },
    /// `{}` or a positional `{0}`: these templates only take names.
    #[error("field {field:?} at character {position} must be a name")]
    NotAName {
        /// The field as written.
        field: String,
        /// Character offset.
        position: usize,
    },
    /// `{x!r}` or `{x:>5}`.
    #[error("field {field:?} uses a conversion or format spec, which is not supported")]
    Unsupported {
        /// The field as written.
        field: String,
    },
    /// A name that is neither a known field nor an environment variable.
    #[error("unknown field {{{field}}} (known: {known}, and any environment variable)")]
    Unknown {
        /// The name.
        field: String,
        /// The always-known fields, for the message.
        known: String,
    },
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as is.
    Literal(String),
    /// A `{name}` to substitute.
    Field(String),
}

/// Splits a template into literals and fields, checking the syntax.
pub fn parse(template: &str) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = template.chars().enumerate().peekable();
    while let Some((position, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                chars.next();
                literal.push('{');
            }
            '{' => {
                let mut field = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    field.push(c);
                }
                if !closed {
                    return Err(FormatError::Unclosed { position });
                }
                if field.contains('!') || field.contains(':') {
                    return Err(FormatError::Unsupported { field });
                }
                let is_name = field
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && field.chars().all(|c| c.is_alphanumeric() || c == '_');
                if !is_name {
                    return Err(FormatError::NotAName { field, position });
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Field(field));
            }
            '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                chars.next();
                literal.push('}');
            }
            '}' => return Err(FormatError::StrayClose { position }),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

/// Formats `template`, looking fields up with `lookup`; `known` names the always-available
/// fields for the error message.
pub fn format(
    template: &str,
    known: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, FormatError> {
    let mut out = String::new();
    for piece in parse(template)? {
        match piece {
            Piece::Literal(text) => out.push_str(&text),
            Piece::Field(name) => match lookup(&name) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(FormatError::Unknown {
                        field: name,
                        known: known.to_owned(),
                    });
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn vars(field: &str) -> Option<String> {
        match field {
            "user" => Some("alice".into()),
            "uuid" => Some("0123456789".into()),
            "HOME_ENV" => Some("x".into()),
            _ => None,
        }
    }

    #[rstest]
    #[case::plain("dask", "dask")]
    #[case::fields("dask-{user}-{uuid}", "dask-alice-0123456789")]
    #[case::env_var("{HOME_ENV}-{user}", "x-alice")]
    #[case::escaped_braces("{{literal}}-{user}", "{literal}-alice")]
    #[case::empty("", "")]
    fn formats(#[case] template: &str, #[case] expected: &str) {
        assert_eq!(
            format(template, "user, uuid", vars).as_deref(),
            Ok(expected)
        );
    }

    #[rstest]
    #[case::unclosed("dask-{user", FormatError::Unclosed { position: 5 })]
    #[case::stray_close("dask-}", FormatError::StrayClose { position: 5 })]
    #[case::positional("dask-{0}", FormatError::NotAName { field: "0".into(), position: 5 })]
    #[case::empty_field("dask-{}", FormatError::NotAName { field: "".into(), position: 5 })]
    #[case::format_spec("{user:>9}", FormatError::Unsupported { field: "user:>9".into() })]
    #[case::conversion("{user!r}", FormatError::Unsupported { field: "user!r".into() })]
    #[case::unknown("dask-{nobody}", FormatError::Unknown { field: "nobody".into(), known: "user, uuid".into() })]
    fn refuses(#[case] template: &str, #[case] expected: FormatError) {
        assert_eq!(format(template, "user, uuid", vars), Err(expected));
    }

    /// What the item's documentation shows.
    #[test]
    fn the_dashboard_link_example() {
        let link = format(
            "{scheme}://{host}:{port}/status",
            "scheme, host, port",
            |f| match f {
                "scheme" => Some("http".to_owned()),
                "host" => Some("127.0.0.1".to_owned()),
                "port" => Some("8787".to_owned()),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(link, "http://127.0.0.1:8787/status");
    }
}
