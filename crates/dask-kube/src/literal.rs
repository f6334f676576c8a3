//! Reading `DASK_*` environment values the way dask does: `ast.literal_eval` first (numbers,
//! quoted strings, `True`/`False`/`None`, lists, tuples and dicts of those), then the words
//! `true`/`false`/`none`/`null` in any case, else the text itself.
//!
//! A YAML parser is not a substitute: YAML reads `{scheme}://x` as a mapping and `yes` as a
//! boolean, where dask keeps both as strings.

use serde_json::{Map, Number, Value};

/// Interprets an environment value as dask's `interpret_value` does.
pub fn interpret(value: &str) -> Value {
    if let Some(parsed) = literal_eval(value) {
        return parsed;
    }
    match value.to_lowercase().as_str() {
        "none" | "null" => Value::Null,
        "false" => Value::Bool(false),
        "true" => Value::Bool(true),
        _ => Value::String(value.to_owned()),
    }
}

/// `ast.literal_eval` for the literals that map to JSON; `None` when the text is not one.
pub fn literal_eval(text: &str) -> Option<Value> {
    let mut parser = Parser {
        chars: text.trim().chars().collect(),
        pos: 0,
    };
    let value = parser.value()?;
    parser.skip_ws();
    (parser.pos == parser.chars.len()).then_some(value)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_ws();
        match self.peek()? {
            '[' => self.sequence('[', ']'),
            '(' => self.sequence('(', ')'),
            '{' => self.dict(),
            '\'' | '"' => self.string().map(Value::String),
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number(),
            c if c.is_alphabetic() || c == '_' => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    self.pos += 1;
                }
                let word: String = self.chars.get(start..self.pos)?.iter().collect();
                match word.as_str() {
                    "True" => Some(Value::Bool(true)),
                    "False" => Some(Value::Bool(false)),
                    "None" => Some(Value::Null),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn sequence(&mut self, open: char, close: char) -> Option<Value> {
        if !self.eat(open) {
            return None;
        }
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Some(Value::Array(items));
            }
            items.push(self.value()?);
            if !self.eat(',') {
                return self.eat(close).then_some(Value::Array(items));
            }
        }
    }

    fn dict(&mut self) -> Option<Value> {
        if !self.eat('{') {
            return None;
        }
        let mut map = Map::new();
        loop {
            if self.eat('}') {
                return Some(Value::Object(map));
            }
            let key = match self.value()? {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if b { "True" } else { "False" }.to_owned(),
                Value::Null => "None".to_owned(),
                _ => return None,
            };
            if !self.eat(':') {
                return None;
            }
            let value = self.value()?;
            map.insert(key, value);
            if !self.eat(',') {
                return self.eat('}').then_some(Value::Object(map));
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.pos += 1;
            match c {
                c if c == quote => break,
                '\\' => {
                    let escaped = self.peek()?;
                    self.pos += 1;
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
        // Python joins adjacent string literals: 'a' 'b' == 'ab'.
        self.skip_ws();
        if matches!(self.peek(), Some('\'' | '"')) {
            out.push_str(&self.string()?);
        }
        Some(out)
    }

    fn number(&mut self) -> Option<Value> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
        {
            self.pos += 1;
        }
        let text: String = self
            .chars
            .get(start..self.pos)?
            .iter()
            .filter(|c| **c != '_')
            .collect();
        if let Ok(i) = text.parse::<i64>() {
            return Some(Value::Number(i.into()));
        }
        if text
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        {
            return None;
        }
        let f: f64 = text.parse().ok()?;
        Number::from_f64(f).map(Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case::int("42", json!(42))]
    #[case::negative("-3", json!(-3))]
    #[case::underscore_int("1_000", json!(1000))]
    #[case::float("1.5", json!(1.5))]
    #[case::exponent("1e3", json!(1000.0))]
    #[case::python_true("True", json!(true))]
    #[case::lower_true("true", json!(true))]
    #[case::python_none("None", json!(null))]
    #[case::null_word("null", json!(null))]
    #[case::quoted("'6GB'", json!("6GB"))]
    #[case::double_quoted("\"a b\"", json!("a b"))]
    #[case::bare_word("6GB", json!("6GB"))]
    #[case::yes_stays_text("yes", json!("yes"))]
    #[case::list("['a', 'b']", json!(["a", "b"]))]
    #[case::tuple("(1, 2,)", json!([1, 2]))]
    #[case::dict("{'a': 1, 'b': [True]}", json!({"a": 1, "b": [true]}))]
    #[case::format_template("{scheme}://{host}:{port}/status", json!("{scheme}://{host}:{port}/status"))]
    #[case::path("/tmp/worker.yaml", json!("/tmp/worker.yaml"))]
    #[case::routes(
        "[\"distributed.http.health\",\"distributed.http.scheduler.api\"]",
        json!(["distributed.http.health", "distributed.http.scheduler.api"])
    )]
    #[case::unterminated_list("[1, 2", json!("[1, 2"))]
    #[case::ip_address("10.0.0.1", json!("10.0.0.1"))]
    fn interprets_like_dask(#[case] text: &str, #[case] expected: Value) {
        assert_eq!(interpret(text), expected);
    }

    /// What the item's documentation shows.
    #[test]
    fn interpret_example() {
        use serde_json::json;
        assert_eq!(interpret("10"), json!(10));
        assert_eq!(interpret("['a', 1]"), json!(["a", 1]));
        assert_eq!(interpret("TRUE"), json!(true));
        assert_eq!(interpret("{scheme}://{host}"), json!("{scheme}://{host}"));
    }
}
