//! Test support compiled only for tests and fuzzing (feature `testing`): the fuzz
//! target bodies and a strict reader of our own responses. The shipped binaries never
//! contain it.

pub mod check;
pub mod fuzz;
