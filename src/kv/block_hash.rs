//! Block hashes for automatic prefix caching (vLLM's `hash_block_tokens`).
//!
//! A full block's hash is `H(parent_hash, token_ids of the block, extra_keys)`, so a hash
//! names the whole prefix up to and including the block, not just the block's tokens.
//! `H` is SHA-256 by default (a collision would let one tenant's cached context answer
//! another's prompt) or xxh3-128 when speed matters more.
//!
//! # Byte encoding (version 1)
//!
//! The hash input of one block is the concatenation of:
//!
//! 1. the 8-byte tag `b"llmrtkv1"` (encoding version);
//! 2. the parent: one byte `0x01` followed by the parent block's 32 hash bytes, or, for the
//!    first block of a sequence, the fixed seed: one byte `0x00` followed by 32 zero bytes;
//! 3. the number of tokens in the block as a little-endian `u64`, then every token id as a
//!    little-endian `u32`;
//! 4. the extra keys, each as a one-byte tag and a payload, in this order:
//!    - `0x01` + LoRA adapter id as little-endian `u64` (when `lora_id` is set);
//!    - `0x02` + length as little-endian `u64` + UTF-8 bytes, once per multimodal hash, in order;
//!    - `0x03` + length as little-endian `u64` + UTF-8 bytes of the cache salt (when set).
//!
//! Every variable-length part is length-prefixed or tagged and the input ends after the
//! last field, so distinct inputs give distinct byte strings. SHA-256 fills all 32 bytes of
//! [`BlockHash`]; xxh3-128 fills the first 16 (little-endian) and leaves the rest zero.
//!
//! # Which extra keys go into which block
//!
//! [`hash_block_tokens`] hashes exactly the keys it is given. [`compute_block_hashes`], which
//! hashes a whole request, applies `lora_id` to every block (as vLLM does), and `cache_salt`
//! and `mm_hashes` to the first block only: every later hash chains on the first, so keying
//! the first block isolates the whole chain. For multimodal inputs this is conservative
//! (a text prefix before an image is not shared between requests with different images);
//! per-block placement by placeholder ranges can refine it later.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

/// The hash of a full block and, through its parent, of the whole prefix ending with it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// The hash function behind block hashes (vLLM's `prefix_caching_hash_algo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// SHA-256: collision resistant; the default.
    #[default]
    Sha256,
    /// xxh3-128: much faster, not collision resistant against an adversary.
    Xxh3_128,
}

impl HashAlgo {
    /// The configuration name: `"sha256"` or `"xxhash"`.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Xxh3_128 => "xxhash",
        }
    }
}

impl FromStr for HashAlgo {
    type Err = String;

    /// Accepts `sha256`, and `xxhash`, `xxh3` or `xxh3_128`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sha256" => Ok(HashAlgo::Sha256),
            "xxhash" | "xxh3" | "xxh3_128" => Ok(HashAlgo::Xxh3_128),
            other => Err(format!(
                "unknown prefix caching hash algorithm {other:?} (expected \"sha256\" or \"xxhash\")"
            )),
        }
    }
}

/// What besides the tokens decides a block's content: LoRA adapter, multimodal inputs and
/// the request's cache salt (tenant isolation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExtraKeys {
    pub lora_id: Option<u64>,
    pub cache_salt: Option<String>,
    pub mm_hashes: Vec<String>,
}

const TAG: &[u8; 8] = b"llmrtkv1";
const KEY_LORA: u8 = 0x01;
const KEY_MM: u8 = 0x02;
const KEY_SALT: u8 = 0x03;

enum Hasher {
    Sha256(Sha256),
    Xxh3(Box<Xxh3>),
}

impl Hasher {
    fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlgo::Xxh3_128 => Hasher::Xxh3(Box::new(Xxh3::new())),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Xxh3(h) => h.update(bytes),
        }
    }

    fn finish(self) -> BlockHash {
        let mut out = [0u8; 32];
        match self {
            Hasher::Sha256(h) => out.copy_from_slice(&h.finalize()),
            Hasher::Xxh3(h) => out[..16].copy_from_slice(&h.digest128().to_le_bytes()),
        }
        BlockHash(out)
    }
}

fn hash_parts(
    algo: HashAlgo,
    parent: Option<BlockHash>,
    token_ids: &[u32],
    lora_id: Option<u64>,
    mm_hashes: &[String],
    cache_salt: Option<&str>,
) -> BlockHash {
    let mut h = Hasher::new(algo);
    h.update(TAG);
    match parent {
        Some(p) => {
            h.update(&[1]);
            h.update(&p.0);
        }
        None => {
            h.update(&[0]);
            h.update(&[0u8; 32]);
        }
    }
    h.update(&(token_ids.len() as u64).to_le_bytes());
    // Tokens in chunks through a stack buffer: one update per 64 tokens, no allocation.
    let mut buf = [0u8; 256];
    for chunk in token_ids.chunks(64) {
        for (dst, t) in buf.chunks_exact_mut(4).zip(chunk) {
            dst.copy_from_slice(&t.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 4]);
    }
    if let Some(id) = lora_id {
        h.update(&[KEY_LORA]);
        h.update(&id.to_le_bytes());
    }
    for mm in mm_hashes {
        h.update(&[KEY_MM]);
        h.update(&(mm.len() as u64).to_le_bytes());
        h.update(mm.as_bytes());
    }
    if let Some(salt) = cache_salt {
        h.update(&[KEY_SALT]);
        h.update(&(salt.len() as u64).to_le_bytes());
        h.update(salt.as_bytes());
    }
    h.finish()
}

