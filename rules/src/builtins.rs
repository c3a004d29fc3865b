//! What each built-in function computes. Most return `null` for a `null` argument, so a
//! missing payload field flows through to `IS NULL` instead of failing the rule.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use regex::{Captures, Regex};

use crate::error::EvalError;
use crate::functions::{Func, TIME_UNITS, compile_regex, time_unit_nanos};
use crate::json;
use crate::value::Value;

static NULL: Value = Value::Null;

/// Applies `func` to evaluated arguments (already checked for arity by the parser).
/// `regex` is the pattern compiled at parse time, `topic` the message's topic.
pub(crate) fn call(
    func: Func,
    args: &[Value],
    regex: Option<&Regex>,
    topic: &str,
) -> Result<Value, EvalError> {
    let arg = |i: usize| args.get(i).unwrap_or(&NULL);
    if propagates_null(func) && args.iter().any(|a| matches!(a, Value::Null)) {
        return Ok(Value::Null);
    }
    let f = func;
    Ok(match func {
        Func::Lower => Value::Str(text(f, arg(0))?.to_lowercase()),
        Func::Upper => Value::Str(text(f, arg(0))?.to_uppercase()),
        Func::Trim => Value::Str(text(f, arg(0))?.trim().to_owned()),
        Func::Concat => Value::Str(args.iter().map(Value::text).collect()),
        Func::Substr => substr(text(f, arg(0))?, arg(1), args.get(2))?,
        Func::Split => split(text(f, arg(0))?, text(f, arg(1))?)?,
        Func::Nth => match arg(1) {
            Value::Array(items) => nth_plain(items, int(f, arg(0))?),
            other => {
                return Err(bad(
                    f,
                    format!("expected an array, got {}", other.type_name()),
                ));
            }
        },
        Func::Length => match arg(0) {
            Value::Array(items) => count(items.len()),
            Value::Str(s) => count(s.chars().count()),
            Value::Bytes(b) => count(b.len()),
            other => return Err(bad(f, expected("an array or a string", other))),
        },
        Func::Strlen => count(text(f, arg(0))?.chars().count()),
        Func::Replace => replace(text(f, arg(0))?, text(f, arg(1))?, text(f, arg(2))?),
        Func::RegexMatch => Value::Bool(pattern(f, regex, arg(1))?.is_match(text(f, arg(0))?)),
        Func::RegexReplace => {
            let re = pattern(f, regex, arg(1))?;
            let to = text(f, arg(2))?;
            let out = re.replace_all(text(f, arg(0))?, |caps: &Captures<'_>| expand(caps, to));
            Value::Str(out.into_owned())
        }
        Func::Str => Value::Str(arg(0).text().into_owned()),
        Func::Int => Value::Int(to_int(arg(0))?),
        Func::Float => Value::Float(to_float(arg(0))?),
        Func::Bool => Value::Bool(to_bool(arg(0))?),
        Func::IsNull => Value::Bool(matches!(arg(0), Value::Null)),
        Func::IsNotNull => Value::Bool(!matches!(arg(0), Value::Null)),
        Func::Coalesce => args
            .iter()
            .find(|a| !matches!(a, Value::Null))
            .cloned()
            .unwrap_or(Value::Null),
        Func::JsonDecode => {
            json::decode(binary(f, arg(0))?).map_err(|e| bad(f, format!("not valid JSON: {e}")))?
        }
        Func::JsonEncode => Value::Str(String::from_utf8_lossy(&json::encode(arg(0))).into_owned()),
        Func::Base64Encode => {
            Value::Str(base64::engine::general_purpose::STANDARD.encode(binary(f, arg(0))?))
        }
        Func::Base64Decode => base64::engine::general_purpose::STANDARD
            .decode(binary(f, arg(0))?)
            .map(binary_value)
            .map_err(|e| bad(f, format!("not valid base64: {e}")))?,
        Func::Bin2HexStr => {
            Value::Str(binary(f, arg(0))?.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02X}");
                s
            }))
        }
        Func::Abs => match arg(0) {
            Value::Int(i) => Value::Int(i.checked_abs().ok_or(EvalError::Overflow { op: "abs" })?),
            Value::Float(x) => Value::Float(x.abs()),
            other => return Err(bad(f, expected("a number", other))),
        },
        Func::Round => rounding(f, arg(0), f64::round)?,
        Func::Floor => rounding(f, arg(0), f64::floor)?,
        Func::Ceil => rounding(f, arg(0), f64::ceil)?,
        Func::NowTimestamp => now_timestamp(args.first())?,
        Func::TopicLevel => topic_level(topic, int(f, arg(0))?)?,
    })
}

