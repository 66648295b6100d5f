//! Decoding script replies: the one place that looks inside `redis::Value`. Each pattern turns
//! its scripts' replies into its own types with these helpers (the cache's shapes are in
//! `cache::reply`); a reply of the wrong shape is a `ReplyError`, never a panic or a made-up
//! value. Scripts whose reply the `redis` crate converts by itself (`Vec<i64>`, `String`, ...)
//! need none of this.
//!
//! Lua hands numbers to Redis as integers and strings as bulk strings, and a script may return
//! either for a number it read from a key, so `int` also reads a decimal string and `text`
//! also an integer.

use axum::body::Bytes;
use redis::Value;

/// A script reply that does not have the shape its decoder expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("expected {expected}, got {got}")]
    WrongType { expected: &'static str, got: String },
    #[error("the reply has no element {0}")]
    Missing(usize),
    #[error("unexpected {what} `{value}`")]
    Unexpected { what: &'static str, value: String },
}

impl ReplyError {
    fn wrong(expected: &'static str, got: &Value) -> Self {
        let mut got = format!("{got:?}");
        // Enough to recognise the reply in a log line, not a whole value.
        if got.len() > 80 {
            let mut end = 80;
            while !got.is_char_boundary(end) {
                end -= 1;
            }
            got.truncate(end);
            got.push('…');
        }
        ReplyError::WrongType { expected, got }
    }
}

/// An integer, or a string holding one.
pub fn int(v: &Value) -> Result<i64, ReplyError> {
    let parsed = match v {
        Value::Int(i) => return Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ReplyError::wrong("an integer", v))
}

/// A non-negative integer.
pub fn uint(v: &Value) -> Result<u64, ReplyError> {
    u64::try_from(int(v)?).map_err(|_| ReplyError::wrong("a non-negative integer", v))
}

/// Text (invalid UTF-8 replaced), or an integer as its decimal text.
pub fn text(v: &Value) -> Result<String, ReplyError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(ReplyError::wrong("a string", other)),
    }
}

/// `text`, taking the reply's buffer over when it is valid UTF-8 (no copy).
pub fn into_text(v: Value) -> Result<String, ReplyError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8(b)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        Value::SimpleString(s) => Ok(s),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(ReplyError::wrong("a string", &other)),
    }
}

/// The bytes of a string, borrowed.
pub fn bytes(v: &Value) -> Result<&[u8], ReplyError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.as_bytes()),
        other => Err(ReplyError::wrong("a string", other)),
    }
}

/// The bytes of a string, taking the reply's buffer over (no copy).
pub fn into_bytes(v: Value) -> Result<Bytes, ReplyError> {
    match v {
        Value::BulkString(b) => Ok(Bytes::from(b)),
        Value::SimpleString(s) => Ok(Bytes::from(s)),
        other => Err(ReplyError::wrong("a string", &other)),
    }
}

/// The elements of an array, borrowed.
pub fn array(v: &Value) -> Result<&[Value], ReplyError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(ReplyError::wrong("an array", other)),
    }
}

/// The elements of an array, taken over.
pub fn into_array(v: Value) -> Result<Vec<Value>, ReplyError> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(ReplyError::wrong("an array", &other)),
    }
}

/// Element `i` of a reply.
pub fn at(reply: &[Value], i: usize) -> Result<&Value, ReplyError> {
    reply.get(i).ok_or(ReplyError::Missing(i))
}

/// The elements of an array reply, taken front to back: each `next_*` names the element it
/// missed in its error.
pub struct Items {
    items: std::vec::IntoIter<Value>,
    at: usize,
}

impl Items {
    pub fn new(reply: Vec<Value>) -> Self {
        Self {
            items: reply.into_iter(),
            at: 0,
        }
    }

    /// How many elements are left.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn next_value(&mut self) -> Result<Value, ReplyError> {
        let v = self.items.next().ok_or(ReplyError::Missing(self.at))?;
        self.at += 1;
        Ok(v)
    }

    pub fn next_text(&mut self) -> Result<String, ReplyError> {
        into_text(self.next_value()?)
    }

    pub fn next_int(&mut self) -> Result<i64, ReplyError> {
        int(&self.next_value()?)
    }

    pub fn next_bytes(&mut self) -> Result<Bytes, ReplyError> {
        into_bytes(self.next_value()?)
    }

    /// The elements not taken yet.
    pub fn rest(self) -> Vec<Value> {
        self.items.collect()
    }

    /// The rest as (name, value) text pairs; a last element without its pair is an error.
    pub fn text_pairs(mut self) -> Result<Vec<(String, String)>, ReplyError> {
        let mut pairs = Vec::with_capacity(self.len() / 2);
        while !self.is_empty() {
            pairs.push((self.next_text()?, self.next_text()?));
        }
        Ok(pairs)
    }
}

