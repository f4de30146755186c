//! webhook-forwarder: receive webhook records over HTTP, queue them in a bounded ring,
//! and forward them in batches.
//!
//! A record flows one way: socket (`server`) → HTTP machine (`http`) → `service` →
//! `pipeline` → `worker` → endpoint. The crate is a library so that the integration
//! tests, the fuzz targets and the bundled `webhook-sink` share the exact code the
//! service runs.

pub mod auth;
pub mod clock;
pub mod config;
pub mod deadletter;
pub mod duration;
pub mod gzip;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod os;
pub mod pipeline;
pub mod probe;
pub mod process;
pub mod record;
pub mod ring;
pub mod server;
pub mod service;
pub mod text;
pub mod worker;

/// Test and fuzzing support: fuzz target bodies and a strict response reader. Only in
/// builds that ask for it (the fuzz crate and this crate's own tests).
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
