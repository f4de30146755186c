//! webhook-forwarder: receive webhook records over HTTP, queue them in a bounded ring,
//! and forward them in batches.
//!
//! The crate is a library so that the integration tests, the fuzz targets and the
//! bundled `webhook-sink` share the exact code the service runs.

pub mod clock;
pub mod config;
pub mod deadletter;
pub mod duration;
pub mod forwarder;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod record;
pub mod ring;
pub mod server;
pub mod service;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod fuzzing;
