//! Arithmetic and comparison operators. Numbers mix freely (an `Int` compares exactly with
//! a `Float`); strings and binaries compare as bytes; a comparison involving `null` is
//! false, and `=` between different types is false rather than an error.

use std::cmp::Ordering;

use cmq_topic::{TopicLimits, matches, validate_filter};

use crate::ast::BinOp;
use crate::error::EvalError;
use crate::value::Value;

/// `+ - * / div mod`. `+` concatenates text forms when either side is a string.
pub(crate) fn arith(op: BinOp, l: &Value, r: &Value) -> Result<Value, EvalError> {
    let text = |v: &Value| v.as_binary().is_some();
    if op == BinOp::Add && (text(l) || text(r)) {
        let mut s = l.text().into_owned();
        s.push_str(&r.text());
        return Ok(Value::Str(s));
    }
    let name = op.text();
    let overflow = EvalError::Overflow { op: name };
    match (op, l, r) {
        (BinOp::Div | BinOp::IntDiv | BinOp::Mod, _, Value::Int(0)) => {
            Err(EvalError::DivisionByZero { op: name })
        }
        (BinOp::Div, _, Value::Float(d)) if *d == 0.0 => {
            Err(EvalError::DivisionByZero { op: name })
        }
        (
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::IntDiv | BinOp::Mod,
            Value::Int(a),
            Value::Int(b),
        ) => {
            let result = match op {
                BinOp::Add => a.checked_add(*b),
                BinOp::Sub => a.checked_sub(*b),
                BinOp::Mul => a.checked_mul(*b),
                BinOp::IntDiv => a.checked_div(*b),
                _ => a.checked_rem(*b),
            };
            result.map(Value::Int).ok_or(overflow)
        }
        (BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div, _, _) => {
            let (Some(a), Some(b)) = (as_f64(l), as_f64(r)) else {
                return Err(operand_types(op, l, r));
            };
            // `/` is always float division, as in EMQX (Erlang's `/`).
            let x = match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                _ => a / b,
            };
            if x.is_finite() {
                Ok(Value::Float(x))
            } else {
                Err(overflow)
            }
        }
        _ => Err(operand_types(op, l, r)),
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn operand_types(op: BinOp, l: &Value, r: &Value) -> EvalError {
    EvalError::OperandTypes {
        op: op.text(),
        left: l.type_name(),
        right: r.type_name(),
    }
}

/// `= != <> < <= > >= =~`.
pub(crate) fn compare(op: BinOp, l: &Value, r: &Value) -> Result<bool, EvalError> {
    if matches!(l, Value::Null) || matches!(r, Value::Null) {
        return Ok(false);
    }
    Ok(match op {
        BinOp::Eq => equal(l, r),
        BinOp::Ne => !equal(l, r),
        BinOp::Match => {
            let (Some(topic), Some(filter)) = (l.as_str(), r.as_str()) else {
                return Err(operand_types(op, l, r));
            };
            is_filter(filter) && matches(filter, topic)
        }
        _ => order(l, r).is_some_and(|o| match op {
            BinOp::Lt => o.is_lt(),
            BinOp::Le => o.is_le(),
            BinOp::Gt => o.is_gt(),
            _ => o.is_ge(),
        }),
    })
}

pub(crate) fn is_filter(filter: &str) -> bool {
    validate_filter(filter, &TopicLimits::default()).is_ok()
}

/// Equality as `=` and `CASE x WHEN` see it.
pub(crate) fn equal(l: &Value, r: &Value) -> bool {
    match (l, r) {
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            order(l, r) == Some(Ordering::Equal)
        }
        (Value::Str(_) | Value::Bytes(_), Value::Str(_) | Value::Bytes(_)) => {
            l.as_binary() == r.as_binary()
        }
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Null, Value::Null) => true,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y))
        }
        // Key order does not matter, as for Erlang maps.
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| r.get_key(k).is_some_and(|w| equal(v, w)))
        }
        _ => false,
    }
}

/// Ordering for `< <= > >=`: numbers with numbers, text with text; nothing else orders.
fn order(l: &Value, r: &Value) -> Option<Ordering> {
    match (l, r) {
        (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
        (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
        (Value::Int(a), Value::Float(b)) => int_float(*a, *b),
        (Value::Float(a), Value::Int(b)) => int_float(*b, *a).map(Ordering::reverse),
        _ => Some(l.as_binary()?.cmp(r.as_binary()?)),
    }
}

/// Exact comparison: converting the `i64` to `f64` would call 2^53 + 1 equal to 2^53.
fn int_float(i: i64, f: f64) -> Option<Ordering> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    // In range, so the truncation is exact; the fraction then breaks ties.
    let whole = f.trunc() as i64;
    Some(
        i.cmp(&whole)
            .then_with(|| 0.0_f64.partial_cmp(&f.fract()).unwrap_or(Ordering::Equal)),
    )
}