/// Functions that turn any `null` argument into a `null` result.
fn propagates_null(func: Func) -> bool {
    !matches!(
        func,
        Func::Concat
            | Func::Str
            | Func::IsNull
            | Func::IsNotNull
            | Func::Coalesce
            | Func::JsonEncode
            | Func::NowTimestamp
            | Func::TopicLevel
    )
}

fn bad(func: Func, reason: impl Into<String>) -> EvalError {
    EvalError::BadArgument {
        func: func.name(),
        reason: reason.into(),
    }
}

fn expected(what: &str, got: &Value) -> String {
    format!("expected {what}, got {}", got.type_name())
}

fn text(func: Func, v: &Value) -> Result<&str, EvalError> {
    match v {
        Value::Str(_) | Value::Bytes(_) => v
            .as_str()
            .ok_or_else(|| bad(func, "expected a string, got bytes that are not UTF-8")),
        other => Err(bad(func, expected("a string", other))),
    }
}

fn binary(func: Func, v: &Value) -> Result<&[u8], EvalError> {
    v.as_binary()
        .ok_or_else(|| bad(func, expected("a string or bytes", v)))
}

fn int(func: Func, v: &Value) -> Result<i64, EvalError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(bad(func, expected("an integer", other))),
    }
}

fn count(n: usize) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Decoded binary data is a string when it is UTF-8, like a payload.
fn binary_value(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::Str(s),
        Err(e) => Value::Bytes(Bytes::from(e.into_bytes())),
    }
}

/// `substr(s, start[, len])`: 0-based, counted in characters (EMQX `string:slice`).
fn substr(s: &str, start: &Value, len: Option<&Value>) -> Result<Value, EvalError> {
    let f = Func::Substr;
    let start = usize::try_from(int(f, start)?).map_err(|_| bad(f, "start must be >= 0"))?;
    let chars = s.chars().skip(start);
    Ok(Value::Str(match len {
        None => chars.collect(),
        Some(len) => {
            let len = usize::try_from(int(f, len)?).map_err(|_| bad(f, "length must be >= 0"))?;
            chars.take(len).collect()
        }
    }))
}

/// Empty parts are dropped, as EMQX's `split/2` does (`split('/a//b/', '/')` = `[a, b]`).
fn split(s: &str, sep: &str) -> Result<Value, EvalError> {
    if sep.is_empty() {
        return Err(bad(Func::Split, "the separator must not be empty"));
    }
    Ok(Value::Array(
        s.split(sep)
            .filter(|p| !p.is_empty())
            .map(|p| Value::Str(p.to_owned()))
            .collect(),
    ))
}

/// `nth(n, array)`: 1-based; out of range is `null` rather than an error so that
/// `nth(3, split(topic, '/'))` can be tested with `IS NULL`.
fn nth_plain(items: &[Value], n: i64) -> Value {
    usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| items.get(i))
        .cloned()
        .unwrap_or(Value::Null)
}

fn replace(s: &str, from: &str, to: &str) -> Value {
    if from.is_empty() {
        return Value::Str(s.to_owned());
    }
    Value::Str(s.replace(from, to))
}

fn pattern<'r>(
    func: Func,
    compiled: Option<&'r Regex>,
    pattern: &Value,
) -> Result<Cow<'r, Regex>, EvalError> {
    match compiled {
        Some(re) => Ok(Cow::Borrowed(re)),
        None => compile_regex(text(func, pattern)?)
            .map(Cow::Owned)
            .map_err(|e| bad(func, e)),
    }
}

