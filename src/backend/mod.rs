//! Backends. (in progress)
pub mod cpu;
