//! Turns rule SQL into tokens, each carrying its byte span so that parse errors and
//! unaliased column names can point back at the source text.

use crate::error::{ParseError, ParseErrorKind};

/// Operators and punctuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sym {
    Comma,
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Star,
    Plus,
    Minus,
    Slash,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Match,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A bare word; keywords are idents the parser recognises case-insensitively.
    Ident(String),
    /// A quoted string; `'...'` and `"..."` are both strings (EMQX accepts both).
    Str(String),
    Int(i64),
    Float(f64),
    Sym(Sym),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

/// Tokenises all of `src`; the last token is always [`Tok::Eof`] at `src.len()`.
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer { src, pos: 0 };
    let mut tokens = Vec::new();
    loop {
        lexer.skip_whitespace();
        let start = lexer.pos;
        let Some(c) = lexer.peek() else {
            tokens.push(Token {
                tok: Tok::Eof,
                start,
                end: start,
            });
            return Ok(tokens);
        };
        let tok = if c == '\'' || c == '"' {
            lexer.string(c)?
        } else if c.is_ascii_digit() {
            lexer.number()?
        } else if c.is_alphabetic() || c == '_' {
            lexer.ident()
        } else {
            Tok::Sym(lexer.symbol(c)?)
        };
        tokens.push(Token {
            tok,
            start,
            end: lexer.pos,
        });
    }
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.src[self.pos..].chars().nth(ahead)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, offset: usize, kind: ParseErrorKind, message: impl Into<String>) -> ParseError {
        ParseError::at(self.src, offset, kind, message)
    }

    /// Backslash is literal except before the closing quote, so regular expressions such
    /// as `'\d+'` need no double escaping; a doubled quote (`'it''s'`) is also a quote.
    fn string(&mut self, quote: char) -> Result<Tok, ParseError> {
        let start = self.pos;
        self.bump();
        let mut value = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(self.error(
                        start,
                        ParseErrorKind::Unterminated,
                        "unterminated string literal",
                    ));
                }
                Some('\\') if self.peek() == Some(quote) => {
                    self.bump();
                    value.push(quote);
                }
                Some(c) if c == quote => {
                    if self.peek() == Some(quote) {
                        self.bump();
                        value.push(quote);
                    } else {
                        return Ok(Tok::Str(value));
                    }
                }
                Some(c) => value.push(c),
            }
        }
    }

    fn number(&mut self) -> Result<Tok, ParseError> {
        let start = self.pos;
        self.eat_digits();
        let mut float = false;
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            float = true;
            self.bump();
            self.eat_digits();
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let sign = usize::from(matches!(self.peek_at(1), Some('+' | '-')));
            if self.peek_at(1 + sign).is_some_and(|c| c.is_ascii_digit()) {
                float = true;
                for _ in 0..=sign {
                    self.bump();
                }
                self.eat_digits();
            }
        }
        if self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return Err(self.error(start, ParseErrorKind::InvalidNumber, "malformed number"));
        }
        let text = &self.src[start..self.pos];
        if float {
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Tok::Float(f)),
                _ => Err(self.error(start, ParseErrorKind::InvalidNumber, "number out of range")),
            }
        } else {
            text.parse::<i64>().map(Tok::Int).map_err(|_| {
                self.error(
                    start,
                    ParseErrorKind::InvalidNumber,
                    "integer does not fit in 64 bits",
                )
            })
        }
    }

    fn eat_digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
    }

    fn ident(&mut self) -> Tok {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.bump();
        }
        Tok::Ident(self.src[start..self.pos].to_owned())
    }

    fn symbol(&mut self, c: char) -> Result<Sym, ParseError> {
        let start = self.pos;
        self.bump();
        let next = self.peek();
        let (sym, two) = match (c, next) {
            (',', _) => (Sym::Comma, false),
            ('.', _) => (Sym::Dot, false),
            ('(', _) => (Sym::LParen, false),
            (')', _) => (Sym::RParen, false),
            ('[', _) => (Sym::LBracket, false),
            (']', _) => (Sym::RBracket, false),
            ('*', _) => (Sym::Star, false),
            ('+', _) => (Sym::Plus, false),
            ('-', _) => (Sym::Minus, false),
            ('/', _) => (Sym::Slash, false),
            ('=', Some('~')) => (Sym::Match, true),
            ('=', _) => (Sym::Eq, false),
            ('!', Some('=')) => (Sym::Ne, true),
            ('<', Some('>')) => (Sym::Ne, true),
            ('<', Some('=')) => (Sym::Le, true),
            ('<', _) => (Sym::Lt, false),
            ('>', Some('=')) => (Sym::Ge, true),
            ('>', _) => (Sym::Gt, false),
            _ => {
                return Err(self.error(
                    start,
                    ParseErrorKind::UnexpectedChar,
                    format!("unexpected character {c:?}"),
                ));
            }
        };
        if two {
            self.bump();
        }
        Ok(sym)
    }
}

impl Sym {
    pub(crate) fn text(self) -> &'static str {
        match self {
            Sym::Comma => ",",
            Sym::Dot => ".",
            Sym::LParen => "(",
            Sym::RParen => ")",
            Sym::LBracket => "[",
            Sym::RBracket => "]",
            Sym::Star => "*",
            Sym::Plus => "+",
            Sym::Minus => "-",
            Sym::Slash => "/",
            Sym::Eq => "=",
            Sym::Ne => "!=",
            Sym::Lt => "<",
            Sym::Le => "<=",
            Sym::Gt => ">",
            Sym::Ge => ">=",
            Sym::Match => "=~",
        }
    }
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Sym(s) => format!("`{}`", s.text()),
            Tok::Eof => "end of input".to_owned(),
        }
    }
}
