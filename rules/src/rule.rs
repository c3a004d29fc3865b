//! A compiled rule: which topics it listens to, and how it turns a message into an output
//! row.

use crate::ast::{Expr, Field};
use crate::column::Message;
use crate::error::{EvalError, ParseError};
use crate::eval::{Ctx, eval, truth};
use crate::parser::parse_statement;
use crate::payload::PayloadNeeds;
use crate::row::Row;

/// A compiled `SELECT .. FROM .. [WHERE ..]` statement. Names, functions, regular
/// expressions and topic filters are resolved when parsing, so evaluation never looks at
/// the SQL again; a `Rule` is immutable and can be shared across threads.
#[derive(Debug, Clone)]
pub struct Rule {
    sources: Vec<String>,
    fields: Vec<Field>,
    condition: Option<Expr>,
    condition_uses_alias: bool,
    payload_needs: PayloadNeeds,
}

impl Rule {
    /// Compiles rule SQL.
    pub fn parse(sql: &str) -> Result<Rule, ParseError> {
        let s = parse_statement(sql)?;
        let exprs = s.fields.iter().filter_map(|f| match f {
            Field::Expr { expr, .. } => Some(expr),
            Field::All(_) => None,
        });
        let payload_needs = PayloadNeeds::of(exprs.chain(&s.condition));
        Ok(Rule {
            payload_needs,
            sources: s.sources,
            fields: s.fields,
            condition: s.condition,
            condition_uses_alias: s.condition_uses_alias,
        })
    }

    /// The `FROM` topic filters, in order.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Whether any `FROM` filter matches `topic` (MQTT rules: a leading wildcard does not
    /// match a topic starting with `$`).
    pub fn matches_topic(&self, topic: &str) -> bool {
        self.sources.iter().any(|f| cmq_topic::matches(f, topic))
    }

    /// Runs the rule on a message: `Ok(None)` when `WHERE` is false or null.
    ///
    /// A `WHERE` that reads no alias runs before `SELECT`, so a filtered-out message costs
    /// only the condition. EMQX always runs `SELECT` first, which differs only when
    /// `SELECT` fails on a message that `WHERE` rejects: EMQX reports an error, this
    /// returns `Ok(None)`.
    pub fn evaluate(&self, msg: &Message<'_>) -> Result<Option<Row>, EvalError> {
        let ctx = Ctx::new(msg, &self.payload_needs);
        if let Some(cond) = &self.condition
            && !self.condition_uses_alias
            && !passes(cond, &ctx, &Row::default())?
        {
            return Ok(None);
        }
        let mut row = Row::default();
        for field in &self.fields {
            match field {
                Field::All(columns) => {
                    for (column, name) in columns {
                        row.put(name, &[], column.value(msg));
                    }
                }
                Field::Expr { expr, target } => {
                    let v = eval(expr, &ctx, &row)?;
                    row.put(&target.name, &target.nested, v);
                }
            }
        }
        if let Some(cond) = &self.condition
            && self.condition_uses_alias
            && !passes(cond, &ctx, &row)?
        {
            return Ok(None);
        }
        Ok(Some(row))
    }
}

fn passes(cond: &Expr, ctx: &Ctx<'_, '_>, row: &Row) -> Result<bool, EvalError> {
    Ok(truth("WHERE", eval(cond, ctx, row)?)? == Some(true))
}
