//! Every built-in function at least once: `SELECT <call> AS v` on one message.

use crate::Rule;
use crate::test_support::{TestMsg, Want, error_kind};

const P: &str = r#"{"temp":31.5,"name":"dev-1","a":{"b":[10,20,30]},"badre":"("}"#;

#[test]
fn builtin_functions() {
    use Want::{Err, Row};
    let cases: &[(&str, Want)] = &[
        ("lower('AbC')", Row(r#""abc""#)),
        ("upper(clientid)", Row(r#""C1""#)),
        ("trim('  x ')", Row(r#""x""#)),
        ("lower(payload.missing)", Row("null")),
        ("lower(base64_decode('/wA='))", Err("BadArgument")),
        ("lower(1)", Err("BadArgument")),
        ("concat('a', 1, true, null, 2.5)", Row(r#""a1truenull2.5""#)),
        ("substr('hello', 1)", Row(r#""ello""#)),
        ("substr('héllo', 1, 2)", Row(r#""él""#)),
        ("substr('abc', 10)", Row(r#""""#)),
        ("substr('abc', -1)", Err("BadArgument")),
        ("split('/a//b/', '/')", Row(r#"["a","b"]"#)),
        ("split('a', '')", Err("BadArgument")),
        ("nth(2, payload.a.b)", Row("20")),
        ("nth(5, payload.a.b)", Row("null")),
        ("nth(1, 'x')", Err("BadArgument")),
        ("nth(3, split(topic, '/'))", Row(r#""c""#)),
        ("length(payload.a.b)", Row("3")),
        ("length('héllo')", Row("5")),
        ("length(1)", Err("BadArgument")),
        ("strlen('héllo')", Row("5")),
        ("replace('a-b-c', '-', '+')", Row(r#""a+b+c""#)),
        ("replace('abc', '', '+')", Row(r#""abc""#)),
        (r"regex_match(payload.name, '^dev-\d+$')", Row("true")),
        ("regex_match('abc', payload.name)", Row("false")),
        ("regex_match('x', payload.badre)", Err("BadArgument")),
        (
            "regex_replace('ab1cd3', '[0-9]', '[&]')",
            Row(r#""ab[1]cd[3]""#),
        ),
        (
            r"regex_replace('john smith', '(\w+) (\w+)', '\2 \g{1} \&')",
            Row(r#""smith john &""#),
        ),
        ("str(1.5)", Row(r#""1.5""#)),
        ("str(2.0)", Row(r#""2.0""#)),
        ("str(null)", Row(r#""null""#)),
        ("str(payload.a)", Row(r#""{\"b\":[10,20,30]}""#)),
        ("int('42')", Row("42")),
        ("int('3.9')", Row("3")),
        ("int(-3.9)", Row("-3")),
        ("int(true)", Row("1")),
        ("int('x')", Err("BadArgument")),
        ("int(1e300)", Err("Overflow")),
        ("float(2)", Row("2.0")),
        ("float('1.5')", Row("1.5")),
        ("float('nan')", Err("BadArgument")),
        ("float(true)", Err("BadArgument")),
        ("bool('true')", Row("true")),
        ("bool(0)", Row("false")),
        ("bool('yes')", Err("BadArgument")),
        ("is_null(payload.missing)", Row("true")),
        ("is_not_null(payload.temp)", Row("true")),
        ("coalesce(payload.missing, null, 'd')", Row(r#""d""#)),
        ("coalesce(null)", Row("null")),
        (r#"json_decode('{"a":[1,2]}')"#, Row(r#"{"a":[1,2]}"#)),
        ("json_decode('nope')", Err("BadArgument")),
        ("json_encode(payload.a)", Row(r#""{\"b\":[10,20,30]}""#)),
        ("base64_encode('hi')", Row(r#""aGk=""#)),
        ("base64_decode('aGk=')", Row(r#""hi""#)),
        ("base64_decode('/wA=')", Row(r#""/wA=""#)),
        ("base64_decode('!!')", Err("BadArgument")),
        ("bin2hexstr('hi')", Row(r#""6869""#)),
        ("bin2hexstr(base64_decode('/wA='))", Row(r#""FF00""#)),
        ("abs(-3)", Row("3")),
        ("abs(-1.5)", Row("1.5")),
        ("abs('x')", Err("BadArgument")),
        ("abs(-9223372036854775807 - 1)", Err("Overflow")),
        ("round(2.5)", Row("3")),
        ("round(-2.5)", Row("-3")),
        ("floor(-1.5)", Row("-2")),
        ("ceil(1.2)", Row("2")),
        ("ceil(3)", Row("3")),
        ("topic_level(2)", Row(r#""b""#)),
        ("topic_level(5)", Row("null")),
        ("topic_level(qos - 1)", Err("BadArgument")),
        ("now_timestamp('nanosecond') > 0", Row("true")),
        ("now_timestamp(payload.name)", Err("BadArgument")),
    ];
    let m = TestMsg::new("a/b/c", P);
    for (call, want) in cases {
        let sql = format!(r#"SELECT {call} AS v FROM "t""#);
        let rule = Rule::parse(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        match (want, rule.evaluate(&m.msg())) {
            (Row(json), Ok(Some(row))) => {
                let v = row.get("v").unwrap_or_else(|| panic!("{sql}: no v"));
                assert_eq!(
                    String::from_utf8_lossy(&crate::json::encode(v)),
                    *json,
                    "{sql}"
                );
            }
            (Err(kind), Result::Err(e)) => assert_eq!(error_kind(&e), *kind, "{sql}: {e}"),
            (want, got) => panic!("{sql}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn now_timestamp_defaults_to_milliseconds() {
    let rule = Rule::parse(
        r#"SELECT now_timestamp() AS ms, now_timestamp('second') AS s, now_timestamp('microsecond') AS us FROM "t""#,
    )
    .expect("valid");
    let m = TestMsg::new("t", "");
    let row = rule.evaluate(&m.msg()).expect("ok").expect("row");
    let get = |k: &str| match row.get(k) {
        Some(crate::Value::Int(i)) => *i,
        other => panic!("{k}: {other:?}"),
    };
    let (ms, s, us) = (get("ms"), get("s"), get("us"));
    assert!((ms / 1000 - s).abs() <= 1, "{ms} ms vs {s} s");
    assert!((us / 1000 - ms).abs() <= 1000, "{us} us vs {ms} ms");
    assert!(ms > 1_700_000_000_000);
}