/// The hash of one block: `H(parent or seed, token_ids, extra_keys)` in the encoding of the
/// module documentation. All of `extra_keys` is hashed; see [`compute_block_hashes`] for the
/// per-block choice of keys.
pub fn hash_block_tokens(
    algo: HashAlgo,
    parent: Option<BlockHash>,
    token_ids: &[u32],
    extra_keys: &ExtraKeys,
) -> BlockHash {
    hash_parts(
        algo,
        parent,
        token_ids,
        extra_keys.lora_id,
        &extra_keys.mm_hashes,
        extra_keys.cache_salt.as_deref(),
    )
}

/// Appends to `existing` the hashes of the full blocks of `tokens` it does not cover yet.
///
/// `existing` holds the hashes of the first `existing.len()` blocks of `tokens` (from an
/// earlier call, as the request grew); a trailing partial block is not hashed. Block 0 gets
/// `lora_id`, `mm_hashes` and `cache_salt`; later blocks get `lora_id` and chain on their
/// parent.
pub fn compute_block_hashes(
    algo: HashAlgo,
    tokens: &[u32],
    block_size: usize,
    extra_keys: &ExtraKeys,
    existing: &mut Vec<BlockHash>,
) {
    assert!(block_size > 0, "block_size must be positive");
    let num_full = tokens.len() / block_size;
    for i in existing.len()..num_full {
        let block = &tokens[i * block_size..(i + 1) * block_size];
        let parent = existing.last().copied();
        let h = if i == 0 {
            hash_block_tokens(algo, parent, block, extra_keys)
        } else {
            hash_parts(algo, parent, block, extra_keys.lora_id, &[], None)
        };
        existing.push(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALGOS: [HashAlgo; 2] = [HashAlgo::Sha256, HashAlgo::Xxh3_128];

    #[test]
    fn deterministic_and_token_sensitive() {
        for algo in ALGOS {
            let k = ExtraKeys::default();
            let a = hash_block_tokens(algo, None, &[1, 2, 3, 4], &k);
            assert_eq!(a, hash_block_tokens(algo, None, &[1, 2, 3, 4], &k));
            assert_ne!(a, hash_block_tokens(algo, None, &[1, 2, 3, 5], &k));
            assert_ne!(a, hash_block_tokens(algo, None, &[2, 1, 3, 4], &k));
            assert_ne!(a, hash_block_tokens(algo, None, &[1, 2, 3], &k));
            assert_ne!(a, hash_block_tokens(algo, None, &[], &k));
        }
    }

    #[test]
    fn sha256_known_answer() {
        // SHA-256 of the documented encoding, computed independently here.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"llmrtkv1");
        bytes.push(0);
        bytes.extend_from_slice(&[0u8; 32]);
        bytes.extend_from_slice(&2u64.to_le_bytes());
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        bytes.push(0x01);
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.push(0x03);
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        let want: [u8; 32] = Sha256::digest(&bytes).into();
        let keys = ExtraKeys {
            lora_id: Some(5),
            cache_salt: Some("abc".into()),
            mm_hashes: vec![],
        };
        let got = hash_block_tokens(HashAlgo::Sha256, None, &[7, 0x0102_0304], &keys);
        assert_eq!(got.0, want);

        let x = hash_block_tokens(HashAlgo::Xxh3_128, None, &[7, 0x0102_0304], &keys);
        let want_x = xxhash_rust::xxh3::xxh3_128(&bytes).to_le_bytes();
        assert_eq!(&x.0[..16], &want_x);
        assert_eq!(&x.0[16..], &[0u8; 16]);
    }

    #[test]
    fn long_blocks_hash_all_tokens() {
        // More than one 64-token chunk of the internal buffer.
        for algo in ALGOS {
            let k = ExtraKeys::default();
            let a: Vec<u32> = (0..200).collect();
            let mut b = a.clone();
            b[150] = 9999;
            assert_ne!(
                hash_block_tokens(algo, None, &a, &k),
                hash_block_tokens(algo, None, &b, &k)
            );
        }
    }

    #[test]
    fn algorithms_differ() {
        let k = ExtraKeys::default();
        assert_ne!(
            hash_block_tokens(HashAlgo::Sha256, None, &[1, 2], &k),
            hash_block_tokens(HashAlgo::Xxh3_128, None, &[1, 2], &k)
        );
    }

    #[test]
    fn parent_salt_lora_mm_change_the_hash() {
        for algo in ALGOS {
            let toks = [10, 11, 12, 13];
            let none = ExtraKeys::default();
            let base = hash_block_tokens(algo, None, &toks, &none);
            let p1 = hash_block_tokens(algo, None, &[1, 1, 1, 1], &none);
            let p2 = hash_block_tokens(algo, None, &[2, 2, 2, 2], &none);
            let with_p1 = hash_block_tokens(algo, Some(p1), &toks, &none);
            let with_p2 = hash_block_tokens(algo, Some(p2), &toks, &none);
            assert_ne!(base, with_p1);
            assert_ne!(with_p1, with_p2);
            // The seed (no parent) is not the same as a zero parent hash.
            assert_ne!(
                base,
                hash_block_tokens(algo, Some(BlockHash([0; 32])), &toks, &none)
            );

            let salted = |s: &str| ExtraKeys {
                cache_salt: Some(s.into()),
                ..Default::default()
            };
            let s_a = hash_block_tokens(algo, None, &toks, &salted("a"));
            let s_b = hash_block_tokens(algo, None, &toks, &salted("b"));
            assert_ne!(base, s_a);
            assert_ne!(s_a, s_b);
            assert_ne!(base, hash_block_tokens(algo, None, &toks, &salted("")));

            let lora = |id| ExtraKeys {
                lora_id: Some(id),
                ..Default::default()
            };
            let l1 = hash_block_tokens(algo, None, &toks, &lora(1));
            assert_ne!(base, l1);
            assert_ne!(l1, hash_block_tokens(algo, None, &toks, &lora(2)));

            let mm = |v: &[&str]| ExtraKeys {
                mm_hashes: v.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            let m_ab = hash_block_tokens(algo, None, &toks, &mm(&["a", "b"]));
            assert_ne!(base, m_ab);
            assert_ne!(m_ab, hash_block_tokens(algo, None, &toks, &mm(&["ab"])));
            assert_ne!(m_ab, hash_block_tokens(algo, None, &toks, &mm(&["b", "a"])));
            // A salt is not confused with an mm hash of the same text.
            assert_ne!(hash_block_tokens(algo, None, &toks, &mm(&["a"])), s_a);
        }
    }

    #[test]
    fn compute_is_incremental_and_chained() {
        for algo in ALGOS {
            let k = ExtraKeys::default();
            let toks: Vec<u32> = (0..11).collect();
            let mut hs = Vec::new();
            compute_block_hashes(algo, &toks[..3], 4, &k, &mut hs);
            assert!(hs.is_empty());
            compute_block_hashes(algo, &toks[..6], 4, &k, &mut hs);
            assert_eq!(hs.len(), 1);
            compute_block_hashes(algo, &toks, 4, &k, &mut hs);
            assert_eq!(hs.len(), 2);

            let mut all = Vec::new();
            compute_block_hashes(algo, &toks, 4, &k, &mut all);
            assert_eq!(hs, all);
            assert_eq!(hs[0], hash_block_tokens(algo, None, &[0, 1, 2, 3], &k));
            assert_eq!(
                hs[1],
                hash_block_tokens(algo, Some(hs[0]), &[4, 5, 6, 7], &k)
            );
            // Growing again adds only the new full block, keeping the old ones.
            let more: Vec<u32> = (0..12).collect();
            compute_block_hashes(algo, &more, 4, &k, &mut hs);
            assert_eq!(hs.len(), 3);
            assert_eq!(&hs[..2], &all[..]);
        }
    }

    #[test]
    fn salt_keys_first_block_and_isolates_the_chain() {
        let algo = HashAlgo::Sha256;
        let toks: Vec<u32> = (0..8).collect();
        let salted = ExtraKeys {
            cache_salt: Some("tenant-a".into()),
            lora_id: Some(3),
            ..Default::default()
        };
        let mut hs = Vec::new();
        compute_block_hashes(algo, &toks, 4, &salted, &mut hs);
        assert_eq!(hs[0], hash_block_tokens(algo, None, &toks[..4], &salted));
        let lora_only = ExtraKeys {
            lora_id: Some(3),
            ..Default::default()
        };
        assert_eq!(
            hs[1],
            hash_block_tokens(algo, Some(hs[0]), &toks[4..], &lora_only)
        );
        let mut plain = Vec::new();
        compute_block_hashes(algo, &toks, 4, &ExtraKeys::default(), &mut plain);
        assert_ne!(hs[0], plain[0]);
        assert_ne!(hs[1], plain[1]);
    }

    #[test]
    fn algo_names() {
        assert_eq!("sha256".parse::<HashAlgo>(), Ok(HashAlgo::Sha256));
        assert_eq!("xxhash".parse::<HashAlgo>(), Ok(HashAlgo::Xxh3_128));
        assert!("md5".parse::<HashAlgo>().is_err());
        assert_eq!(HashAlgo::default(), HashAlgo::Sha256);
        assert_eq!(HashAlgo::Xxh3_128.name(), "xxhash");
    }
}
