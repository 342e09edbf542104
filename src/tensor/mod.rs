//! Weights as stored: a dtype, a shape and bytes that usually live in a memory map.
//!
//! Dense and quantized tensors keep their stored type; kernels read them row by row.
//! A row is the last dimension (HF layout: `[out_features, in_features]` for a linear),
//! and for quantized types a row is a whole number of blocks.

pub mod quant;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// Storage element types of weights. The names are GGML's for the block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl DType {
    /// Number of values in one block (1 for the dense types).
    pub const fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => 32,
            DType::Q4K | DType::Q5K | DType::Q6K => 256,
        }
    }

    /// Bytes of one block.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q8_0 => 34,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
        }
    }

    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes needed for `n` values, or None if `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q8_0 => "Q8_0",
            DType::Q4K => "Q4_K",
            DType::Q5K => "Q5_K",
            DType::Q6K => "Q6_K",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that owns bytes a `Weight` points into: a memory map or an owned buffer.
pub trait Storage: Send + Sync {
    fn bytes(&self) -> &[u8];

    /// Gives the memory of `bytes()[offset..offset + len]` back to the system where that
    /// loses nothing (a read-only file map: the pages fault back in if read again).
    /// Returns whether it did.
    fn release(&self, _offset: usize, _len: usize) -> bool {
        false
    }
}

impl Storage for memmap2::Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn release(&self, offset: usize, len: usize) -> bool {
        // Whole pages inside the range only: a neighbouring tensor keeps its pages.
        let page = 4096;
        let base = self.as_ptr() as usize;
        let start = (base + offset).next_multiple_of(page);
        let end = (base + offset + len) / page * page;
        if end > start {
            // SAFETY: the range lies inside this private read-only map; MADV_DONTNEED only
            // drops resident pages, which are re-read from the file on the next access.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
        true
    }
}

/// An owned, 8-byte aligned buffer (for tensors that had to be copied or built).
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` spans at least `bytes.len()` bytes and u64 has no invalid bit patterns.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, bytes.len()) };
        dst.copy_from_slice(bytes);
        AlignedBytes {
            words,
            len: bytes.len(),
        }
    }

    pub fn from_f32(values: &[f32]) -> Self {
        // SAFETY: f32 has no padding; reading it as bytes is sound.
        let bytes =
            unsafe { std::slice::from_raw_parts(values.as_ptr() as *const u8, values.len() * 4) };
        Self::from_slice(bytes)
    }
}

