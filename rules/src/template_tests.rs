//! Template parsing and rendering against rows produced by real rules.

use crate::test_support::TestMsg;
use crate::{ParseErrorKind, RenderError, Row, Rule, Template, Value};

fn row(sql: &str, payload: &[u8]) -> Row {
    let rule = Rule::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let m = TestMsg::new("sensors/7/data", payload);
    rule.evaluate(&m.msg()).expect("ok").expect("row")
}

#[test]
fn renders_placeholders() {
    let r = row(
        r#"SELECT clientid, payload, payload.a AS a, qos, retain, 1.5 AS f, payload.missing AS n, topic_level(2) FROM '#'"#,
        br#"{"a":{"b":[1,"two"]}}"#,
    );
    let cases: &[(&str, &[u8])] = &[
        ("${clientid}", b"c1"),
        ("${payload}", br#"{"a":{"b":[1,"two"]}}"#),
        ("${a.b}", b"[1,\"two\"]"),
        ("${a.b[2]}", b"two"),
        ("${a}", br#"{"b":[1,"two"]}"#),
        ("${ a.b[1] }", b"1"),
        ("${.clientid}", b"c1"),
        ("${qos}/${retain}/${f}/${n}", b"1/false/1.5/null"),
        ("iot.${topic_level(2)}", b"iot.7"),
        ("dev/${clientid}/temp", b"dev/c1/temp"),
        ("no placeholders", b"no placeholders"),
        ("$ {x} $x ${clientid}$", b"$ {x} $x c1$"),
        // A raw JSON payload is looked into, as EMQX templates do.
        ("${payload.a.b[1]}", b"1"),
        (
            "${.}",
            br#"{"clientid":"c1","payload":"{\"a\":{\"b\":[1,\"two\"]}}","a":{"b":[1,"two"]},"qos":1,"retain":false,"f":1.5,"n":null,"topic_level(2)":"7"}"#,
        ),
        ("", b""),
    ];
    for (text, want) in cases {
        let t = Template::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let got = t.render(&r).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "{text}"
        );
    }
}

#[test]
fn single_placeholder_gives_raw_bytes() {
    let r = row(r#"SELECT payload FROM '#'"#, &[0xff, 0x00, 0x01]);
    let t = Template::parse("${payload}").expect("valid");
    assert_eq!(t.render(&r).expect("ok"), [0xff, 0x00, 0x01]);
    // Mixed with text the bytes are still raw; as a string they are replaced.
    let t = Template::parse("x${payload}").expect("valid");
    assert_eq!(t.render(&r).expect("ok"), [b'x', 0xff, 0x00, 0x01]);
    assert_eq!(t.render_string(&r).expect("ok"), "x\u{fffd}\u{0}\u{1}");
    // In JSON they are base64.
    let t = Template::parse("${.}").expect("valid");
    assert_eq!(t.render_string(&r).expect("ok"), r#"{"payload":"/wAB"}"#);
}

#[test]
fn missing_paths_are_render_errors() {
    let r = row(
        r#"SELECT clientid, payload.a AS a FROM '#'"#,
        br#"{"a":{"b":1}}"#,
    );
    for (text, missing) in [
        ("${nope}", "nope"),
        ("k-${a.c}", "a.c"),
        ("${a.b.c}", "a.b.c"),
        ("${clientid[1]}", "clientid[1]"),
    ] {
        let t = Template::parse(text).expect("valid");
        assert_eq!(
            t.render(&r),
            Err(RenderError::Missing(missing.to_owned())),
            "{text}"
        );
        assert!(t.render_string(&r).is_err());
    }
}

#[test]
fn is_literal() {
    assert!(Template::parse("a/b").expect("valid").is_literal());
    assert!(Template::parse("").expect("valid").is_literal());
    assert!(!Template::parse("a/${b}").expect("valid").is_literal());
    assert!(!Template::parse("${.}").expect("valid").is_literal());
}

#[test]
fn bad_templates_fail_at_their_position() {
    let cases: &[(&str, ParseErrorKind, usize)] = &[
        ("topic/${clientid", ParseErrorKind::Unterminated, 7),
        ("${}", ParseErrorKind::InvalidPath, 3),
        ("a ${x[y]}", ParseErrorKind::InvalidPath, 7),
        ("${x..y}", ParseErrorKind::InvalidPath, 5),
        ("${ 'x }", ParseErrorKind::InvalidPath, 4),
    ];
    for &(text, kind, column) in cases {
        let err = Template::parse(text).expect_err(text);
        assert_eq!((err.kind, err.column), (kind, column), "{text}: {err}");
    }
}

#[test]
fn rows_built_by_hand_render() {
    let r: Row = [
        ("k".to_owned(), Value::Str("v".into())),
        ("n".to_owned(), Value::Int(3)),
    ]
    .into_iter()
    .collect();
    let t = Template::parse("${k}=${n}").expect("valid");
    assert_eq!(t.render_string(&r).expect("ok"), "k=3".replace('k', "v"));
}
