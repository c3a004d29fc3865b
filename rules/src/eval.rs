//! Evaluates a compiled expression against one message. The payload is JSON-decoded at
//! most once per message, and only if some path looks into it. Recursion here follows the
//! expression tree, whose height the parser caps.

use std::cell::OnceCell;

use crate::ast::{Expr, Root};
use crate::builtins;
use crate::column::{Column, Message};
use crate::error::EvalError;
use crate::ops;
use crate::payload::PayloadNeeds;
use crate::row::Row;
use crate::value::{Value, navigate};

/// Per-message evaluation state.
pub(crate) struct Ctx<'m, 'a> {
    pub msg: &'m Message<'a>,
    needs: &'m PayloadNeeds,
    /// `None` inside once decoding was tried and the payload is not JSON.
    payload: OnceCell<Option<Value>>,
}

impl<'m, 'a> Ctx<'m, 'a> {
    pub(crate) fn new(msg: &'m Message<'a>, needs: &'m PayloadNeeds) -> Self {
        Self {
            msg,
            needs,
            payload: OnceCell::new(),
        }
    }

    fn payload_json(&self) -> Option<&Value> {
        self.payload
            .get_or_init(|| self.needs.decode(self.msg.payload))
            .as_ref()
    }
}

/// Evaluates `e`; `row` holds the fields selected so far (aliases resolve there).
pub(crate) fn eval(e: &Expr, ctx: &Ctx<'_, '_>, row: &Row) -> Result<Value, EvalError> {
    match e {
        Expr::Lit(v) => Ok(v.clone()),
        Expr::Path { root, segs } => Ok(match root {
            Root::Column(Column::Payload) if !segs.is_empty() => ctx
                .payload_json()
                .and_then(|p| navigate(p, segs))
                .unwrap_or(Value::Null),
            Root::Column(c) if segs.is_empty() => c.value(ctx.msg),
            Root::Column(c) => c.get(ctx.msg, segs).unwrap_or(Value::Null),
            Root::Output(name) => row
                .column(name)
                .and_then(|v| navigate(v, segs))
                .unwrap_or(Value::Null),
        }),
        Expr::Neg(inner) => match eval(inner, ctx, row)? {
            Value::Int(i) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or(EvalError::Overflow { op: "unary -" }),
            Value::Float(f) => Ok(Value::Float(-f)),
            other => Err(EvalError::OperandType {
                op: "unary -",
                operand: other.type_name(),
            }),
        },
        Expr::Not(inner) => {
            Ok(truth("NOT", eval(inner, ctx, row)?)?.map_or(Value::Null, |b| Value::Bool(!b)))
        }
        Expr::Logic { and, terms } => logic(*and, terms, ctx, row),
        Expr::Arith { first, rest } => {
            let mut acc = eval(first, ctx, row)?;
            for (op, e) in rest {
                acc = ops::arith(*op, &acc, &eval(e, ctx, row)?)?;
            }
            Ok(acc)
        }
        Expr::Compare(op, l, r) => {
            let (l, r) = (eval(l, ctx, row)?, eval(r, ctx, row)?);
            ops::compare(*op, &l, &r).map(Value::Bool)
        }
        Expr::IsNull { expr, negated } => {
            let null = matches!(eval(expr, ctx, row)?, Value::Null);
            Ok(Value::Bool(null != *negated))
        }
        Expr::Case {
            subject,
            whens,
            otherwise,
        } => {
            let subject = subject.as_ref().map(|s| eval(s, ctx, row)).transpose()?;
            for (when, then) in whens {
                let w = eval(when, ctx, row)?;
                let hit = match &subject {
                    Some(s) => ops::equal(s, &w),
                    None => truth("CASE WHEN", w)? == Some(true),
                };
                if hit {
                    return eval(then, ctx, row);
                }
            }
            otherwise
                .as_ref()
                .map_or(Ok(Value::Null), |o| eval(o, ctx, row))
        }
        Expr::Call { func, args, regex } => {
            let args = args
                .iter()
                .map(|a| eval(a, ctx, row))
                .collect::<Result<Vec<_>, _>>()?;
            builtins::call(*func, &args, regex.as_ref(), ctx.msg.topic)
        }
    }
}

/// A condition's value: `Some(bool)`, or `None` for `null` (SQL's unknown).
pub(crate) fn truth(op: &'static str, v: Value) -> Result<Option<bool>, EvalError> {
    match v {
        Value::Bool(b) => Ok(Some(b)),
        Value::Null => Ok(None),
        other => Err(EvalError::OperandType {
            op,
            operand: other.type_name(),
        }),
    }
}

/// `AND` (`and`) or `OR` over `terms` with SQL's three-valued logic, stopping at the first
/// term that decides the outcome.
fn logic(and: bool, terms: &[Expr], ctx: &Ctx<'_, '_>, row: &Row) -> Result<Value, EvalError> {
    let op = if and { "AND" } else { "OR" };
    // The value that decides the outcome on its own: false for AND, true for OR.
    let decisive = !and;
    let mut unknown = false;
    for term in terms {
        match truth(op, eval(term, ctx, row)?)? {
            Some(b) if b == decisive => return Ok(Value::Bool(decisive)),
            Some(_) => {}
            None => unknown = true,
        }
    }
    Ok(if unknown {
        Value::Null
    } else {
        Value::Bool(!decisive)
    })
}
