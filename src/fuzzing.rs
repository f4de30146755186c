//! Fuzz target bodies, shared by `fuzz/` (cargo fuzz, nightly) and `tests/fuzz_corpus.rs`
//! (the committed corpus replayed on stable), so a fixed crash stays fixed.
