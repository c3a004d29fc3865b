//! The compiled form of a rule: names are already resolved to message columns or output
//! aliases, regular expressions compiled and literal arguments checked, so evaluation never
//! looks at the SQL text again.

use std::sync::Arc;

use regex::Regex;

use crate::column::Column;
use crate::functions::Func;
use crate::value::Value;

/// One step of a path: `.key`, `.'quoted key'` or `[n]` (1-based, negative counts from the
/// end, as in EMQX).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seg {
    Key(String),
    Index(i64),
}

/// Where a path starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Root {
    /// A column of the message.
    Column(Column),
    /// A column of the output row made by an `AS` alias.
    Output(Arc<str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    IntDiv,
    Mod,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Match,
}

impl BinOp {
    pub(crate) fn text(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::IntDiv => "div",
            BinOp::Mod => "mod",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Match => "=~",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Lit(Value),
    Path {
        root: Root,
        segs: Vec<Seg>,
    },
    Neg(Box<Expr>),
    Not(Box<Expr>),
    /// `a AND b AND ..` (`and`) or `a OR b OR ..`, kept flat so that a long chain does not
    /// make a deep tree.
    Logic {
        and: bool,
        terms: Vec<Expr>,
    },
    /// `a + b - c ..` or `a * b / c ..`, applied left to right; flat for the same reason.
    Arith {
        first: Box<Expr>,
        rest: Vec<(BinOp, Expr)>,
    },
    /// A comparison (`=`, `<`, `=~`, ...); these do not chain.
    Compare(BinOp, Box<Expr>, Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    /// `CASE [subject] WHEN .. THEN .. [ELSE ..] END`; with a subject each `WHEN` value is
    /// compared to it with `=`, without one each `WHEN` is a condition.
    Case {
        subject: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Call {
        func: Func,
        args: Vec<Expr>,
        /// The pattern of `regex_match` / `regex_replace` when it is a literal.
        regex: Option<Regex>,
    },
}

/// Where a SELECT field lands in the output row: column `name`, then nested object keys.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub name: Arc<str>,
    pub nested: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum Field {
    /// `*`: every message column, with its output name made once at parse time.
    All(Vec<(Column, Arc<str>)>),
    Expr {
        expr: Expr,
        target: Target,
    },
}

impl Expr {
    /// Calls `f` with every path in the expression. Recursion follows the tree, whose
    /// height the parser caps.
    pub(crate) fn visit_paths(&self, f: &mut impl FnMut(&Root, &[Seg])) {
        match self {
            Expr::Lit(_) => {}
            Expr::Path { root, segs } => f(root, segs),
            Expr::Neg(e) | Expr::Not(e) | Expr::IsNull { expr: e, .. } => e.visit_paths(f),
            Expr::Logic { terms, .. } => terms.iter().for_each(|t| t.visit_paths(f)),
            Expr::Arith { first, rest } => {
                first.visit_paths(f);
                rest.iter().for_each(|(_, e)| e.visit_paths(f));
            }
            Expr::Compare(_, l, r) => {
                l.visit_paths(f);
                r.visit_paths(f);
            }
            Expr::Case {
                subject,
                whens,
                otherwise,
            } => {
                subject.iter().for_each(|s| s.visit_paths(f));
                for (w, t) in whens {
                    w.visit_paths(f);
                    t.visit_paths(f);
                }
                otherwise.iter().for_each(|o| o.visit_paths(f));
            }
            Expr::Call { args, .. } => args.iter().for_each(|a| a.visit_paths(f)),
        }
    }
}
