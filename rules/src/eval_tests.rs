//! Evaluator tables: message + SQL in, output row (as JSON), no row, or error kind out.

use crate::test_support::{TestMsg, Want, check};
use crate::{Row, Rule, Value};

const P: &str = r#"{"temp":31.5,"hum":40,"name":"dev-1","a":{"b":[10,20,30]},"flag":true,"nested":"{\"x\":1}"}"#;

#[test]
fn select_where_and_paths() {
    use Want::{Err, NoRow, Row};
    let cases: &[(&str, &str, Want)] = &[
        // Aliases are visible in WHERE and in later fields.
        (
            r#"SELECT payload.hum AS h FROM "t" WHERE h = 40"#,
            P,
            Row(r#"{"h":40}"#),
        ),
        (
            r#"SELECT payload.hum AS h FROM "t" WHERE h > 100"#,
            P,
            NoRow,
        ),
        (
            r#"SELECT payload.temp AS t, t * 2 AS t2 FROM "t""#,
            P,
            Row(r#"{"t":31.5,"t2":63.0}"#),
        ),
        (
            r#"SELECT 'x' AS clientid FROM "t" WHERE clientid = 'x'"#,
            P,
            Row(r#"{"clientid":"x"}"#),
        ),
        // Unaliased paths nest like EMQX, and do not hide the payload from WHERE.
        (
            r#"SELECT payload.a.b FROM "t""#,
            P,
            Row(r#"{"payload":{"a":{"b":[10,20,30]}}}"#),
        ),
        (
            r#"SELECT payload.temp, payload.hum FROM "t""#,
            P,
            Row(r#"{"payload":{"temp":31.5,"hum":40}}"#),
        ),
        (
            r#"SELECT payload.temp FROM "t" WHERE payload.hum = 40"#,
            P,
            Row(r#"{"payload":{"temp":31.5}}"#),
        ),
        (
            r#"SELECT payload.temp AS out.t, qos AS out.q FROM "t" WHERE out.q = 1"#,
            P,
            Row(r#"{"out":{"t":31.5,"q":1}}"#),
        ),
        // Array indexes are 1-based, negative from the end, 0 and out of range are null.
        (
            r#"SELECT payload.a.b[1] AS first, payload.a.b[-1] AS last, payload.a.b[0] AS zero, payload.a.b[9] AS out FROM "t""#,
            P,
            Row(r#"{"first":10,"last":30,"zero":null,"out":null}"#),
        ),
        (
            r#"SELECT payload.a.b[2] FROM "t""#,
            P,
            Row(r#"{"payload.a.b[2]":20}"#),
        ),
        (
            r#"SELECT payload.nested.x AS x FROM "t""#,
            P,
            Row(r#"{"x":1}"#),
        ),
        (
            r#"SELECT payload.a AS a FROM "t""#,
            r#"{"z":1,"a":{"y":2,"b":3}}"#,
            Row(r#"{"a":{"y":2,"b":3}}"#),
        ),
        (
            r#"SELECT payload.a AS a FROM "t""#,
            r#"{"a":1,"a":2}"#,
            Row(r#"{"a":2}"#),
        ),
        (
            r#"SELECT payload[2] AS x FROM "t""#,
            "[1,2]",
            Row(r#"{"x":2}"#),
        ),
        // Only the keys a rule reads are decoded; the rest must still be valid JSON.
        (
            r#"SELECT payload.temp AS t FROM "t""#,
            r#"{"skip":[{"deep":"x"}],"t\u0065mp":1}"#,
            Row(r#"{"t":1}"#),
        ),
        (
            r#"SELECT payload.temp AS t FROM "t""#,
            r#"{"temp":1,"skip":[}"#,
            Row(r#"{"t":null}"#),
        ),
        (
            r#"SELECT payload.temp AS t FROM "t""#,
            r#"{"temp":1} junk"#,
            Row(r#"{"t":null}"#),
        ),
        (
            r#"SELECT payload.temp AS t FROM "t""#,
            r#"[{"temp":1}]"#,
            Row(r#"{"t":null}"#),
        ),
        (
            r#"SELECT payload.x AS x FROM "t""#,
            r#""{\"x\":1}""#,
            Row(r#"{"x":1}"#),
        ),
        (
            r#"SELECT payload.x AS x, payload[1] AS y FROM "t""#,
            r#"[5]"#,
            Row(r#"{"x":null,"y":5}"#),
        ),
        // A payload that is not JSON: paths are null, the raw payload is a string.
        (
            r#"SELECT payload.x AS x, payload FROM "t""#,
            "not json",
            Row(r#"{"x":null,"payload":"not json"}"#),
        ),
        (
            r#"SELECT payload = 'not json' AS p FROM "t""#,
            "not json",
            Row(r#"{"p":true}"#),
        ),
        (
            r#"SELECT payload FROM "t""#,
            r#"{"x":1}"#,
            Row(r#"{"payload":"{\"x\":1}"}"#),
        ),
        // Message columns.
        (
            r#"SELECT user_properties.k AS a, pub_props.'User-Property'.k AS b, flags.retain AS r, user_properties.none AS n FROM "t""#,
            P,
            Row(r#"{"a":"v","b":"v","r":false,"n":null}"#),
        ),
        (
            r#"SELECT id, clientid, username, peerhost, qos, retain, timestamp, publish_received_at, node, protocol FROM "t""#,
            P,
            Row(
                r#"{"id":"m1","clientid":"c1","username":"u1","peerhost":"10.0.0.1","qos":1,"retain":false,"timestamp":1700000000000,"publish_received_at":1700000000000,"node":"hub-0","protocol":"mqtt"}"#,
            ),
        ),
        (
            r#"SELECT * FROM "t""#,
            r#"{"x":1}"#,
            Row(
                r#"{"id":"m1","clientid":"c1","username":"u1","payload":"{\"x\":1}","peerhost":"10.0.0.1","topic":"t","qos":1,"retain":false,"flags":{"retain":false,"dup":false},"pub_props":{"User-Property":{"k":"v"}},"user_properties":{"k":"v"},"timestamp":1700000000000,"publish_received_at":1700000000000,"node":"hub-0","protocol":"mqtt"}"#,
            ),
        ),
        // Operators.
        (
            r#"SELECT clientid + '-' + qos AS s FROM "t""#,
            P,
            Row(r#"{"s":"c1-1"}"#),
        ),
        (
            r#"SELECT 1 + 2 AS a, 7 / 2 AS b, 7 div 2 AS c, -7 mod 3 AS d, 2 * 1.5 AS e, 1 - 3 AS f, -(qos) AS g FROM "t""#,
            P,
            Row(r#"{"a":3,"b":3.5,"c":3,"d":-1,"e":3.0,"f":-2,"g":-1}"#),
        ),
        (
            r#"SELECT 1 = 1.0 AS a, 2 > 1.5 AS b, 1.5 <= 2 AS c, 9007199254740993 = 9007199254740992.0 AS d, 'a' < 'b' AS e, 1 = '1' AS f, 1 != '1' AS g, 2 >= 3 AS h, 1 <> 1 AS i FROM "t""#,
            P,
            Row(
                r#"{"a":true,"b":true,"c":true,"d":false,"e":true,"f":false,"g":true,"h":false,"i":false}"#,
            ),
        ),
        (
            r#"SELECT payload.missing = null AS a, payload.missing != 1 AS b, null < 1 AS c, 'a' < 1 AS d FROM "t""#,
            P,
            Row(r#"{"a":false,"b":false,"c":false,"d":false}"#),
        ),
        (
            r#"SELECT payload.missing IS NULL AS a, payload.temp IS NOT NULL AS b, username IS NULL AS c FROM "t""#,
            P,
            Row(r#"{"a":true,"b":true,"c":false}"#),
        ),
        (
            r#"SELECT topic FROM '#' WHERE topic =~ 't'"#,
            P,
            Row(r#"{"topic":"t"}"#),
        ),
        (r#"SELECT topic FROM '#' WHERE topic =~ 'x/#'"#, P, NoRow),
        (
            r#"SELECT topic FROM '#' WHERE qos =~ 'x/#'"#,
            P,
            Err("OperandTypes"),
        ),
        // CASE, both forms.
        (
            r#"SELECT CASE WHEN payload.temp > 30 THEN 'hot' WHEN payload.temp > 20 THEN 'warm' ELSE 'cold' END AS level FROM "t""#,
            P,
            Row(r#"{"level":"hot"}"#),
        ),
        (
            r#"SELECT CASE WHEN qos > 5 THEN 1 END AS x FROM "t""#,
            P,
            Row(r#"{"x":null}"#),
        ),
        (
            r#"SELECT CASE qos WHEN 0 THEN 'zero' WHEN 1.0 THEN 'one' END AS x FROM "t""#,
            P,
            Row(r#"{"x":"one"}"#),
        ),
        (
            r#"SELECT CASE WHEN 1 THEN 1 END AS x FROM "t""#,
            P,
            Err("OperandType"),
        ),
        // Logic is three-valued and short-circuits.
        (
            r#"SELECT qos FROM "t" WHERE payload.missing OR qos = 1"#,
            P,
            Row(r#"{"qos":1}"#),
        ),
        (
            r#"SELECT qos FROM "t" WHERE payload.missing AND qos = 1"#,
            P,
            NoRow,
        ),
        (r#"SELECT qos FROM "t" WHERE NOT payload.missing"#, P, NoRow),
        (
            r#"SELECT qos FROM "t" WHERE NOT payload.flag OR payload.flag"#,
            P,
            Row(r#"{"qos":1}"#),
        ),
        (
            r#"SELECT qos FROM "t" WHERE false AND payload.name"#,
            P,
            NoRow,
        ),
        (
            r#"SELECT qos FROM "t" WHERE qos = 1 OR payload.name"#,
            P,
            Row(r#"{"qos":1}"#),
        ),
        (
            r#"SELECT qos FROM "t" WHERE payload.name AND true"#,
            P,
            Err("OperandType"),
        ),
        (r#"SELECT qos FROM "t" WHERE qos"#, P, Err("OperandType")),
        (r#"SELECT qos FROM "t" WHERE payload.missing"#, P, NoRow),
        // Arithmetic errors say which operator.
        (
            r#"SELECT payload.name * 2 AS x FROM "t""#,
            P,
            Err("OperandTypes"),
        ),
        (r#"SELECT true + 1 AS x FROM "t""#, P, Err("OperandTypes")),
        (
            r#"SELECT payload.missing + 1 AS x FROM "t""#,
            P,
            Err("OperandTypes"),
        ),
        (r#"SELECT 1.5 div 1 AS x FROM "t""#, P, Err("OperandTypes")),
        (r#"SELECT 1 / 0 AS x FROM "t""#, P, Err("DivisionByZero")),
        (r#"SELECT 1 mod 0 AS x FROM "t""#, P, Err("DivisionByZero")),
        (
            r#"SELECT 9223372036854775807 + 1 AS x FROM "t""#,
            P,
            Err("Overflow"),
        ),
        (r#"SELECT 1e308 * 10 AS x FROM "t""#, P, Err("Overflow")),
        (
            r#"SELECT -payload.name AS x FROM "t""#,
            P,
            Err("OperandType"),
        ),
        // WHERE without aliases runs first, so SELECT errors on rejected messages vanish.
        (
            r#"SELECT payload.name * 2 AS x FROM "t" WHERE qos = 2"#,
            P,
            NoRow,
        ),
        (
            r#"SELECT payload.name * 2 AS x FROM "t" WHERE x = 2"#,
            P,
            Err("OperandTypes"),
        ),
        // Unaliased non-paths are named by their source text; string literals by value.
        (
            r#"SELECT lower(clientid), 1 + 1, 'lit' FROM "t""#,
            P,
            Row(r#"{"lower(clientid)":"c1","1 + 1":2,"lit":"lit"}"#),
        ),
        (
            r#"SELECT *, payload.x AS x FROM "t""#,
            r#"{"x":1}"#,
            Row(
                r#"{"id":"m1","clientid":"c1","username":"u1","payload":"{\"x\":1}","peerhost":"10.0.0.1","topic":"t","qos":1,"retain":false,"flags":{"retain":false,"dup":false},"pub_props":{"User-Property":{"k":"v"}},"user_properties":{"k":"v"},"timestamp":1700000000000,"publish_received_at":1700000000000,"node":"hub-0","protocol":"mqtt","x":1}"#,
            ),
        ),
    ];
    for (sql, payload, want) in cases {
        check(sql, &TestMsg::new("t", payload), want);
    }
}

#[test]
fn binary_and_absent_fields() {
    let mut m = TestMsg::new("t", [0xff, 0x00]);
    m.username = None;
    m.peerhost = None;
    m.user_properties.clear();
    check(
        r#"SELECT payload, payload.x AS x, username, peerhost, pub_props, user_properties FROM "t""#,
        &m,
        &Want::Row(
            r#"{"payload":"/wA=","x":null,"username":null,"peerhost":null,"pub_props":{},"user_properties":{}}"#,
        ),
    );
    let rule = Rule::parse(r#"SELECT payload FROM "t""#).expect("valid");
    let row = rule.evaluate(&m.msg()).expect("ok").expect("row");
    assert_eq!(
        row.get("payload"),
        Some(&Value::Bytes(bytes::Bytes::from_static(&[0xff, 0])))
    );
}

#[test]
fn user_properties_keep_last_value_of_a_repeated_key() {
    let mut m = TestMsg::new("t", "");
    m.user_properties = vec![
        ("a".into(), "1".into()),
        ("b".into(), "2".into()),
        ("a".into(), "3".into()),
    ];
    check(
        r#"SELECT user_properties, user_properties.a AS a FROM "t""#,
        &m,
        &Want::Row(r#"{"user_properties":{"a":"3","b":"2"},"a":"3"}"#),
    );
}

#[test]
fn topic_filter_operator_and_retain_follow_the_message() {
    let mut m = TestMsg::new("sensors/7/data", "{}");
    m.retain = true;
    m.protocol = "coap";
    check(
        r#"SELECT retain, flags.retain AS fr, protocol FROM "sensors/#" WHERE topic =~ 'sensors/+/data'"#,
        &m,
        &Want::Row(r#"{"retain":true,"fr":true,"protocol":"coap"}"#),
    );
    let sys = TestMsg::new("$SYS/x", "{}");
    check(
        r#"SELECT qos FROM '#' WHERE topic =~ '#'"#,
        &sys,
        &Want::NoRow,
    );
}

#[test]
fn row_accessors() {
    let rule =
        Rule::parse(r#"SELECT clientid, payload.a AS a, lower(clientid) FROM "t""#).expect("valid");
    let m = TestMsg::new("t", r#"{"a":{"b":[1,{"c":"x"}]}}"#);
    let row: Row = rule.evaluate(&m.msg()).expect("ok").expect("row");
    assert_eq!(row.len(), 3);
    assert_eq!(row.get("clientid"), Some(&Value::Str("c1".into())));
    assert_eq!(row.get("a.b[1]"), Some(&Value::Int(1)));
    assert_eq!(row.get("a.b[2].c"), Some(&Value::Str("x".into())));
    assert_eq!(row.get("lower(clientid)"), Some(&Value::Str("c1".into())));
    assert_eq!(row.get("a.missing"), None);
    assert_eq!(row.get("nope"), None);
    let names: Vec<&str> = row.columns().map(|(k, _)| k).collect();
    assert_eq!(names, ["clientid", "a", "lower(clientid)"]);
}

#[test]
fn payload_is_decoded_lazily_and_rule_is_reusable() {
    // The same compiled rule gives independent results for different messages.
    let rule = Rule::parse(r#"SELECT payload.n AS n FROM "t" WHERE n > 1"#).expect("valid");
    for (payload, want) in [
        (r#"{"n":2}"#, Some(2)),
        (r#"{"n":1}"#, None),
        ("junk", None),
    ] {
        let m = TestMsg::new("t", payload);
        let got = rule.evaluate(&m.msg()).expect("ok");
        assert_eq!(
            got.map(|r| r.get("n").cloned()),
            want.map(|n| Some(Value::Int(n)))
        );
    }
}
