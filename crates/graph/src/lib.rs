//! Tracing Rust tensor code into a graph, reverse-mode autodiff, and lowering to StableHLO
//! text. Knows nothing of PJRT. (Filled by the graph issue; empty until then.)
#![forbid(unsafe_code)]