/// A reply as JSON, whatever its shape (for `ops`, whose scripts are the operator's). A bulk
/// string holding a JSON object or array (what `cjson.encode` returns) is embedded as JSON, so
/// scripts can answer structured results.
pub fn to_json(v: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil => J::Null,
        Value::Int(i) => J::from(i),
        Value::Double(d) => serde_json::Number::from_f64(d)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Boolean(b) => J::Bool(b),
        Value::Okay => J::String("OK".into()),
        Value::SimpleString(s) => J::String(s),
        Value::BulkString(b) => {
            let text = String::from_utf8_lossy(&b).into_owned();
            let t = text.trim_start();
            if (t.starts_with('{') || t.starts_with('['))
                && let Ok(j) = serde_json::from_str(&text)
            {
                return j;
            }
            J::String(text)
        }
        Value::Array(a) | Value::Set(a) => J::Array(a.into_iter().map(to_json).collect()),
        Value::Map(m) => J::Array(
            m.into_iter()
                .map(|(k, v)| J::Array(vec![to_json(k), to_json(v)]))
                .collect(),
        ),
        other => J::String(format!("{other:?}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn s(t: &str) -> Value {
        Value::BulkString(t.as_bytes().to_vec())
    }

    #[test]
    fn scalars() {
        assert_eq!(int(&Value::Int(-3)), Ok(-3));
        assert_eq!(int(&s("42")), Ok(42));
        assert_eq!(int(&Value::SimpleString("7".into())), Ok(7));
        assert!(int(&s("4x")).is_err());
        assert!(int(&Value::Nil).is_err());
        assert!(int(&Value::Array(vec![])).is_err());
        assert_eq!(uint(&s("5")), Ok(5));
        assert!(uint(&Value::Int(-1)).is_err());

        assert_eq!(text(&s("a")), Ok("a".into()));
        assert_eq!(text(&Value::Int(12)), Ok("12".into()));
        assert_eq!(
            text(&Value::BulkString(vec![b'a', 0xff])),
            Ok("a\u{fffd}".into())
        );
        assert!(text(&Value::Nil).is_err());
        assert_eq!(into_text(s("ü")), Ok("ü".into()));
        assert!(into_text(Value::Boolean(true)).is_err());

        assert_eq!(bytes(&s("b")), Ok(&b"b"[..]));
        assert!(bytes(&Value::Int(1)).is_err());
        assert_eq!(into_bytes(s("b")), Ok(Bytes::from_static(b"b")));
        assert!(into_bytes(Value::Nil).is_err());

        assert_eq!(
            array(&Value::Array(vec![Value::Int(1)])).map(<[_]>::len),
            Ok(1)
        );
        assert!(array(&s("x")).is_err());
        assert_eq!(into_array(Value::Array(vec![s("a")])), Ok(vec![s("a")]));
        assert!(into_array(Value::Nil).is_err());
        assert_eq!(at(&[Value::Int(1)], 0), Ok(&Value::Int(1)));
        assert_eq!(at(&[Value::Int(1)], 1), Err(ReplyError::Missing(1)));
    }

    #[test]
    fn items_name_what_they_miss() {
        let mut it = Items::new(vec![s("a"), Value::Int(2), s("3"), s("4")]);
        assert_eq!(it.next_text(), Ok("a".into()));
        assert_eq!(it.next_int(), Ok(2));
        assert_eq!(it.next_bytes(), Ok(Bytes::from_static(b"3")));
        assert_eq!(it.len(), 1);
        assert_eq!(it.rest(), vec![s("4")]);
        let mut it = Items::new(vec![s("a"), s("b")]);
        assert!(it.next_int().is_err());
        assert_eq!(it.next_text(), Ok("b".into()));
        assert_eq!(it.next_text(), Err(ReplyError::Missing(2)));

        let pairs = Items::new(vec![s("a"), s("1"), s("b"), s("2")]).text_pairs();
        assert_eq!(
            pairs,
            Ok(vec![("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert_eq!(
            Items::new(vec![s("a"), s("1"), s("b")]).text_pairs(),
            Err(ReplyError::Missing(3))
        );
        assert!(Items::new(vec![s("a"), Value::Nil]).text_pairs().is_err());
    }

    #[test]
    fn a_wrong_type_is_named_briefly() {
        let long = Value::BulkString(vec![b'x'; 500]);
        let Err(ReplyError::WrongType { got, .. }) = array(&long) else {
            panic!("not an array")
        };
        assert!(got.chars().count() <= 81, "{got}");
    }

    #[test]
    fn any_reply_becomes_json() {
        use serde_json::json;
        let v = Value::Array(vec![
            Value::Nil,
            Value::Int(1),
            s(r#"{"a":1}"#),
            s("[x"),
            Value::Okay,
        ]);
        assert_eq!(to_json(v), json!([null, 1, {"a": 1}, "[x", "OK"]));
    }
}
