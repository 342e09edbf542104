//! The paged KV cache: storage and block bookkeeping.

pub mod block_hash;
pub mod block_pool;
pub mod cache;
pub mod free_queue;
pub mod kv_cache_manager;

pub use block_hash::{compute_block_hashes, hash_block_tokens, BlockHash, ExtraKeys, HashAlgo};
pub use block_pool::BlockPool;
pub use cache::{KvCache, KvData, KvDtype, KvLayer};
pub use free_queue::FreeKvBlockQueue;
pub use kv_cache_manager::{KvCacheManager, PrefixCacheStats, TailCow};
