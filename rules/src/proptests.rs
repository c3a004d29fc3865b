//! Property tests: the parser survives any input, and `SELECT *` passes the message
//! through.

use proptest::prelude::*;

use crate::test_support::TestMsg;
use crate::{Rule, Value};

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