/// Expands an Erlang `re:replace` replacement (what EMQX users write): `&` or `\0` is the
/// whole match, `\N` / `\g{N}` group N, `\&` and `\\` literal characters.
fn expand(caps: &Captures<'_>, to: &str) -> String {
    let group = |out: &mut String, n: usize| {
        if let Some(m) = caps.get(n) {
            out.push_str(m.as_str());
        }
    };
    let mut out = String::new();
    let mut rest = to;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '&' => group(&mut out, 0),
            '\\' => {
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let braced = rest
                    .strip_prefix("g{")
                    .and_then(|r| r.find('}').map(|end| (&r[..end], &r[end + 1..])));
                if digits > 0 {
                    group(&mut out, rest[..digits].parse().unwrap_or(usize::MAX));
                    rest = &rest[digits..];
                } else if let Some((n, after)) = braced.filter(|(n, _)| n.parse::<usize>().is_ok())
                {
                    group(&mut out, n.parse().unwrap_or(usize::MAX));
                    rest = after;
                } else if let Some(lit) = rest.strip_prefix(['&', '\\']) {
                    out.push_str(&rest[..1]);
                    rest = lit;
                } else {
                    out.push('\\');
                }
            }
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn float_to_int(op: &'static str, x: f64) -> Result<i64, EvalError> {
    // i64::MAX as f64 rounds up to 2^63, hence the strict upper bound.
    if x.is_finite() && x >= i64::MIN as f64 && x < i64::MAX as f64 {
        Ok(x as i64)
    } else {
        Err(EvalError::Overflow { op })
    }
}

fn rounding(func: Func, v: &Value, op: fn(f64) -> f64) -> Result<Value, EvalError> {
    match v {
        Value::Int(i) => Ok(Value::Int(*i)),
        Value::Float(x) => float_to_int(func.name(), op(*x)).map(Value::Int),
        other => Err(bad(func, expected("a number", other))),
    }
}

fn to_int(v: &Value) -> Result<i64, EvalError> {
    let f = Func::Int;
    match v {
        Value::Int(i) => Ok(*i),
        Value::Float(x) => float_to_int("int", x.trunc()),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Str(_) | Value::Bytes(_) => {
            let s = text(f, v)?.trim();
            match s.parse::<i64>() {
                Ok(i) => Ok(i),
                Err(_) => match s.parse::<f64>() {
                    Ok(x) if x.is_finite() => float_to_int("int", x.trunc()),
                    _ => Err(bad(f, format!("{s:?} is not a number"))),
                },
            }
        }
        other => Err(bad(f, expected("a number, bool or string", other))),
    }
}

fn to_float(v: &Value) -> Result<f64, EvalError> {
    let f = Func::Float;
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(x) => Ok(*x),
        Value::Str(_) | Value::Bytes(_) => match text(f, v)?.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(bad(f, "not a finite number")),
        },
        other => Err(bad(f, expected("a number or string", other))),
    }
}

fn to_bool(v: &Value) -> Result<bool, EvalError> {
    let f = Func::Bool;
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Int(0) => Ok(false),
        Value::Int(1) => Ok(true),
        Value::Str(_) | Value::Bytes(_) => match text(f, v)? {
            "true" => Ok(true),
            "false" => Ok(false),
            s => Err(bad(f, format!("{s:?} is neither \"true\" nor \"false\""))),
        },
        other => Err(bad(f, expected("a bool, 0, 1 or a string", other))),
    }
}

/// Milliseconds by default (EMQX's default is seconds; CMQ's timestamps are milliseconds).
fn now_timestamp(unit: Option<&Value>) -> Result<Value, EvalError> {
    let f = Func::NowTimestamp;
    let per_unit = match unit {
        None => 1_000_000,
        Some(u) => time_unit_nanos(text(f, u)?).ok_or_else(|| bad(f, TIME_UNITS))?,
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
    i64::try_from(nanos / per_unit)
        .map(Value::Int)
        .map_err(|_| EvalError::Overflow { op: f.name() })
}

/// Level `n` (1-based) of the message topic, `null` past the last level.
fn topic_level(topic: &str, n: i64) -> Result<Value, EvalError> {
    let f = Func::TopicLevel;
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| bad(f, "the level must be >= 1"))?;
    Ok(topic
        .split('/')
        .nth(n - 1)
        .map_or(Value::Null, |l| Value::Str(l.to_owned())))
}
