//! The three ways a rule can fail: compiling its SQL (or a template), evaluating it against a
//! message, and rendering a sink template from its output row.

/// What kind of mistake a [`ParseError`] reports; tests and callers match on this rather
/// than on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The SQL is longer than the 64 KiB limit.
    TooLong,
    /// A character that starts no token.
    UnexpectedChar,
    /// A string literal (or template placeholder) without its closing delimiter.
    Unterminated,
    /// A number literal that is malformed or does not fit an `i64` / `f64`.
    InvalidNumber,
    /// A token the grammar does not allow here (includes a missing `FROM`).
    UnexpectedToken,
    /// Input left over after a complete statement.
    TrailingInput,
    /// A call to a function this engine does not have.
    UnknownFunction,
    /// A known function called with the wrong number of arguments.
    Arity,
    /// A literal argument a function can never accept (bad time unit, level 0, ...).
    BadArgument,
    /// A name that is neither a message column nor an alias defined before it.
    UnknownColumn,
    /// A `FROM` entry or an `=~` literal that is not a valid MQTT topic filter.
    InvalidFilter,
    /// A literal regular expression that does not compile within the size limits.
    InvalidRegex,
    /// Expressions or paths nested deeper than the limit of 64.
    TooDeep,
    /// A template placeholder whose path cannot be parsed.
    InvalidPath,
}

/// A rule or template that does not compile, with the position of the offending input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// 1-based line of the offending input.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// 0-based byte offset into the input.
    pub offset: usize,
    /// What is wrong, for people.
    pub message: String,
    /// What is wrong, for programs.
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// An error at byte `offset` of `src` (clamped to a character boundary, so a limit that
    /// falls inside a multi-byte character still gets a position).
    pub(crate) fn at(
        src: &str,
        offset: usize,
        kind: ParseErrorKind,
        message: impl Into<String>,
    ) -> Self {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self {
            line,
            column,
            offset,
            message: message.into(),
            kind,
        }
    }
}

/// Why evaluating a rule against one message failed (EMQX counts these as
/// `failed.exception`; the message is not forwarded).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// A binary operator applied to operands of types it does not take.
    #[error("operator {op} cannot be applied to {left} and {right}")]
    OperandTypes {
        /// The operator as written in SQL.
        op: &'static str,
        /// Type of the left operand.
        left: &'static str,
        /// Type of the right operand.
        right: &'static str,
    },
    /// A unary operator or a condition (`WHERE`, `CASE WHEN`, `AND`, `OR`, `NOT`) applied
    /// to a value of the wrong type.
    #[error("{op} cannot be applied to {operand}")]
    OperandType {
        /// The operator or clause.
        op: &'static str,
        /// Type of the operand.
        operand: &'static str,
    },
    /// `/`, `div` or `mod` by zero.
    #[error("operator {op}: division by zero")]
    DivisionByZero {
        /// The operator as written in SQL.
        op: &'static str,
    },
    /// Integer arithmetic that does not fit an `i64`.
    #[error("operator {op}: integer overflow")]
    Overflow {
        /// The operator or function.
        op: &'static str,
    },
    /// A function given an argument it cannot work with.
    #[error("function {func}: {reason}")]
    BadArgument {
        /// The function name.
        func: &'static str,
        /// What was wrong with the argument.
        reason: String,
    },
}

/// Why a sink template could not be rendered from an output row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// The placeholder's path names nothing in the row.
    #[error("template placeholder ${{{0}}} names nothing in the rule's output")]
    Missing(String),
}
