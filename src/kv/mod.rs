//! KV cache. (in progress)
