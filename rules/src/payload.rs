//! Which top-level payload keys a rule reads, and a JSON decode that builds only those.
//! A typical rule reads one or two fields of a larger document; skipping the rest without
//! allocating is most of the cost of evaluating it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use crate::ast::{Expr, Root, Seg};
use crate::column::Column;
use crate::json;
use crate::value::Value;

/// What of the decoded payload a rule can look at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PayloadNeeds {
    /// Some path indexes the payload itself (`payload[1]`): decode everything.
    All,
    /// Only these top-level keys (`payload.a...`).
    Keys(Vec<String>),
}

impl PayloadNeeds {
    pub(crate) fn of<'e>(exprs: impl IntoIterator<Item = &'e Expr>) -> Self {
        let mut keys: Vec<String> = Vec::new();
        let mut all = false;
        for expr in exprs {
            expr.visit_paths(&mut |root, segs| {
                if *root != Root::Column(Column::Payload) {
                    return;
                }
                match segs.first() {
                    Some(Seg::Key(k)) if !keys.contains(k) => keys.push(k.clone()),
                    Some(Seg::Index(_)) => all = true,
                    _ => {}
                }
            });
        }
        if all { Self::All } else { Self::Keys(keys) }
    }

    /// Decodes `bytes`; `None` when they are not JSON.
    pub(crate) fn decode(&self, bytes: &[u8]) -> Option<Value> {
        match self {
            Self::All => json::decode(bytes).ok(),
            Self::Keys(keys) => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let v = Selective { keys }.deserialize(&mut de).ok()?;
                de.end().ok()?;
                Some(v)
            }
        }
    }
}

/// Builds a top-level object with only the wanted keys. A top-level string is kept (a path
/// may decode the JSON inside it); any other non-object is `null`, as no key path can
/// reach into it.
struct Selective<'k> {
    keys: &'k [String],
}

impl<'de> DeserializeSeed<'de> for Selective<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Selective<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(self.keys.len());
        while let Some(Key(key)) = map.next_key()? {
            if self.keys.iter().any(|k| *k == *key) {
                entries.push((key.into_owned(), map.next_value::<Value>()?));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(entries))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }
}
