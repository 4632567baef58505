//! Benchmarks and peer-comparison harnesses (filled as features land; see BENCHMARKS.md).
#![forbid(unsafe_code)]
