//! Recursive-descent parser for `SELECT <fields> FROM <filters> [WHERE <expr>]`: the token
//! cursor and the statement level. Expressions are in [`crate::expr`].

use std::sync::Arc;

use crate::ast::{Expr, Field, Root, Seg};
use crate::column::{self, Column};
use crate::error::{ParseError, ParseErrorKind};
use crate::lexer::{Sym, Tok, Token, tokenize};
use crate::ops::is_filter;

/// Longest SQL accepted, in bytes.
pub(crate) const MAX_SQL_LEN: usize = 64 * 1024;
/// Deepest expression nesting (parentheses, calls, unary operators, CASE) and longest
/// path accepted; it bounds every recursion over the compiled rule.
pub(crate) const MAX_DEPTH: usize = 64;

/// Words that cannot be column names or bare aliases.
const RESERVED: &[&str] = &[
    "select", "from", "where", "as", "and", "or", "not", "is", "null", "true", "false", "case",
    "when", "then", "else", "end", "div", "mod",
];

/// A parsed statement, ready to become a [`crate::Rule`].
pub(crate) struct Statement {
    pub sources: Vec<String>,
    pub fields: Vec<Field>,
    pub condition: Option<Expr>,
    /// Whether the WHERE clause reads an alias, so must run after SELECT.
    pub condition_uses_alias: bool,
}

pub(crate) struct Parser<'s> {
    pub(crate) src: &'s str,
    toks: Vec<Token>,
    pos: usize,
    depth: usize,
    /// Aliases defined so far; a name resolves to one of these before a message column.
    aliases: Vec<Arc<str>>,
    pub(crate) used_alias: bool,
}

pub(crate) fn parse_statement(src: &str) -> Result<Statement, ParseError> {
    if src.len() > MAX_SQL_LEN {
        return Err(ParseError::at(
            src,
            MAX_SQL_LEN,
            ParseErrorKind::TooLong,
            format!(
                "rule SQL is {} bytes long, the limit is {MAX_SQL_LEN}",
                src.len()
            ),
        ));
    }
    let mut p = Parser {
        src,
        toks: tokenize(src)?,
        pos: 0,
        depth: 0,
        aliases: Vec::new(),
        used_alias: false,
    };
    p.statement()
}

