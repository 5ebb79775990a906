//! The Kafka side of Tributary: which MQTT publishes go to Kafka (routes), what
//! record each becomes, and the producer that reports whether Kafka has it;
//! and the other way, Kafka records consumed to become MQTT messages (`source`).
//!
//! This crate knows nothing of MQTT connections; it never decides when a device is
//! acknowledged, it only reports truthfully what Kafka said.

pub mod avro;
pub mod config;
pub mod context;
pub mod events;
pub mod format;
pub mod health;
pub mod log_throttle;
pub mod problems;
pub mod producer;
pub mod record;
pub mod route;
pub mod source;
pub mod spool;
pub mod template;

pub use config::KafkaConfig;
pub use health::{spawn_metadata_probe, KafkaHealth, NotReady, Unreachable};
pub use problems::{Problem, Problems};
pub use producer::{Delivered, DeliveryError, DeliveryFailure, Pace, PendingDelivery, Producer};
pub use record::{MqttProperties, MqttPublish, Record, RecordError};
pub use route::{
    DeadLetter, FormatName, KeySource, OnFailure, Route, RouteConfig, RouteSpool, RouteTable,
};

#[cfg(feature = "testing")]
pub mod testing;
