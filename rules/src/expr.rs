//! The expression grammar, loosest binding first:
//! `OR` < `AND` < `NOT` < comparison / `IS [NOT] NULL` < `+ -` < `* / div mod` < unary `-`
//! < literals, paths, calls, `( )` and `CASE`.

use crate::ast::{BinOp, Expr, Seg};
use crate::error::{ParseError, ParseErrorKind};
use crate::functions::{Func, TIME_UNITS, compile_regex, time_unit_nanos};
use crate::lexer::{Sym, Tok};
use crate::ops::is_filter;
use crate::parser::{MAX_DEPTH, Parser};
use crate::value::Value;

type Parsed = Result<Expr, ParseError>;

impl Parser<'_> {
    /// A full expression, one nesting level deeper.
    pub(crate) fn expr(&mut self) -> Parsed {
        self.nested(|p| p.logic(false))
    }

    /// `OR` chains (`and == false`) over `AND` chains over `NOT` terms.
    fn logic(&mut self, and: bool) -> Parsed {
        let (kw, term): (&str, fn(&mut Self) -> Parsed) = if and {
            ("AND", Self::not_expr)
        } else {
            ("OR", |p| p.logic(true))
        };
        let first = term(self)?;
        if !self.is_kw(kw) {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.eat_kw(kw) {
            terms.push(term(self)?);
        }
        Ok(Expr::Logic { and, terms })
    }

    fn not_expr(&mut self) -> Parsed {
        if self.eat_kw("NOT") {
            let inner = self.nested(Self::not_expr)?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Parsed {
        let left = self.arith(false)?;
        if self.eat_kw("IS") {
            let negated = self.eat_kw("NOT");
            self.expect_kw("NULL")?;
            return Ok(Expr::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        let op = match self.peek_tok() {
            Tok::Sym(Sym::Eq) => BinOp::Eq,
            Tok::Sym(Sym::Ne) => BinOp::Ne,
            Tok::Sym(Sym::Lt) => BinOp::Lt,
            Tok::Sym(Sym::Le) => BinOp::Le,
            Tok::Sym(Sym::Gt) => BinOp::Gt,
            Tok::Sym(Sym::Ge) => BinOp::Ge,
            Tok::Sym(Sym::Match) => BinOp::Match,
            _ => return Ok(left),
        };
        self.advance();
        let at = self.peek().start;
        let right = self.arith(false)?;
        if let (BinOp::Match, Expr::Lit(Value::Str(filter))) = (op, &right)
            && !is_filter(filter)
        {
            return Err(self.error_at(
                at,
                ParseErrorKind::InvalidFilter,
                format!("{filter:?} is not a valid MQTT topic filter"),
            ));
        }
        Ok(Expr::Compare(op, Box::new(left), Box::new(right)))
    }

    /// `+ -` chains (`mul == false`) over `* / div mod` chains over unary terms.
    fn arith(&mut self, mul: bool) -> Parsed {
        let first = if mul {
            self.unary()?
        } else {
            self.arith(true)?
        };
        let mut rest = Vec::new();
        while let Some(op) = self.arith_op(mul) {
            self.advance();
            let operand = if mul {
                self.unary()?
            } else {
                self.arith(true)?
            };
            rest.push((op, operand));
        }
        if rest.is_empty() {
            return Ok(first);
        }
        Ok(Expr::Arith {
            first: Box::new(first),
            rest,
        })
    }

    fn arith_op(&self, mul: bool) -> Option<BinOp> {
        match (mul, self.peek_tok()) {
            (false, Tok::Sym(Sym::Plus)) => Some(BinOp::Add),
            (false, Tok::Sym(Sym::Minus)) => Some(BinOp::Sub),
            (true, Tok::Sym(Sym::Star)) => Some(BinOp::Mul),
            (true, Tok::Sym(Sym::Slash)) => Some(BinOp::Div),
            (true, Tok::Ident(w)) if w.eq_ignore_ascii_case("div") => Some(BinOp::IntDiv),
            (true, Tok::Ident(w)) if w.eq_ignore_ascii_case("mod") => Some(BinOp::Mod),
            _ => None,
        }
    }

    fn unary(&mut self) -> Parsed {
        if self.eat_sym(Sym::Minus) {
            return Ok(match self.nested(Self::unary)? {
                Expr::Lit(Value::Int(i)) if i != i64::MIN => Expr::Lit(Value::Int(-i)),
                Expr::Lit(Value::Float(f)) => Expr::Lit(Value::Float(-f)),
                e => Expr::Neg(Box::new(e)),
            });
        }
        if self.eat_sym(Sym::Plus) {
            return self.nested(Self::unary);
        }
        self.primary()
    }

    fn primary(&mut self) -> Parsed {
        let t = self.peek().clone();
        match t.tok {
            Tok::Sym(Sym::LParen) => {
                self.advance();
                let e = self.expr()?;
                self.expect_sym(Sym::RParen)?;
                Ok(e)
            }
            Tok::Str(s) => {
                self.advance();
                Ok(Expr::Lit(Value::Str(s)))
            }
            Tok::Int(i) => {
                self.advance();
                Ok(Expr::Lit(Value::Int(i)))
            }
            Tok::Float(f) => {
                self.advance();
                Ok(Expr::Lit(Value::Float(f)))
            }
            Tok::Ident(w) => {
                let literal = match w.to_ascii_lowercase().as_str() {
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    "null" => Some(Value::Null),
                    _ => None,
                };
                if let Some(v) = literal {
                    self.advance();
                    return Ok(Expr::Lit(v));
                }
                if w.eq_ignore_ascii_case("case") {
                    self.advance();
                    return self.case();
                }
                if *self.peek_second() == Tok::Sym(Sym::LParen) {
                    return self.call(&w, t.start);
                }
                if Self::is_reserved(&w) {
                    return Err(self.unexpected("an expression"));
                }
                self.path(&w, t.start)
            }
            _ => Err(self.unexpected("an expression")),
        }
    }

    /// `name { .key | .'key' | [n] }`, resolved to a column or alias now.
    fn path(&mut self, head: &str, at: usize) -> Parsed {
        self.advance();
        let root = self.resolve(head, at)?;
        let mut segs = Vec::new();
        loop {
            let seg = if self.eat_sym(Sym::Dot) {
                match self.peek_tok().clone() {
                    Tok::Ident(k) | Tok::Str(k) => {
                        self.advance();
                        Seg::Key(k)
                    }
                    _ => return Err(self.unexpected("a key after `.`")),
                }
            } else if self.eat_sym(Sym::LBracket) {
                let negative = self.eat_sym(Sym::Minus);
                let Tok::Int(i) = self.peek_tok().clone() else {
                    return Err(self.unexpected("an integer index"));
                };
                self.advance();
                self.expect_sym(Sym::RBracket)?;
                Seg::Index(if negative { -i } else { i })
            } else {
                return Ok(Expr::Path { root, segs });
            };
            if segs.len() >= MAX_DEPTH {
                return Err(self.error_at(at, ParseErrorKind::TooDeep, "path too long"));
            }
            segs.push(seg);
        }
    }

    fn case(&mut self) -> Parsed {
        let subject = if self.is_kw("WHEN") {
            None
        } else {
            Some(Box::new(self.expr()?))
        };
        let mut whens = Vec::new();
        while self.eat_kw("WHEN") {
            let when = self.expr()?;
            self.expect_kw("THEN")?;
            whens.push((when, self.expr()?));
        }
        if whens.is_empty() {
            return Err(self.unexpected("WHEN"));
        }
        let otherwise = if self.eat_kw("ELSE") {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        self.expect_kw("END")?;
        Ok(Expr::Case {
            subject,
            whens,
            otherwise,
        })
    }

    fn call(&mut self, name: &str, at: usize) -> Parsed {
        let func = Func::lookup(name).ok_or_else(|| {
            self.error_at(
                at,
                ParseErrorKind::UnknownFunction,
                format!("unknown function `{name}`"),
            )
        })?;
        self.advance();
        self.expect_sym(Sym::LParen)?;
        let mut args = Vec::new();
        let mut starts = Vec::new();
        if !self.eat_sym(Sym::RParen) {
            loop {
                starts.push(self.peek().start);
                args.push(self.expr()?);
                if self.eat_sym(Sym::RParen) {
                    break;
                }
                self.expect_sym(Sym::Comma)?;
            }
        }
        func.check_arity(args.len())
            .map_err(|m| self.error_at(at, ParseErrorKind::Arity, m))?;
        let regex = self.check_literal_args(func, &args, &starts)?;
        Ok(Expr::Call { func, args, regex })
    }

    /// Rejects literal arguments that could never work and compiles a literal pattern.
    fn check_literal_args(
        &self,
        func: Func,
        args: &[Expr],
        starts: &[usize],
    ) -> Result<Option<regex::Regex>, ParseError> {
        let literal = |i: usize| match args.get(i) {
            Some(Expr::Lit(v)) => Some((v, starts.get(i).copied().unwrap_or(0))),
            _ => None,
        };
        let bad = |at: usize, m: String| self.error_at(at, ParseErrorKind::BadArgument, m);
        let name = func.name();
        if let Some(i) = func.regex_arg() {
            return match literal(i) {
                Some((Value::Str(p), at)) => compile_regex(p)
                    .map(Some)
                    .map_err(|m| self.error_at(at, ParseErrorKind::InvalidRegex, m)),
                Some((Value::Null, _)) | None => Ok(None),
                Some((_, at)) => Err(bad(at, format!("{name}: the pattern must be a string"))),
            };
        }
        match (func, literal(0)) {
            (Func::NowTimestamp, Some((v, at)))
                if v.as_str().and_then(time_unit_nanos).is_none() =>
            {
                Err(bad(at, format!("{name}: {TIME_UNITS}")))
            }
            (Func::TopicLevel, Some((v, at))) if !matches!(v, Value::Int(1..)) => Err(bad(
                at,
                format!("{name}: the level must be an integer >= 1"),
            )),
            _ => Ok(None),
        }
    }
}