impl Storage for AlignedBytes {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the buffer holds `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }
}

/// A tensor in its stored type. Cloning is cheap (the bytes are shared).
#[derive(Clone)]
pub struct Weight {
    pub dtype: DType,
    pub shape: Vec<usize>,
    storage: Arc<dyn Storage>,
    offset: usize,
    len: usize,
    /// A backend's copy of the rows in its own layout, made once at load.
    packed: Option<Arc<dyn Any + Send + Sync>>,
    /// The stored rows were freed after packing (`set_packed`).
    rows_freed: bool,
}

impl fmt::Debug for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Weight({}, {:?})", self.dtype, self.shape)
    }
}

impl Weight {
    /// A view of `storage[offset..offset + len]`. Checks that the range lies inside the
    /// storage and that `len` is exactly the size of `shape` in `dtype`; returns a
    /// description of the problem otherwise. Dense tensors whose bytes are not aligned
    /// for their element type are copied into an aligned buffer.
    pub fn new(
        dtype: DType,
        shape: Vec<usize>,
        storage: Arc<dyn Storage>,
        offset: usize,
        len: usize,
    ) -> std::result::Result<Self, String> {
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("shape {shape:?} overflows"))?;
        let row = *shape.last().unwrap_or(&1);
        if !row.is_multiple_of(dtype.block_len()) {
            return Err(format!(
                "row length {row} is not a multiple of the {dtype} block size {}",
                dtype.block_len()
            ));
        }
        let expected = dtype
            .bytes_for(numel)
            .ok_or_else(|| format!("shape {shape:?} in {dtype} overflows"))?;
        if expected != len {
            return Err(format!(
                "shape {shape:?} in {dtype} needs {expected} bytes, found {len}"
            ));
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| "tensor range overflows".to_string())?;
        if end > storage.bytes().len() {
            return Err(format!(
                "tensor bytes {offset}..{end} lie past the end of the data ({} bytes)",
                storage.bytes().len()
            ));
        }
        let align = match dtype {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            _ => 1,
        };
        let ptr = storage.bytes()[offset..].as_ptr() as usize;
        if !ptr.is_multiple_of(align) {
            let copy = AlignedBytes::from_slice(&storage.bytes()[offset..end]);
            return Ok(Weight {
                dtype,
                shape,
                storage: Arc::new(copy),
                offset: 0,
                len,
                packed: None,
                rows_freed: false,
            });
        }
        Ok(Weight {
            dtype,
            shape,
            storage,
            offset,
            len,
            packed: None,
            rows_freed: false,
        })
    }

    /// An owned f32 tensor (tests, and tensors built at load time).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        let len = values.len() * 4;
        Weight::new(
            DType::F32,
            shape,
            Arc::new(AlignedBytes::from_f32(values)),
            0,
            len,
        )
        .expect("from_f32: shape does not match the number of values")
    }

    /// The backend's copy of the rows set by `set_packed`, if it is a `T`.
    pub fn packed<T: Any>(&self) -> Option<&T> {
        self.packed.as_deref()?.downcast_ref()
    }

    /// The backend's copy set by `set_packed`, shared.
    pub fn packed_arc(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.packed.clone()
    }

    /// Whether both views are the same bytes (tied embeddings).
    pub fn shares_bytes(&self, other: &Weight) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
            && self.offset == other.offset
            && self.len == other.len
    }

    /// Attaches a backend's copy of the rows, which the backend then reads instead of
    /// `bytes()`, and gives the stored rows' memory back: a file map's pages are released
    /// (they fault back in if read); an owned copy that nothing else shares (rows gathered
    /// at load) is freed, after which `bytes()` must not be called.
    pub fn set_packed(&mut self, packed: Arc<dyn Any + Send + Sync>) {
        self.packed = Some(packed);
        if !self.storage.release(self.offset, self.len) && Arc::strong_count(&self.storage) == 1 {
            self.storage = Arc::new(AlignedBytes::from_slice(&[]));
            self.rows_freed = true;
        }
    }

    pub fn bytes(&self) -> &[u8] {
        assert!(
            !self.rows_freed,
            "the rows of {self:?} were freed after packing"
        );
        &self.storage.bytes()[self.offset..self.offset + self.len]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Length of one row (the last dimension).
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }

    /// Number of rows (product of all but the last dimension).
    pub fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }

    pub fn row_bytes_len(&self) -> usize {
        self.cols() / self.dtype.block_len() * self.dtype.block_bytes()
    }

    /// The stored bytes of row `r`.
    pub fn row_bytes(&self, r: usize) -> &[u8] {
        let n = self.row_bytes_len();
        &self.bytes()[r * n..(r + 1) * n]
    }

    /// A view of rows `start..start + count` as a new weight of shape `[count, cols]`.
    pub fn slice_rows(&self, start: usize, count: usize) -> Weight {
        let n = self.row_bytes_len();
        assert!(start + count <= self.rows(), "slice_rows out of range");
        Weight {
            dtype: self.dtype,
            shape: vec![count, self.cols()],
            storage: self.storage.clone(),
            offset: self.offset + start * n,
            len: count * n,
            packed: None,
            rows_freed: false,
        }
    }

    /// The values as f32 when the tensor is stored as f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        if self.dtype != DType::F32 {
            return None;
        }
        let b = self.bytes();
        // SAFETY: alignment was checked (or fixed by copying) in `new`; length is a multiple of 4.
        Some(unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) })
    }

    /// Row `r` converted to f32 into `out` (len == cols).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        quant::dequantize(self.dtype, self.row_bytes(r), out);
    }

    /// The whole tensor converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        quant::dequantize(self.dtype, self.bytes(), &mut out);
        out
    }

    /// A copy of this tensor with the given row order: output row i is input row `order[i]`.
    /// Used to undo llama.cpp's q/k row permutation; rows are whole blocks, so this is exact.
    pub fn gather_rows(&self, order: &[usize]) -> Weight {
        let n = self.row_bytes_len();
        let src = self.bytes();
        let mut out = Vec::with_capacity(order.len() * n);
        for &r in order {
            out.extend_from_slice(&src[r * n..(r + 1) * n]);
        }
        // The copy replaces these rows: a file map's pages need not stay resident.
        self.storage.release(self.offset, self.len);
        let len = out.len();
        Weight {
            dtype: self.dtype,
            shape: self.shape.clone(),
            storage: Arc::new(AlignedBytes::from_slice(&out)),
            offset: 0,
            len,
            packed: None,
            rows_freed: false,
        }
    }
}
