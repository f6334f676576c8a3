//! Small HTTP helpers: query-string decoding (Go `url.ParseQuery` semantics) and
//! plain-text responses shaped like the kubelet's.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Response body of every endpoint: a whole text or a stream of log chunks.
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// A complete body.
pub(crate) fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

/// A plain-text response (the kubelet writes errors as `text/plain` strings).
pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut resp = Response::new(full(msg));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Decoded `key=value` pairs in order; `None` if a percent escape is malformed (Go's
/// `ParseQuery` errors then, and the kubelet answers 400).
pub(crate) fn parse_query(query: Option<&str>) -> Option<Vec<(String, String)>> {
    let Some(query) = query else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Some(out)
}

/// First value of a query key.
pub(crate) fn first<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every value of a query key.
pub(crate) fn all<'a>(query: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    query
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Form decoding: `+` is a space, `%XX` a byte; the result must be UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// All values of a header that may be repeated.
pub(crate) fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// Whether a comma-separated header (Connection, Upgrade) contains `token`,
/// case-insensitively (Go's `strings.Contains(strings.ToLower(h), token)`).
pub(crate) fn header_contains(headers: &HeaderMap, name: &str, token: &str) -> bool {
    header_values(headers, name)
        .iter()
        .any(|v| v.to_ascii_lowercase().contains(&token.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::plain("abc", Some("abc"))]
    #[case::plus_is_space("a+b", Some("a b"))]
    #[case::escapes("2024-01-02T15%3A04%3A05%2B01%3A00", Some("2024-01-02T15:04:05+01:00"))]
    #[case::comma("80%2C1234", Some("80,1234"))]
    #[case::truncated_escape("%4", None)]
    #[case::bad_hex("%zz", None)]
    #[case::not_utf8("%ff", None)]
    fn percent_decoding(#[case] input: &str, #[case] want: Option<&str>) {
        assert_eq!(percent_decode(input).as_deref(), want);
    }

    #[test]
    fn query_pairs_keep_order_and_repeats() {
        let q =
            parse_query(Some("&ports=80%2C1234&follow=true&port=1&port=2&flag")).expect("parses");
        assert_eq!(first(&q, "ports"), Some("80,1234"));
        assert_eq!(all(&q, "port"), vec!["1", "2"]);
        assert_eq!(first(&q, "flag"), Some(""));
        assert_eq!(first(&q, "missing"), None);
        assert_eq!(parse_query(None), Some(vec![]));
        assert_eq!(parse_query(Some("a=%")), None);
    }
}
