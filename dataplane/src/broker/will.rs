//! Will messages: kept from CONNECT, published when a connection ends without a clean
//! DISCONNECT, after the will delay (or when the session ends, if sooner).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqttbytes::QoS;
use mqttbytes::v5::{LastWill, PublishProperties};

use super::message::Message;

/// A will as received in CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will delay interval in seconds.
    pub delay: u32,
    pub expiry_interval: Option<u32>,
    pub properties: Option<Box<PublishProperties>>,
}

impl Will {
    /// The will of a CONNECT packet.
    pub fn from_connect(will: LastWill) -> Self {
        let props = will.properties;
        let delay = props.as_ref().and_then(|p| p.delay_interval).unwrap_or(0);
        let expiry_interval = props.as_ref().and_then(|p| p.message_expiry_interval);
        let properties = props.map(|p| {
            Box::new(PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
                subscription_identifiers: Vec::new(),
                content_type: p.content_type,
            })
        });
        Self {
            topic: Arc::from(will.topic),
            payload: will.message,
            qos: will.qos,
            retain: will.retain,
            delay,
            expiry_interval,
            properties,
        }
    }

    /// The message to publish now.
    pub fn into_message(self) -> Arc<Message> {
        let now = Instant::now();
        Arc::new(Message {
            topic: self.topic,
            payload: self.payload,
            qos: self.qos,
            retain: self.retain,
            properties: self.properties,
            expires_at: Message::expiry_from(self.expiry_interval, now),
            origin: None,
            stored: None,
            rule: None,
        })
    }
}
