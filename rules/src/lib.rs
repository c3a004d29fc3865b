//! The SQL subset of CMQ's rule engine (`ForwardRule`), compatible with EMQX's rule SQL
//! where the two overlap.
//!
//! * [`Rule::parse`] compiles `SELECT <fields> FROM "<filter>", .. [WHERE <cond>]` once:
//!   names resolve to message columns or aliases, regular expressions compile, and every
//!   mistake is a [`ParseError`] with a line and column;
//! * [`Rule::evaluate`] runs it on a [`Message`], decoding a JSON payload at most once and
//!   only when a `payload.x` path needs it, and yields a [`Row`] (or `None` when `WHERE`
//!   rejects the message);
//! * [`Template`] renders sink fields such as `iot.${topic_level(1)}` or `${.}` from a row.
//!
//! Everything is pure and bounded: SQL up to 64 KiB, expression nesting up to 64 levels,
//! JSON nesting up to serde_json's 128, so hostile input gives an error, never a panic or a
//! stack overflow.

mod ast;
mod builtins;
mod column;
mod error;
mod eval;
mod expr;
mod functions;
mod json;
mod lexer;
mod ops;
mod parser;
mod path;
mod row;
mod rule;
mod template;
mod value;

#[cfg(test)]
mod eval_tests;
#[cfg(test)]
mod function_tests;
#[cfg(test)]
mod parser_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod template_tests;
#[cfg(test)]
mod test_support;

pub use column::Message;
pub use error::{EvalError, ParseError, ParseErrorKind, RenderError};
pub use row::Row;
pub use rule::Rule;
pub use template::Template;
pub use value::Value;
