//! The Gemma model as a function of traced parameters, HF checkpoint I/O, the train step.
//! Knows nothing of PJRT. (Filled by the Gemma issue; empty until then.)
#![forbid(unsafe_code)]
