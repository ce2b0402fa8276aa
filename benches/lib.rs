//! Criterion benches live in benches/*.rs; this library is empty.
