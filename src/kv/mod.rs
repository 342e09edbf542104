//! The paged KV cache: storage and block bookkeeping.

pub mod block_pool;
pub mod cache;

pub use block_pool::BlockPool;
pub use cache::{KvCache, KvLayer};
