//! MQTT topic names and filters for CMQ.
//!
//! Everything here is pure and allocation-conscious because it sits on the
//! broker's publish path:
//!
//! * [`validate_name`], [`validate_filter`] and [`parse_shared`] check what
//!   clients send before anything else looks at it;
//! * [`matches()`] is the reference MQTT 5 (section 4.7) matcher;
//! * [`SubscriptionTrie`] finds the subscriptions a published topic reaches;
//! * [`TopicTree`] finds the retained messages a new subscription reaches;
//! * [`subject`] maps topics and filters onto NATS subjects.
//!
//! The index types trust their input: validate names and filters first.

mod matching;
#[cfg(test)]
mod proptests;
pub mod subject;
mod tree;
mod trie;
mod validate;

pub use matching::{covers, intersects, matches};
pub use tree::TopicTree;
pub use trie::SubscriptionTrie;
pub use validate::{
    SharedFilter, TopicError, TopicLimits, parse_shared, validate_filter, validate_name,
};
