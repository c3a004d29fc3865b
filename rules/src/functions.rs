//! The built-in function table: names, arities, and the checks a literal argument gets at
//! parse time so that a rule which can never work fails when it is written, not per message.

use regex::{Regex, RegexBuilder};

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Lower,
    Upper,
    Trim,
    Concat,
    Substr,
    Split,
    Nth,
    Length,
    Strlen,
    Replace,
    RegexMatch,
    RegexReplace,
    Str,
    Int,
    Float,
    Bool,
    IsNull,
    IsNotNull,
    Coalesce,
    JsonDecode,
    JsonEncode,
    Base64Encode,
    Base64Decode,
    Bin2HexStr,
    Abs,
    Round,
    Floor,
    Ceil,
    NowTimestamp,
    TopicLevel,
}

const VARIADIC: usize = usize::MAX;

/// Name, function, minimum and maximum argument count.
const TABLE: &[(&str, Func, usize, usize)] = &[
    ("lower", Func::Lower, 1, 1),
    ("upper", Func::Upper, 1, 1),
    ("trim", Func::Trim, 1, 1),
    ("concat", Func::Concat, 1, VARIADIC),
    ("substr", Func::Substr, 2, 3),
    ("split", Func::Split, 2, 2),
    ("nth", Func::Nth, 2, 2),
    ("length", Func::Length, 1, 1),
    ("strlen", Func::Strlen, 1, 1),
    ("replace", Func::Replace, 3, 3),
    ("regex_match", Func::RegexMatch, 2, 2),
    ("regex_replace", Func::RegexReplace, 3, 3),
    ("str", Func::Str, 1, 1),
    ("int", Func::Int, 1, 1),
    ("float", Func::Float, 1, 1),
    ("bool", Func::Bool, 1, 1),
    ("is_null", Func::IsNull, 1, 1),
    ("is_not_null", Func::IsNotNull, 1, 1),
    ("coalesce", Func::Coalesce, 1, VARIADIC),
    ("json_decode", Func::JsonDecode, 1, 1),
    ("json_encode", Func::JsonEncode, 1, 1),
    ("base64_encode", Func::Base64Encode, 1, 1),
    ("base64_decode", Func::Base64Decode, 1, 1),
    ("bin2hexstr", Func::Bin2HexStr, 1, 1),
    ("abs", Func::Abs, 1, 1),
    ("round", Func::Round, 1, 1),
    ("floor", Func::Floor, 1, 1),
    ("ceil", Func::Ceil, 1, 1),
    ("now_timestamp", Func::NowTimestamp, 0, 1),
    ("topic_level", Func::TopicLevel, 1, 1),
];

impl Func {
    /// Function names are case-insensitive.
    pub(crate) fn lookup(name: &str) -> Option<Func> {
        TABLE
            .iter()
            .find(|(n, ..)| n.eq_ignore_ascii_case(name))
            .map(|&(_, f, ..)| f)
    }

    fn entry(self) -> (&'static str, usize, usize) {
        TABLE
            .iter()
            .find(|(_, f, ..)| *f == self)
            .map_or(("?", 0, VARIADIC), |&(n, _, min, max)| (n, min, max))
    }

    pub(crate) fn name(self) -> &'static str {
        self.entry().0
    }

    /// `Err` describes the expected count when `n` arguments do not fit.
    pub(crate) fn check_arity(self, n: usize) -> Result<(), String> {
        let (name, min, max) = self.entry();
        if (min..=max).contains(&n) {
            return Ok(());
        }
        let expected = match (min, max) {
            (min, VARIADIC) => format!("at least {min}"),
            (min, max) if min == max => min.to_string(),
            (min, max) => format!("{min} to {max}"),
        };
        Err(format!(
            "function {name} takes {expected} argument(s), got {n}"
        ))
    }

    /// Index of the argument that is a regular expression, if any.
    pub(crate) fn regex_arg(self) -> Option<usize> {
        matches!(self, Func::RegexMatch | Func::RegexReplace).then_some(1)
    }
}

/// Patterns longer than this are refused: they come from rule authors or, when not
/// literal, from message data, and compiling is the costly part.
pub(crate) const MAX_PATTERN_LEN: usize = 4096;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a pattern within fixed size limits so a hostile pattern cannot exhaust memory.
pub(crate) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "regular expression is {} bytes long, the limit is {MAX_PATTERN_LEN}",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression: {e}"))
}

/// What `now_timestamp` says about a unit it does not know.
pub(crate) const TIME_UNITS: &str =
    "unit must be 'second', 'millisecond', 'microsecond' or 'nanosecond'";

/// The units `now_timestamp(unit)` takes, as nanoseconds per unit.
pub(crate) fn time_unit_nanos(unit: &str) -> Option<i128> {
    match unit {
        "second" => Some(1_000_000_000),
        "millisecond" => Some(1_000_000),
        "microsecond" => Some(1_000),
        "nanosecond" => Some(1),
        _ => None,
    }
}
