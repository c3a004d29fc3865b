//! Values that flow through rule evaluation, their text form and path navigation.

use std::borrow::Cow;

use bytes::Bytes;

use crate::ast::Seg;
use crate::json;

/// A value in rule evaluation and in the output row. Objects keep their key order (that of
/// the JSON payload, or of the SELECT list), so outputs serialise predictably.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Absent or JSON `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A finite 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// Binary data that is not (known to be) UTF-8, such as a binary payload.
    Bytes(Bytes),
    /// An array.
    Array(Vec<Value>),
    /// An object; on a repeated key the last entry wins.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The type's name as error messages print it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// The string, for a `Str` or a UTF-8 `Bytes`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The raw bytes of a `Str` or `Bytes`.
    pub(crate) fn as_binary(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s.as_bytes()),
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value under `key` of an object.
    pub fn get_key(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|e| &e.1),
            _ => None,
        }
    }

    /// The text form used by `str()`, string `+`, `concat` and templates: strings as they
    /// are, numbers and booleans as in JSON, `null` as `null`, arrays and objects as JSON.
    pub(crate) fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Str(s) => Cow::Borrowed(s),
            Value::Bytes(b) => String::from_utf8_lossy(b),
            Value::Null => Cow::Borrowed("null"),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Float(f) => Cow::Owned(format_float(*f)),
            Value::Array(_) | Value::Object(_) => {
                Cow::Owned(String::from_utf8_lossy(&json::encode(self)).into_owned())
            }
        }
    }

    /// Appends the value as a template renders it: strings and binaries raw, the rest in
    /// their text form.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        match self.as_binary() {
            Some(b) => out.extend_from_slice(b),
            None => out.extend_from_slice(self.text().as_bytes()),
        }
    }
}

/// Floats print as JSON prints them, so `30.0` stays distinguishable from `30`.
pub(crate) fn format_float(f: f64) -> String {
    serde_json::to_string(&f).unwrap_or_else(|_| "null".to_owned())
}

/// Element `i` of an array, EMQX style: 1-based, negative counts from the end, 0 is nothing.
pub(crate) fn nth(items: &[Value], i: i64) -> Option<&Value> {
    let len = i64::try_from(items.len()).ok()?;
    let pos = match i {
        1.. => i - 1,
        ..=-1 => len + i,
        0 => return None,
    };
    usize::try_from(pos).ok().and_then(|p| items.get(p))
}

fn step<'v>(v: &'v Value, seg: &Seg) -> Option<&'v Value> {
    match (v, seg) {
        (Value::Object(_), Seg::Key(k)) => v.get_key(k),
        (Value::Array(items), Seg::Index(i)) => nth(items, *i),
        _ => None,
    }
}

/// Follows `segs` without decoding anything; `None` when a step finds nothing.
pub(crate) fn navigate_ref<'v>(v: &'v Value, segs: &[Seg]) -> Option<&'v Value> {
    segs.iter().try_fold(v, |cur, seg| step(cur, seg))
}

/// Follows `segs`, JSON-decoding a string met on the way (EMQX does the same, so
/// `payload.a.b` works when `a` holds a JSON document as a string). `None` when a step
/// finds nothing.
pub(crate) fn navigate(v: &Value, segs: &[Seg]) -> Option<Value> {
    let mut cur = v;
    for (i, seg) in segs.iter().enumerate() {
        if let Some(raw) = cur.as_binary() {
            let decoded = json::decode(raw).ok()?;
            // A JSON string inside a string is not decoded again: that would let a crafted
            // payload choose how deep this goes.
            if decoded.as_binary().is_some() {
                return None;
            }
            return navigate_ref(&decoded, &segs[i..]).cloned();
        }
        cur = step(cur, seg)?;
    }
    Some(cur.clone())
}
