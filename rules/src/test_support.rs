//! Owned test messages and helpers shared by the table-driven tests.

use crate::{EvalError, Message, Rule};

/// The owned data behind a [`Message`], with defaults every table shares.
pub(crate) struct TestMsg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub username: Option<String>,
    pub peerhost: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub retain: bool,
    pub protocol: &'static str,
}

impl TestMsg {
    pub fn new(topic: &str, payload: impl AsRef<[u8]>) -> Self {
        Self {
            topic: topic.to_owned(),
            payload: payload.as_ref().to_vec(),
            username: Some("u1".to_owned()),
            peerhost: Some("10.0.0.1".to_owned()),
            user_properties: vec![("k".to_owned(), "v".to_owned())],
            retain: false,
            protocol: "mqtt",
        }
    }

    pub fn msg(&self) -> Message<'_> {
        Message {
            id: "m1",
            topic: &self.topic,
            payload: &self.payload,
            clientid: "c1",
            username: self.username.as_deref(),
            qos: 1,
            retain: self.retain,
            timestamp_ms: 1_700_000_000_000,
            user_properties: &self.user_properties,
            peerhost: self.peerhost.as_deref(),
            protocol: self.protocol,
            node: "hub-0",
        }
    }
}

/// What a table row expects from evaluating a rule.
#[derive(Debug)]
pub(crate) enum Want {
    /// The output row, as compact JSON.
    Row(&'static str),
    /// `WHERE` rejected the message.
    NoRow,
    /// An error of this kind (the variant name of [`EvalError`]).
    Err(&'static str),
}

pub(crate) fn error_kind(e: &EvalError) -> &'static str {
    match e {
        EvalError::OperandTypes { .. } => "OperandTypes",
        EvalError::OperandType { .. } => "OperandType",
        EvalError::DivisionByZero { .. } => "DivisionByZero",
        EvalError::Overflow { .. } => "Overflow",
        EvalError::BadArgument { .. } => "BadArgument",
    }
}

/// Parses and evaluates `sql` on `m`, then checks the outcome against `want`.
#[track_caller]
pub(crate) fn check(sql: &str, m: &TestMsg, want: &Want) {
    let rule = Rule::parse(sql).unwrap_or_else(|e| panic!("{sql}: parse failed: {e}"));
    let got = rule.evaluate(&m.msg());
    match (want, got) {
        (Want::Row(json), Ok(Some(row))) => {
            let got = String::from_utf8(row.to_json()).expect("row JSON is UTF-8");
            assert_eq!(got, *json, "{sql}");
        }
        (Want::NoRow, Ok(None)) => {}
        (Want::Err(kind), Err(e)) => assert_eq!(error_kind(&e), *kind, "{sql}: {e}"),
        (want, got) => panic!("{sql}: wanted {want:?}, got {got:?}"),
    }
}
