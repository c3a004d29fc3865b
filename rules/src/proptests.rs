//! Property tests: the parser survives any input, and `SELECT *` passes the message
//! through.

use proptest::prelude::*;

use crate::test_support::TestMsg;
use crate::{Rule, Value};

const LEAVES: &[&str] = &[
    "payload",
    "payload.a",
    "payload.a[1]",
    "payload.a[-1]",
    "payload.b.c.d",
    "qos",
    "topic",
    "clientid",
    "username",
    "flags",
    "user_properties.k",
    "pub_props",
    "x",
    "0",
    "1",
    "-1",
    "2.5",
    "9223372036854775807",
    "'a/+'",
    "'#'",
    "'1'",
    "''",
    "true",
    "null",
    "'(a)'",
];
const OPS: &[&str] = &[
    "+", "-", "*", "/", "div", "mod", "=", "!=", "<", ">=", "=~", "AND", "OR",
];
const FUNCS1: &[&str] = &[
    "lower",
    "upper",
    "trim",
    "length",
    "strlen",
    "str",
    "int",
    "float",
    "bool",
    "is_null",
    "json_decode",
    "json_encode",
    "base64_encode",
    "base64_decode",
    "bin2hexstr",
    "abs",
    "round",
    "floor",
    "ceil",
    "topic_level",
    "coalesce",
    "concat",
];
const FUNCS2: &[&str] = &[
    "substr",
    "split",
    "nth",
    "regex_match",
    "coalesce",
    "concat",
];
const FUNCS3: &[&str] = &["substr", "replace", "regex_replace", "concat"];

const PAYLOADS: &[&str] = &[
    r#"{"a":[1,"2",{"c":null}],"b":{"c":"{\"d\":1}"}}"#,
    "[1,2,3]",
    "plain text",
    r#""{\"a\":5}""#,
    "",
];

/// Random well-formed expressions, so that evaluation (not only parsing) is exercised.
fn expr() -> impl Strategy<Value = String> {
    let leaf = proptest::sample::select(LEAVES).prop_map(str::to_owned);
    leaf.prop_recursive(4, 32, 3, |inner| {
        let pick = |names: &'static [&'static str]| proptest::sample::select(names);
        prop_oneof![
            (inner.clone(), pick(OPS), inner.clone())
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("NOT ({a})")),
            inner.clone().prop_map(|a| format!("-({a})")),
            inner.clone().prop_map(|a| format!("({a} IS NOT NULL)")),
            (pick(FUNCS1), inner.clone()).prop_map(|(f, a)| format!("{f}({a})")),
            (pick(FUNCS2), inner.clone(), inner.clone())
                .prop_map(|(f, a, b)| format!("{f}({a}, {b})")),
            (pick(FUNCS3), inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(f, a, b, c)| format!("{f}({a}, {b}, {c})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("CASE WHEN {a} THEN {b} ELSE {c} END")),
        ]
    })
}

proptest! {
    #[test]
    fn parse_never_panics(sql in "[ -~]{0,200}") {
        let _ = Rule::parse(&sql);
    }

    #[test]
    fn parse_and_evaluate_statement_like_input_never_panics(
        fields in "[ -~]{0,60}",
        cond in "[ -~]{0,60}",
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let sql = format!(r#"SELECT {fields} FROM '#' WHERE {cond}"#);
        if let Ok(rule) = Rule::parse(&sql) {
            let m = TestMsg::new("a/b", &payload);
            let _ = rule.evaluate(&m.msg());
        }
    }

    #[test]
    fn random_expressions_evaluate_without_panicking(
        field in expr(),
        other in expr(),
        cond in expr(),
        payload in proptest::sample::select(PAYLOADS),
    ) {
        let sql = format!("SELECT {field} AS x, {other} FROM '#' WHERE {cond}");
        // Leaves such as `x` (an alias) and literal arguments can make a statement invalid.
        if let Ok(rule) = Rule::parse(&sql) {
            let m = TestMsg::new("a/b", payload);
            if let Ok(Some(row)) = rule.evaluate(&m.msg()) {
                let _ = row.to_json();
            }
        }
    }

    #[test]
    fn select_star_keeps_the_topic(
        topic in "\\PC{0,40}",
        payload in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let rule = Rule::parse(r#"SELECT * FROM '#'"#).expect("valid");
        let m = TestMsg::new(&topic, &payload);
        let row = rule.evaluate(&m.msg()).expect("no error").expect("a row");
        prop_assert_eq!(row.get("topic"), Some(&Value::Str(topic.clone())));
        let raw = match row.get("payload") {
            Some(Value::Str(s)) => s.as_bytes().to_vec(),
            Some(Value::Bytes(b)) => b.to_vec(),
            other => panic!("payload is {other:?}"),
        };
        prop_assert_eq!(raw, payload);
    }
}
