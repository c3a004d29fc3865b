//! Parser tables: statements that compile (with their sources) and statements that fail
//! with the right kind of error at the right place.

use crate::{ParseErrorKind as K, Rule};

#[test]
fn valid_statements_compile() {
    let cases: &[(&str, &[&str])] = &[
        (r#"SELECT * FROM "t/#""#, &["t/#"]),
        (
            r#"SELECT clientid as cid FROM '#' WHERE cid = 'abc'"#,
            &["#"],
        ),
        (
            r#"SELECT clientid, payload.clientid as myclientid FROM "t/#", "my/other/topic""#,
            &["t/#", "my/other/topic"],
        ),
        (
            "select payload.x as x from 't' where x = 1 and not (qos > 1)",
            &["t"],
        ),
        (r#"SELECT pub_props.'User-Property'.foo FROM "t""#, &["t"]),
        (
            r#"SELECT CASE WHEN payload.x < 0 THEN 0 ELSE payload.x END AS x FROM "t""#,
            &["t"],
        ),
        (
            r#"SELECT CASE qos WHEN 0 THEN 'zero' WHEN 1 THEN 'one' END AS q FROM "t""#,
            &["t"],
        ),
        (r#"SELECT * FROM "$SYS/#", "+/+""#, &["$SYS/#", "+/+"]),
        (
            "SELECT\n\tclientid,\n\tpayload.a[1] AS first,\n\tpayload.a[-1] AS last\nFROM\n\t\"a/b\"\nWHERE\n\ttopic =~ 'a/+'",
            &["a/b"],
        ),
        (
            r#"SELECT *, payload.x AS x FROM "t" WHERE x IS NOT NULL OR qos IS NULL"#,
            &["t"],
        ),
        (
            r#"SELECT 1 + 2 * 3 div 1 mod 5 - -4 / 2.5e1 FROM "t""#,
            &["t"],
        ),
        (r#"SELECT Lower(clientid), UPPER(topic) FROM "t""#, &["t"]),
        (r#"SELECT payload.x AS a.b.'c d' FROM "t""#, &["t"]),
        (r#"SELECT 'it''s', "dq \" str" FROM "t""#, &["t"]),
        (
            r#"SELECT now_timestamp(), now_timestamp('second') FROM "t""#,
            &["t"],
        ),
    ];
    for (sql, sources) in cases {
        let rule = Rule::parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(rule.sources(), *sources, "{sql}");
    }
}

#[test]
fn invalid_statements_fail_at_their_position() {
    // (sql, kind, line, column); columns count characters, 1-based.
    let cases: &[(&str, K, usize, usize)] = &[
        (
            r#"SELECT * FROM "t" WHERE clientid = 'abc"#,
            K::Unterminated,
            1,
            36,
        ),
        (r#"SELECT * FROM "t"#, K::Unterminated, 1, 15),
        (r#"SELECT foo(clientid) FROM "t""#, K::UnknownFunction, 1, 8),
        ("SELECT clientid WHERE qos = 1", K::UnexpectedToken, 1, 17),
        ("SELECT clientid", K::UnexpectedToken, 1, 16),
        ("SELECT * FROM", K::UnexpectedToken, 1, 14),
        ("SELECT * FROM t", K::UnexpectedToken, 1, 15),
        (r#"SELECT * FROM "a/#/b""#, K::InvalidFilter, 1, 15),
        (r#"SELECT * FROM "t/1", 'x+'"#, K::InvalidFilter, 1, 22),
        (r#"SELECT * FROM """#, K::InvalidFilter, 1, 15),
        (r#"SELECT * FROM "t" garbage"#, K::TrailingInput, 1, 19),
        (
            r#"SELECT * FROM "t" WHERE qos = 1 1"#,
            K::TrailingInput,
            1,
            33,
        ),
        (r#"SELECT lower() FROM "t""#, K::Arity, 1, 8),
        (r#"SELECT lower(clientid, topic) FROM "t""#, K::Arity, 1, 8),
        (r#"SELECT substr('a') FROM "t""#, K::Arity, 1, 8),
        (r#"SELECT foo FROM "t""#, K::UnknownColumn, 1, 8),
        (r#"SELECT x AS y, y AS x FROM "t""#, K::UnknownColumn, 1, 8),
        (r#"SELECT Clientid FROM "t""#, K::UnknownColumn, 1, 8),
        (
            r#"SELECT regex_match(clientid, '(') FROM "t""#,
            K::InvalidRegex,
            1,
            30,
        ),
        (
            r#"SELECT now_timestamp('hour') FROM "t""#,
            K::BadArgument,
            1,
            22,
        ),
        (r#"SELECT topic_level(0) FROM "t""#, K::BadArgument, 1, 20),
        (
            r#"SELECT * FROM "t" WHERE topic =~ 'a/#/b'"#,
            K::InvalidFilter,
            1,
            34,
        ),
        (
            "SELECT *\nFROM \"t\"\nWHERE qos = 'x",
            K::Unterminated,
            3,
            13,
        ),
        (r#"SELECT 'héé', nope FROM "t""#, K::UnknownColumn, 1, 15),
        (r#"SELECT clientid ; FROM "t""#, K::UnexpectedChar, 1, 17),
        (r#"SELECT FROM "t""#, K::UnexpectedToken, 1, 8),
        (
            r#"SELECT clientid AS from FROM "t""#,
            K::UnexpectedToken,
            1,
            20,
        ),
        (
            r#"SELECT 99999999999999999999 FROM "t""#,
            K::InvalidNumber,
            1,
            8,
        ),
        (r#"SELECT 12abc FROM "t""#, K::InvalidNumber, 1, 8),
        (r#"SELECT CASE END FROM "t""#, K::UnexpectedToken, 1, 13),
        (
            r#"SELECT CASE qos THEN 1 END FROM "t""#,
            K::UnexpectedToken,
            1,
            17,
        ),
        (
            r#"SELECT payload. , qos FROM "t""#,
            K::UnexpectedToken,
            1,
            17,
        ),
        (r#"SELECT payload[x] FROM "t""#, K::UnexpectedToken, 1, 16),
        (r#"SELECT (qos FROM "t""#, K::UnexpectedToken, 1, 13),
        (
            r#"SELECT * FROM "t" WHERE qos IS 1"#,
            K::UnexpectedToken,
            1,
            32,
        ),
        (r#"UPDATE t SET x = 1"#, K::UnexpectedToken, 1, 1),
        ("", K::UnexpectedToken, 1, 1),
    ];
    for &(sql, kind, line, column) in cases {
        let err = Rule::parse(sql).expect_err(sql);
        assert_eq!(
            (err.kind, err.line, err.column),
            (kind, line, column),
            "{sql}: {err}"
        );
    }
}

#[test]
fn error_offsets_are_bytes_and_display_has_position() {
    let err = Rule::parse(r#"SELECT 'héé', nope FROM "t""#).expect_err("unknown column");
    assert_eq!((err.column, err.offset), (15, 16));
    assert!(err.to_string().starts_with("line 1, column 15: "), "{err}");
}

#[test]
fn nesting_is_limited_without_overflowing_the_stack() {
    let nested = |open: &str, close: &str, n: usize| {
        format!(
            r#"SELECT {}qos{} FROM "t""#,
            open.repeat(n),
            close.repeat(n)
        )
    };
    let too_deep = [
        nested("(", ")", 64),
        nested("(", ")", 10_000),
        nested("-", "", 5000),
        nested("abs(", ")", 200),
        format!(r#"SELECT * FROM "t" WHERE {}qos = 1"#, "NOT ".repeat(5000)),
        nested("CASE WHEN true THEN ", " END", 100),
        format!(r#"SELECT payload{} FROM "t""#, ".a".repeat(65)),
        format!(r#"SELECT qos AS a{} FROM "t""#, ".a".repeat(64)),
    ];
    for sql in &too_deep {
        let err = Rule::parse(sql).expect_err("too deep");
        assert_eq!(err.kind, K::TooDeep, "{err}");
    }
    let fine = [
        nested("(", ")", 60),
        nested("abs(", ")", 60),
        format!(r#"SELECT payload{} FROM "t""#, ".a".repeat(64)),
        // Chains are flat, however long.
        format!(
            r#"SELECT * FROM "t" WHERE {} qos = 9"#,
            "qos = 1 OR ".repeat(2000)
        ),
        format!(r#"SELECT 0{} AS n FROM "t""#, " + 1".repeat(5000)),
    ];
    for sql in &fine {
        Rule::parse(sql).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn sql_length_is_limited() {
    let sql = format!(
        r#"SELECT * FROM "t" WHERE clientid = '{}'"#,
        "x".repeat(70_000)
    );
    assert_eq!(Rule::parse(&sql).expect_err("too long").kind, K::TooLong);
}

#[test]
fn rules_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Rule>();
}

#[test]
fn matches_topic_follows_mqtt_rules() {
    let rule = Rule::parse(r#"SELECT * FROM "sensors/+/data", '#'"#).expect("valid");
    assert!(rule.matches_topic("sensors/1/data"));
    assert!(rule.matches_topic("anything/else"));
    assert!(!rule.matches_topic("$SYS/broker/load"));
    let sys = Rule::parse(r#"SELECT * FROM "$SYS/#""#).expect("valid");
    assert!(sys.matches_topic("$SYS/broker/load"));
    assert!(!sys.matches_topic("a/b"));
}
