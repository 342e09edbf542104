//! Reader for `.safetensors` files: the file is memory-mapped and every tensor becomes a
//! zero-copy `Weight` into the map.
//!
//! Layout: 8 bytes little-endian header length `n`, `n` bytes of JSON header, then the data.
//! The header length is checked against the file size before anything is parsed or
//! allocated; the `safetensors` crate parses and validates the header (offsets contiguous,
//! sizes matching dtype x shape, data covering the rest of the file), and `Weight::new`
//! checks every range once more.

use crate::error::{Error, Result};
use crate::model::TensorStore;
use crate::tensor::{DType, Storage, Weight};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// Largest header accepted (the `safetensors` crate's own limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Memory-maps one `.safetensors` file and inserts all its tensors into `store`.
///
/// F32, F16 and BF16 tensors are supported; any other dtype is an `InvalidModel` error
/// naming the tensor. A tensor name already present in `store` (e.g. the same tensor in
/// two shards) is an error too.
pub fn load_file(path: &Path, store: &mut TensorStore) -> Result<()> {
    let bad = |reason: String| Error::invalid_model(path, reason);
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len < 8 {
        return Err(bad(format!(
            "safetensors file is {file_len} bytes, shorter than its 8-byte header length"
        )));
    }
    // SAFETY: the file is mapped read-only; as with every memory-mapped model loader, the
    // file must not be truncated or modified while the model is in use.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let bytes: &[u8] = &mmap;
    if (bytes.len() as u64) < 8 {
        return Err(bad("safetensors file shrank while being opened".into()));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(bad(format!(
            "safetensors header length {header_len} is larger than the limit of {MAX_HEADER_LEN} bytes"
        )));
    }
    let available = bytes.len() as u64 - 8;
    if header_len > available {
        return Err(bad(format!(
            "safetensors header length {header_len} is larger than the rest of the file ({available} bytes): truncated or not a safetensors file"
        )));
    }
    if header_len < 2 {
        return Err(bad(format!(
            "safetensors header length {header_len} is too small for a JSON header"
        )));
    }

    let (n, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("bad safetensors header: {e}")))?;
    let data_start = 8usize
        .checked_add(n)
        .ok_or_else(|| bad("safetensors header length overflows".into()))?;

    let storage: Arc<dyn Storage> = Arc::new(mmap);
    // Names in offset order, so that errors are deterministic.
    for name in metadata.offset_keys() {
        let info = metadata
            .info(&name)
            .ok_or_else(|| bad(format!("tensor `{name}` vanished from the header")))?;
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has dtype {other:?}, which is not supported (F32, F16, BF16)"
                )))
            }
        };
        let (start, end) = info.data_offsets;
        if end < start {
            return Err(bad(format!(
                "tensor `{name}` has data offsets [{start}, {end}] that run backwards"
            )));
        }
        let offset = data_start
            .checked_add(start)
            .ok_or_else(|| bad(format!("tensor `{name}`: data offset overflows")))?;
        let weight = Weight::new(
            dtype,
            info.shape.clone(),
            storage.clone(),
            offset,
            end - start,
        )
        .map_err(|reason| bad(format!("tensor `{name}`: {reason}")))?;
        if store.get(&name).is_some() {
            return Err(bad(format!(
                "tensor `{name}` appears more than once (already loaded from another file)"
            )));
        }
        store.insert(name, weight);
    }
    Ok(())
}