impl Parser<'_> {
    pub(crate) fn peek(&self) -> &Token {
        // tokenize always ends with Eof and the cursor never moves past it.
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    pub(crate) fn peek_tok(&self) -> &Tok {
        &self.peek().tok
    }

    /// The token after the next one.
    pub(crate) fn peek_second(&self) -> &Tok {
        &self.toks[(self.pos + 1).min(self.toks.len() - 1)].tok
    }

    pub(crate) fn advance(&mut self) -> Token {
        let t = self.peek().clone();
        if t.tok != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    /// End offset of the last consumed token.
    pub(crate) fn prev_end(&self) -> usize {
        self.pos
            .checked_sub(1)
            .and_then(|i| self.toks.get(i))
            .map_or(0, |t| t.end)
    }

    pub(crate) fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek_tok(), Tok::Ident(w) if w.eq_ignore_ascii_case(kw))
    }

    pub(crate) fn eat_kw(&mut self, kw: &str) -> bool {
        let hit = self.is_kw(kw);
        if hit {
            self.advance();
        }
        hit
    }

    pub(crate) fn expect_kw(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.unexpected(kw))
        }
    }

    pub(crate) fn eat_sym(&mut self, sym: Sym) -> bool {
        let hit = *self.peek_tok() == Tok::Sym(sym);
        if hit {
            self.advance();
        }
        hit
    }

    pub(crate) fn expect_sym(&mut self, sym: Sym) -> Result<(), ParseError> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{}`", sym.text())))
        }
    }

    pub(crate) fn error_at(
        &self,
        offset: usize,
        kind: ParseErrorKind,
        message: impl Into<String>,
    ) -> ParseError {
        ParseError::at(self.src, offset, kind, message)
    }

    /// "expected X, found Y" at the next token.
    pub(crate) fn unexpected(&self, expected: &str) -> ParseError {
        let t = self.peek();
        self.error_at(
            t.start,
            ParseErrorKind::UnexpectedToken,
            format!("expected {expected}, found {}", t.tok.describe()),
        )
    }

    /// Runs `f` one nesting level deeper, failing past [`MAX_DEPTH`].
    pub(crate) fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        if self.depth >= MAX_DEPTH {
            let at = self.peek().start;
            return Err(self.error_at(
                at,
                ParseErrorKind::TooDeep,
                format!("expression nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    pub(crate) fn is_reserved(word: &str) -> bool {
        RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
    }

    /// Resolves the first name of a path: an alias defined earlier, else a message column.
    pub(crate) fn resolve(&mut self, name: &str, at: usize) -> Result<Root, ParseError> {
        if let Some(alias) = self.aliases.iter().find(|a| ***a == *name) {
            self.used_alias = true;
            return Ok(Root::Output(alias.clone()));
        }
        Column::from_name(name).map(Root::Column).ok_or_else(|| {
            self.error_at(
                at,
                ParseErrorKind::UnknownColumn,
                format!(
                    "unknown column `{name}` (not a message column nor an alias defined before)"
                ),
            )
        })
    }

    fn statement(&mut self) -> Result<Statement, ParseError> {
        self.expect_kw("SELECT")?;
        let mut fields = vec![self.field()?];
        while self.eat_sym(Sym::Comma) {
            fields.push(self.field()?);
        }
        if !self.eat_kw("FROM") {
            return Err(self.unexpected("`,` or FROM"));
        }
        let sources = self.sources()?;
        self.used_alias = false;
        let condition = if self.eat_kw("WHERE") {
            Some(self.expr()?)
        } else {
            None
        };
        if *self.peek_tok() != Tok::Eof {
            let t = self.peek();
            return Err(self.error_at(
                t.start,
                ParseErrorKind::TrailingInput,
                format!(
                    "unexpected {} after the end of the statement",
                    t.tok.describe()
                ),
            ));
        }
        Ok(Statement {
            sources,
            fields,
            condition,
            condition_uses_alias: self.used_alias,
        })
    }

    fn field(&mut self) -> Result<Field, ParseError> {
        if self.eat_sym(Sym::Star) {
            let all = column::ALL
                .iter()
                .map(|c| (*c, Arc::from(c.name())))
                .collect();
            return Ok(Field::All(all));
        }
        let start = self.peek().start;
        let expr = self.expr()?;
        let source = &self.src[start..self.prev_end()];
        let (name, nested, aliased) = if self.eat_kw("AS") {
            let (name, nested) = self.alias()?;
            (name, nested, true)
        } else {
            let (name, nested) = default_name(&expr, source);
            (name, nested, false)
        };
        let name: Arc<str> = Arc::from(name);
        // Only explicit aliases shadow message columns: an unaliased `payload.temp` must
        // not hide the rest of the payload from WHERE (a quirk of EMQX's map merge).
        if aliased && !self.aliases.contains(&name) {
            self.aliases.push(name.clone());
        }
        Ok(Field::Expr {
            expr,
            target: crate::ast::Target { name, nested },
        })
    }

    /// `AS name` or `AS a.b.'c d'` (nested output, as EMQX allows).
    fn alias(&mut self) -> Result<(String, Vec<String>), ParseError> {
        let mut parts = vec![self.alias_part()?];
        while self.eat_sym(Sym::Dot) {
            if parts.len() >= MAX_DEPTH {
                let at = self.peek().start;
                return Err(self.error_at(at, ParseErrorKind::TooDeep, "alias path too long"));
            }
            parts.push(self.alias_part()?);
        }
        let name = parts.remove(0);
        Ok((name, parts))
    }

    fn alias_part(&mut self) -> Result<String, ParseError> {
        match self.peek_tok().clone() {
            Tok::Ident(w) if !Self::is_reserved(&w) => {
                self.advance();
                Ok(w)
            }
            Tok::Str(s) if !s.is_empty() => {
                self.advance();
                Ok(s)
            }
            _ => Err(self.unexpected("an alias name")),
        }
    }

    fn sources(&mut self) -> Result<Vec<String>, ParseError> {
        let mut sources = Vec::new();
        loop {
            let t = self.peek().clone();
            let Tok::Str(filter) = t.tok else {
                return Err(self.unexpected("a quoted topic filter"));
            };
            if !is_filter(&filter) {
                return Err(self.error_at(
                    t.start,
                    ParseErrorKind::InvalidFilter,
                    format!("{filter:?} is not a valid MQTT topic filter"),
                ));
            }
            self.advance();
            sources.push(filter);
            if !self.eat_sym(Sym::Comma) {
                return Ok(sources);
            }
        }
    }
}

/// The output name of a field without `AS`: a path of keys nests under its first name
/// (EMQX: `payload.temp` gives `{"payload": {"temp": ..}}`); a string literal names itself
/// (EMQX does the same); anything else is named by its source text.
fn default_name(expr: &Expr, source: &str) -> (String, Vec<String>) {
    if let Expr::Path { root, segs } = expr {
        let keys: Option<Vec<String>> = segs
            .iter()
            .map(|s| match s {
                Seg::Key(k) => Some(k.clone()),
                Seg::Index(_) => None,
            })
            .collect();
        if let Some(keys) = keys {
            let first = match root {
                Root::Column(c) => c.name().to_owned(),
                Root::Output(name) => name.to_string(),
            };
            return (first, keys);
        }
    }
    if let Expr::Lit(crate::value::Value::Str(s)) = expr {
        return (s.clone(), Vec::new());
    }
    (source.to_owned(), Vec::new())
}
