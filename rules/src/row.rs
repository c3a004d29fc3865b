//! The output of a rule: named columns in SELECT order, the input of every sink template.

use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::ast::Seg;
use crate::json;
use crate::path;
use crate::value::{Value, navigate, navigate_ref};

/// The columns a rule selected, in SELECT order. A field written `payload.temp` (no alias)
/// lands nested, as `{"payload": {"temp": ..}}`, like EMQX; a field that is neither a path
/// nor aliased is named by its source text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    cols: Vec<(Arc<str>, Value)>,
}

impl Row {
    /// The value at `path` (`a`, `a.b`, `a.list[1]` with 1-based indexes as in the SQL). A
    /// column whose name is the whole path (`lower(clientid)`) is found first. Strings
    /// holding JSON are not looked into here; templates do that.
    pub fn get(&self, path: &str) -> Option<&Value> {
        if let Some(v) = self.column(path) {
            return Some(v);
        }
        let segs = path::parse(path).ok()?;
        let (Seg::Key(first), rest) = segs.split_first()? else {
            return None;
        };
        navigate_ref(self.column(first)?, rest)
    }

    /// Column names and values in SELECT order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.cols.iter().map(|(k, v)| (&**k, v))
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// The row as a JSON object; binaries become UTF-8 strings when valid, else base64.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn column(&self, name: &str) -> Option<&Value> {
        self.cols.iter().find(|(k, _)| **k == *name).map(|c| &c.1)
    }

    /// Like [`Row::get`] on parsed segments, but owned so that a JSON string on the way can
    /// be decoded (EMQX templates read `${payload.x}` from a raw JSON payload).
    pub(crate) fn lookup(&self, segs: &[Seg]) -> Option<Value> {
        let (Seg::Key(first), rest) = segs.split_first()? else {
            return None;
        };
        navigate(self.column(first)?, rest)
    }

    /// Stores `v` at `target`, replacing what was there; nested keys create or extend
    /// objects (a non-object in the way is replaced, as EMQX's `nested_put` does).
    pub(crate) fn put(&mut self, name: &Arc<str>, nested: &[String], v: Value) {
        let i = match self.cols.iter().position(|(k, _)| **k == **name) {
            Some(i) => i,
            None => {
                self.cols.push((name.clone(), Value::Null));
                self.cols.len() - 1
            }
        };
        let mut slot = &mut self.cols[i].1;
        for key in nested {
            if !matches!(slot, Value::Object(_)) {
                *slot = Value::Object(Vec::new());
            }
            let Value::Object(entries) = slot else {
                return;
            };
            let j = match entries.iter().rposition(|(k, _)| k == key) {
                Some(j) => j,
                None => {
                    entries.push((key.clone(), Value::Null));
                    entries.len() - 1
                }
            };
            slot = &mut entries[j].1;
        }
        *slot = v;
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json::serialize_entries(s, self.cols.iter().map(|(k, v)| (&**k, v)))
    }
}

/// Builds a row directly, for callers that test templates without a rule.
impl FromIterator<(String, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut row = Row::default();
        for (name, v) in iter {
            row.put(&Arc::from(name), &[], v);
        }
        row
    }
}
