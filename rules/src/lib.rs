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
//!
//! # Where this differs from EMQX, on purpose
//!
//! * `=` between different types is false and any comparison with `null` is false (EMQX
//!   turns numeric strings into numbers, and `undefined = undefined` is true there);
//! * a name that is neither a message column nor an earlier alias fails to parse (EMQX
//!   evaluates it to `undefined`);
//! * a field whose value is `null` stays in the row as `null` (EMQX leaves it out);
//! * most functions return `null` for a `null` argument, and `nth` / `topic_level` past the
//!   end return `null` (EMQX raises an error);
//! * `now_timestamp()` is in milliseconds (EMQX: seconds; `now_timestamp('second')` works
//!   in both);
//! * a `WHERE` that reads no alias runs before `SELECT` (see [`Rule::evaluate`]), and only
//!   explicit aliases shadow message columns in `WHERE`;
//! * in string literals a backslash is literal except before the closing quote, so regular
//!   expressions need no double escaping;
//! * an unaliased field that is not a path is named by its source text.
//!
//! Array indexes (`payload.list[1]`, also in templates and [`Row::get`]) are 1-based with
//! negative indexes counting from the end, as in EMQX.

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
mod payload;
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
