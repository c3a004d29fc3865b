//! Sink templates: literal text with `${path}` placeholders read from a rule's output row
//! (`${.}` is the whole row as JSON), as in EMQX's action templates.

use crate::ast::Seg;
use crate::error::{ParseError, ParseErrorKind, RenderError};
use crate::path;
use crate::row::Row;
use crate::value::Value;

/// A parsed template, rendered once per output row.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    /// `${.}`
    Whole,
    Path {
        text: String,
        segs: Vec<Seg>,
    },
}

impl Template {
    /// Parses `text`; `${` must be closed by `}` and enclose `.` or a path (`a.b[1]`).
    pub fn parse(text: &str) -> Result<Template, ParseError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut pos = 0;
        while let Some(found) = text[pos..].find("${") {
            let open = pos + found;
            lit.push_str(&text[pos..open]);
            let body_start = open + 2;
            let close = text[body_start..].find('}').ok_or_else(|| {
                ParseError::at(text, open, ParseErrorKind::Unterminated, "`${` without `}`")
            })?;
            let body = &text[body_start..body_start + close];
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            let trimmed = body.trim();
            if trimmed == "." {
                parts.push(Part::Whole);
            } else {
                let lead = body.len() - body.trim_start().len();
                let segs = path::parse(trimmed).map_err(|(at, m)| {
                    ParseError::at(text, body_start + lead + at, ParseErrorKind::InvalidPath, m)
                })?;
                parts.push(Part::Path {
                    text: trimmed.to_owned(),
                    segs,
                });
            }
            pos = body_start + close + 1;
        }
        lit.push_str(&text[pos..]);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// Renders against `row`. A template that is exactly one placeholder of a string or
    /// binary gives its raw bytes; numbers and booleans render as text, `null` as `null`,
    /// objects and arrays as JSON.
    pub fn render(&self, row: &Row) -> Result<Vec<u8>, RenderError> {
        if let [Part::Path { text, segs }] = self.parts.as_slice() {
            return Ok(match lookup(row, text, segs)? {
                Value::Str(s) => s.into_bytes(),
                Value::Bytes(b) => b.to_vec(),
                other => other.text().into_owned().into_bytes(),
            });
        }
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Part::Whole => out.extend_from_slice(&row.to_json()),
                Part::Path { text, segs } => lookup(row, text, segs)?.write_to(&mut out),
            }
        }
        Ok(out)
    }

    /// Renders as text (invalid UTF-8 replaced), for topics, keys, subjects and headers.
    pub fn render_string(&self, row: &Row) -> Result<String, RenderError> {
        let bytes = self.render(row)?;
        Ok(String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// Whether the template has no placeholders (renders the same for every row).
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }
}

/// A column named exactly like the placeholder (`lower(clientid)`) wins over a path.
fn lookup(row: &Row, text: &str, segs: &[Seg]) -> Result<Value, RenderError> {
    row.column(text)
        .cloned()
        .or_else(|| row.lookup(segs))
        .ok_or_else(|| RenderError::Missing(text.to_owned()))
}
