//! The HTTP/1.1 server side, sans-IO: bytes in, responses out.

pub mod chunked;
pub mod conn;
pub mod refusal;
pub mod response;

pub use conn::{BufferPool, Conn, Exchange, Handler, Io, Limits, MIN_READ, Method, Reply};
pub use refusal::Refusal;
pub use response::Response;
