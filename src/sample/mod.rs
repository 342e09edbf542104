//! Sampling. (in progress)
