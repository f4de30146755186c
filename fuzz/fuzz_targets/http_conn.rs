#![no_main]

use libfuzzer_sys::fuzz_target;

// The checks live in the library so tests/fuzz_corpus.rs replays them on stable.
fuzz_target!(|data: &[u8]| webhook_forwarder::testing::fuzz::http_conn(data));
