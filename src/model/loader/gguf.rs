//! GGUF (v2, v3) reader: metadata, tensor directory, and the mapping of llama.cpp's names
//! and hyper-parameter keys to Hugging Face's (canonical layout, DESIGN.md 2.1).
//!
//! The file is memory-mapped; tensors are `Weight`s pointing into the map (no copy),
//! except the rows of `attn_q`/`attn_k` of the `llama` architecture (incl. Mixtral), which
//! llama.cpp's converter permuted for its interleaved rope and which are gathered back into
//! HF order. Every read is bounded: lengths and counts are checked against the bytes left
//! before anything is allocated, dimension products use checked arithmetic, and a bad file
//! gives `Error::InvalidModel` naming the problem, never a panic.
//!
//! Layout (little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64` metadata
//! count, metadata (`string` key, `u32` value type, value), tensor infos (`string` name,
//! `u32` n_dims, `u64` dims (row length first), `u32` ggml type, `u64` offset), padding to
//! `general.alignment` (default 32), tensor data. Strings are `u64` length + UTF-8 bytes.

use crate::config::{ModelConfig, MoeConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::model::tokenizer_gguf::tokenizer_from_gguf;
use crate::model::{GenerationDefaults, LoadedModel, TensorStore};
use crate::tensor::{AlignedBytes, DType, Storage, Weight};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: usize = 32;
/// GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
const MAX_ARRAY_DEPTH: usize = 8;
const MAX_TENSOR_NAME: usize = 1024;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetaArray),
}

/// A metadata array, stored by element type (so that a large array of numbers costs what
/// it costs on disk). Arrays may nest.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
}

impl MetaValue {
    /// Any integer value that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any number, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v as f64),
            MetaValue::I16(v) => Some(v as f64),
            MetaValue::I32(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of an integer array (any width) as i64; None for other arrays or
    /// u64 values above i64::MAX.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            MetaArray::U8(v) => conv(v, |x| Some(x as i64)),
            MetaArray::I8(v) => conv(v, |x| Some(x as i64)),
            MetaArray::U16(v) => conv(v, |x| Some(x as i64)),
            MetaArray::I16(v) => conv(v, |x| Some(x as i64)),
            MetaArray::U32(v) => conv(v, |x| Some(x as i64)),
            MetaArray::I32(v) => conv(v, |x| Some(x as i64)),
            MetaArray::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            MetaArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            MetaArray::String(v) => Some(v),
            _ => None,
        }
    }
}

/// The key/value metadata of a GGUF file.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    map: BTreeMap<String, MetaValue>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.map.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Option<&MetaArray> {
        self.get(key).and_then(MetaValue::as_array)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds a key (used by tests and tools that build metadata by hand).
    pub fn insert(&mut self, key: impl Into<String>, value: MetaValue) {
        self.map.insert(key.into(), value);
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The name as stored (llama.cpp's, e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as stored: row length (ne[0]) first.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub dtype: DType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub nbytes: usize,
}

impl TensorInfo {
    /// Hugging Face (row-major) shape: the stored dimensions reversed.
    pub fn hf_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: header, metadata, tensor directory and the bytes they point into.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    /// Start of the tensor data section.
    pub data_offset: usize,
    storage: Arc<dyn Storage>,
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 24 {
            return Err(Error::invalid_model(
                path,
                format!("file of {len} bytes is too small to be a GGUF file"),
            ));
        }
        // SAFETY: the map is read-only; as with every mmap-based loader, the file must not
        // be truncated or rewritten while the model is loaded.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    /// Parses GGUF bytes held in memory (copied into an aligned buffer). `path` only names
    /// the source in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<GgufFile> {
        Self::parse(path, Arc::new(AlignedBytes::from_slice(bytes)))
    }

    /// Parses the bytes of `storage`.
    pub fn parse(path: &Path, storage: Arc<dyn Storage>) -> Result<GgufFile> {
        let (version, metadata, tensors, alignment, data_offset) = {
            let mut r = Reader {
                buf: storage.bytes(),
                pos: 0,
                path,
            };
            parse_header(&mut r)?
        };
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            storage,
        })
    }

    /// The tensor as a zero-copy `Weight` in HF shape (dims reversed), under its GGUF name.
    pub fn weight(&self, t: &TensorInfo) -> Result<Weight> {
        Weight::new(
            t.dtype,
            t.hf_shape(),
            self.storage.clone(),
            t.offset,
            t.nbytes,
        )
        .map_err(|e| self.bad(format!("tensor `{}`: {e}", t.name)))
    }

    /// Counts of tensors by stored type.
    pub fn type_counts(&self) -> HashMap<DType, usize> {
        let mut m = HashMap::new();
        for t in &self.tensors {
            *m.entry(t.dtype).or_insert(0) += 1;
        }
        m
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::invalid_model(&self.path, reason)
    }
}

/// Loads a GGUF model file: config, tensors in HF naming and layout, tokenizer, template.
pub fn load(path: &Path) -> Result<LoadedModel> {
    to_loaded(GgufFile::open(path)?)
}

/// `load` for GGUF bytes in memory (tests, fuzzing). `path` only names the source in errors.
pub fn load_from_bytes(path: &Path, bytes: &[u8]) -> Result<LoadedModel> {
    to_loaded(GgufFile::from_bytes(path, bytes)?)
}

// ---------------------------------------------------------------------------------------
// Bounded reading

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

fn value_type_name(t: u32) -> &'static str {
    match t {
        T_U8 => "u8",
        T_I8 => "i8",
        T_U16 => "u16",
        T_I16 => "i16",
        T_U32 => "u32",
        T_I32 => "i32",
        T_F32 => "f32",
        T_BOOL => "bool",
        T_STRING => "string",
        T_ARRAY => "array",
        T_U64 => "u64",
        T_I64 => "i64",
        T_F64 => "f64",
        _ => "unknown",
    }
}

/// The fewest bytes one element of type `t` takes on disk (None: unknown type).
fn min_value_size(t: u32) -> Option<usize> {
    Some(match t {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STRING => 8,
        T_ARRAY => 12,
        _ => return None,
    })
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::invalid_model(self.path, reason)
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err(format!(
                "truncated file: {what} needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.left()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count read from the file, checked to need no more than the bytes left
    /// (`min_size` bytes per element).
    fn count(&mut self, min_size: usize, what: &str, kind: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let need = (n as u128) * (min_size as u128);
        if need > self.left() as u128 {
            return Err(self.err(format!(
                "{what}: {kind} {n} exceeds the {} bytes left in the file",
                self.left()
            )));
        }
        Ok(n as usize)
    }

    fn string_bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.count(1, what, "string length")?;
        self.take(n, what)
    }

    /// A UTF-8 string (keys and names must be valid).
    fn string(&mut self, what: &str) -> Result<String> {
        let b = self.string_bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    /// A string value: invalid UTF-8 is replaced (llama.cpp does not check values).
    fn string_lossy(&mut self, what: &str) -> Result<String> {
        let b = self.string_bytes(what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn value(&mut self, t: u32, depth: usize, what: &str) -> Result<MetaValue> {
        Ok(match t {
            T_U8 => MetaValue::U8(self.array::<1>(what)?[0]),
            T_I8 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            T_U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            T_I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            T_U32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            T_I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            T_U64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            T_I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            T_F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            T_F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            T_BOOL => MetaValue::Bool(self.bool(what)?),
            T_STRING => MetaValue::String(self.string_lossy(what)?),
            T_ARRAY => MetaValue::Array(self.meta_array(depth, what)?),
            other => return Err(self.err(format!("{what}: unknown metadata value type {other}"))),
        })
    }

    fn bool(&mut self, what: &str) -> Result<bool> {
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("{what}: bool byte {b} is neither 0 nor 1"))),
        }
    }

    fn meta_array(&mut self, depth: usize, what: &str) -> Result<MetaArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!(
                "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
            )));
        }
        let t = self.u32(what)?;
        let min = min_value_size(t)
            .ok_or_else(|| self.err(format!("{what}: array of unknown metadata value type {t}")))?;
        let kind = format!("array count (of {})", value_type_name(t));
        let n = self.count(min, what, &kind)?;
        fn fixed<const N: usize, T>(
            r: &mut Reader,
            n: usize,
            what: &str,
            f: impl Fn([u8; N]) -> T,
        ) -> Result<Vec<T>> {
            let b = r.take(n * N, what)?;
            Ok(b.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect())
        }
        Ok(match t {
            T_U8 => MetaArray::U8(self.take(n, what)?.to_vec()),
            T_I8 => MetaArray::I8(fixed(self, n, what, |a: [u8; 1]| a[0] as i8)?),
            T_U16 => MetaArray::U16(fixed(self, n, what, u16::from_le_bytes)?),
            T_I16 => MetaArray::I16(fixed(self, n, what, i16::from_le_bytes)?),
            T_U32 => MetaArray::U32(fixed(self, n, what, u32::from_le_bytes)?),
            T_I32 => MetaArray::I32(fixed(self, n, what, i32::from_le_bytes)?),
            T_U64 => MetaArray::U64(fixed(self, n, what, u64::from_le_bytes)?),
            T_I64 => MetaArray::I64(fixed(self, n, what, i64::from_le_bytes)?),
            T_F32 => MetaArray::F32(fixed(self, n, what, f32::from_le_bytes)?),
            T_F64 => MetaArray::F64(fixed(self, n, what, f64::from_le_bytes)?),
            T_BOOL => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.bool(what)?);
                }
                MetaArray::Bool(v)
            }
            T_STRING => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string_lossy(what)?);
                }
                MetaArray::String(v)
            }
            T_ARRAY => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.meta_array(depth + 1, what)?);
                }
                MetaArray::Array(v)
            }
            _ => unreachable!("checked by min_value_size"),
        })
    }
}

/// GGML type id -> stored type, or an error naming the id.
fn ggml_type(id: u32, tensor: &str, r: &Reader) -> Result<DType> {
    const NAMES: &[(u32, &str)] = &[
        (6, "Q5_0"),
        (7, "Q5_1"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    Ok(match id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        12 => DType::Q4K,
        13 => DType::Q5K,
        14 => DType::Q6K,
        30 => DType::BF16,
        _ => {
            return Err(match NAMES.iter().find(|(i, _)| *i == id) {
                Some((_, name)) => Error::Unsupported(format!(
                    "{}: tensor `{tensor}` has ggml type {name} (type id {id}); supported: \
                     F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K",
                    r.path.display()
                )),
                None => r.err(format!("tensor `{tensor}` has unknown ggml type id {id}")),
            })
        }
    })
}

type Header = (u32, Metadata, Vec<TensorInfo>, usize, usize);

fn parse_header(r: &mut Reader) -> Result<Header> {
    let magic = r.array::<4>("magic")?;
    if &magic != GGUF_MAGIC {
        return Err(r.err(format!(
            "bad magic {magic:02x?}: not a GGUF file (expected \"GGUF\")"
        )));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(r.err(
                "GGUF version 1 is not supported (only versions 2 and 3); re-convert the model",
            ))
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(r.err("big-endian GGUF files are not supported"))
        }
        v => return Err(r.err(format!("unsupported GGUF version {v} (only 2 and 3)"))),
    }
    // Each tensor info takes at least 24 bytes (name length, n_dims, type, offset); each
    // key/value at least 13 (key length, type, one byte).
    let n_tensors = r.count(24, "tensor count", "tensor count")?;
    let n_kv = r.count(13, "metadata count", "metadata count")?;

    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let key = r.string(&format!("metadata key #{i}"))?;
        let what = format!("metadata `{key}`");
        let t = r.u32(&what)?;
        let v = r.value(t, 0, &what)?;
        if metadata.map.insert(key.clone(), v).is_some() {
            return Err(r.err(format!("duplicate metadata key `{key}`")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a as usize,
            _ => {
                return Err(r.err(format!(
                    "`general.alignment` = {v:?} is not a power of two up to 2^20"
                )))
            }
        },
    };

    let mut infos: Vec<(String, Vec<u64>, u32, DType, u64)> = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string(&format!("tensor #{i} name"))?;
        if name.len() > MAX_TENSOR_NAME {
            return Err(r.err(format!(
                "tensor #{i}: name of {} bytes is too long",
                name.len()
            )));
        }
        let what = format!("tensor `{name}`");
        let n_dims = r.u32(&what)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.err(format!(
                "{what}: n_dims {n_dims} is out of range 1..={MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = r.u64(&what)?;
            if d > i64::MAX as u64 {
                return Err(r.err(format!("{what}: dimension {d} is out of range")));
            }
            dims.push(d);
        }
        let type_id = r.u32(&what)?;
        let dtype = ggml_type(type_id, &name, r)?;
        let offset = r.u64(&what)?;
        if !names.insert(name.clone()) {
            return Err(r.err(format!("duplicate tensor name `{name}`")));
        }
        infos.push((name, dims, type_id, dtype, offset));
    }

    let data_offset = r.pos.div_ceil(alignment) * alignment;
    let file_len = r.buf.len();
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, ggml_type, dtype, offset) in infos {
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| {
                r.err(format!(
                    "tensor `{name}`: dimensions {dims:?} overflow (their product is too large)"
                ))
            })?;
        if dims[0] % dtype.block_len() as u64 != 0 {
            return Err(r.err(format!(
                "tensor `{name}`: row length {} is not a multiple of the {dtype} block size {}",
                dims[0],
                dtype.block_len()
            )));
        }
        let nbytes = usize::try_from(numel)
            .ok()
            .and_then(|n| dtype.bytes_for(n))
            .ok_or_else(|| {
                r.err(format!(
                    "tensor `{name}`: size of {dims:?} in {dtype} overflows"
                ))
            })?;
        if offset % alignment as u64 != 0 {
            return Err(r.err(format!(
                "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let start = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data_offset));
        let end = start.and_then(|s| s.checked_add(nbytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                dtype,
                offset: start,
                nbytes,
            }),
            _ => {
                return Err(r.err(format!(
                    "tensor `{name}`: data (offset {offset} + {nbytes} bytes after the data \
                     section at {data_offset}) lies past the end of the file ({file_len} bytes)"
                )))
            }
        }
    }
    Ok((version, metadata, tensors, alignment, data_offset))
}

// ---------------------------------------------------------------------------------------
// llama.cpp -> Hugging Face

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    Llama,
    Mixtral,
    Qwen2,
    Qwen3,
    Qwen2Moe,
}

impl Arch {
    fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mixtral => "MixtralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Qwen2Moe => "Qwen2MoeForCausalLM",
        }
    }

    /// llama.cpp's converter permutes q/k rows for these (its rope pairs adjacent values).
    fn permuted_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::Mixtral)
    }

    /// Prefix of the MoE block and the expert projection names (gate, up, down).
    fn moe_names(self) -> (&'static str, [&'static str; 3]) {
        match self {
            Arch::Mixtral => ("block_sparse_moe", ["w1", "w3", "w2"]),
            _ => ("mlp", ["gate_proj", "up_proj", "down_proj"]),
        }
    }
}

/// The Hugging Face name of a llama.cpp tensor name (None: keep the GGUF name).
fn hf_name(name: &str, arch: Arch) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let (moe, [w_gate, w_up, w_down]) = arch.moe_names();
    let mapped: String = match base {
        "attn_norm" => "input_layernorm".into(),
        "attn_q" => "self_attn.q_proj".into(),
        "attn_k" => "self_attn.k_proj".into(),
        "attn_v" => "self_attn.v_proj".into(),
        "attn_output" => "self_attn.o_proj".into(),
        "attn_q_norm" => "self_attn.q_norm".into(),
        "attn_k_norm" => "self_attn.k_norm".into(),
        "ffn_norm" => "post_attention_layernorm".into(),
        "ffn_gate" => "mlp.gate_proj".into(),
        "ffn_up" => "mlp.up_proj".into(),
        "ffn_down" => "mlp.down_proj".into(),
        "ffn_gate_inp" => format!("{moe}.gate"),
        "ffn_gate_shexp" => "mlp.shared_expert.gate_proj".into(),
        "ffn_up_shexp" => "mlp.shared_expert.up_proj".into(),
        "ffn_down_shexp" => "mlp.shared_expert.down_proj".into(),
        "ffn_gate_inp_shexp" => "mlp.shared_expert_gate".into(),
        _ => {
            // Old Mixtral GGUFs: one tensor per expert, `ffn_gate.E`.
            let (kind, e) = base.split_once('.')?;
            let e: usize = e.parse().ok()?;
            let w = match kind {
                "ffn_gate" => w_gate,
                "ffn_up" => w_up,
                "ffn_down" => w_down,
                _ => return None,
            };
            format!("{moe}.experts.{e}.{w}")
        }
    };
    Some(format!("model.layers.{layer}.{mapped}.{suffix}"))
}

/// Row order that undoes llama.cpp's q/k permutation: HF row `r` is GGUF row `order[r]`.
///
/// llama.cpp stored `w.reshape(n_head, 2, hd / 2, cols).swapaxes(1, 2)`, so GGUF row
/// `h * hd + 2 * i + j` holds HF row `h * hd + j * hd / 2 + i`.
pub fn unpermute_order(rows: usize, n_head: usize) -> std::result::Result<Vec<usize>, String> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows cannot be split into {n_head} heads of even size"
        ));
    }
    let hd = rows / n_head;
    let half = hd / 2;
    Ok((0..rows)
        .map(|r| {
            let (h, w) = (r / hd, r % hd);
            let (j, i) = (w / half, w % half);
            h * hd + 2 * i + j
        })
        .collect())
}

fn unpermute(w: &Weight, n_head: usize) -> std::result::Result<Weight, String> {
    if w.shape.len() == 1 {
        // A bias: permute the values.
        let v = w.to_f32_vec();
        let order = unpermute_order(v.len(), n_head)?;
        let out: Vec<f32> = order.iter().map(|&i| v[i]).collect();
        return Ok(Weight::from_f32(w.shape.clone(), &out));
    }
    if w.shape.len() != 2 {
        return Err(format!("expected a 2-D tensor, found shape {:?}", w.shape));
    }
    Ok(w.gather_rows(&unpermute_order(w.rows(), n_head)?))
}

struct Keys<'a> {
    meta: &'a Metadata,
    arch: &'a str,
    path: &'a Path,
}

impl Keys<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        let key = self.key(k);
        match self.meta.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::invalid_model(
                        self.path,
                        format!("`{key}` is not a non-negative integer (found {v:?})"),
                    )
                }),
        }
    }

    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?.ok_or_else(|| {
            Error::invalid_model(self.path, format!("missing metadata `{}`", self.key(k)))
        })
    }

    fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        let key = self.key(k);
        match self.meta.get(&key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                Error::invalid_model(self.path, format!("`{key}` is not a number (found {v:?})"))
            }),
        }
    }
}

fn to_loaded(f: GgufFile) -> Result<LoadedModel> {
    let path = f.path.clone();
    let path = path.as_path();
    let bad = |m: String| Error::invalid_model(path, m);
    let meta = &f.metadata;
    let arch_name = meta
        .get_str("general.architecture")
        .ok_or_else(|| bad("missing metadata `general.architecture`".into()))?;
    let keys = Keys {
        meta,
        arch: arch_name,
        path,
    };
    let expert_count = keys.opt_usize("expert_count")?.unwrap_or(0);
    let arch = match arch_name {
        "llama" if expert_count > 0 => Arch::Mixtral,
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "qwen2moe" => Arch::Qwen2Moe,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: GGUF architecture `{other}` (supported: llama, qwen2, qwen3, qwen2moe)",
                path.display()
            )))
        }
    };

    let by_name: HashMap<&str, &TensorInfo> =
        f.tensors.iter().map(|t| (t.name.as_str(), t)).collect();

    // Hyper-parameters.
    let hidden = keys.usize("embedding_length")?;
    let layers = keys.usize("block_count")?;
    let heads = keys.usize("attention.head_count")?;
    let kv_heads = keys.opt_usize("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = match keys.opt_usize("attention.key_length")? {
        Some(d) => d,
        None if heads > 0 => hidden / heads,
        None => 0,
    };
    if let Some(vd) = keys.opt_usize("attention.value_length")? {
        if vd != head_dim {
            return Err(Error::Unsupported(format!(
                "{}: value head size {vd} differs from key head size {head_dim}",
                path.display()
            )));
        }
    }
    if let Some(rd) = keys.opt_usize("rope.dimension_count")? {
        if rd != head_dim {
            return Err(Error::Unsupported(format!(
                "{}: partial rotary embedding ({rd} of {head_dim} dims)",
                path.display()
            )));
        }
    }
    let expert_ff = keys.opt_usize("expert_feed_forward_length")?;
    let ff = match (keys.opt_usize("feed_forward_length")?, expert_ff) {
        (Some(n), _) => n,
        (None, Some(n)) if expert_count > 0 => n,
        _ => keys.usize("feed_forward_length")?,
    };
    let rope_theta = keys.opt_f64("rope.freq_base")?.unwrap_or(10000.0);
    let moe = match arch {
        Arch::Mixtral => Some(MoeConfig {
            num_experts: expert_count,
            num_experts_per_tok: keys.usize("expert_used_count")?,
            norm_topk_prob: true,
            moe_intermediate_size: expert_ff.unwrap_or(ff),
            shared_expert_intermediate_size: None,
            decoder_sparse_step: 1,
            mlp_only_layers: vec![],
        }),
        Arch::Qwen2Moe => {
            let dim_of = |t: &str, i: usize| {
                by_name
                    .get(format!("blk.0.{t}.weight").as_str())
                    .and_then(|t| t.dims.get(i).map(|&d| d as usize))
            };
            Some(MoeConfig {
                num_experts: expert_count,
                num_experts_per_tok: keys.usize("expert_used_count")?,
                norm_topk_prob: meta
                    .get_bool(&keys.key("expert_weights_norm"))
                    .unwrap_or(false),
                moe_intermediate_size: expert_ff
                    .or_else(|| dim_of("ffn_gate_exps", 1))
                    .unwrap_or(ff),
                shared_expert_intermediate_size: keys
                    .opt_usize("expert_shared_feed_forward_length")?
                    .or_else(|| dim_of("ffn_gate_shexp", 1))
                    .filter(|&n| n > 0),
                decoder_sparse_step: 1,
                mlp_only_layers: vec![],
            })
        }
        _ => None,
    };
    let rope_scaling = rope_scaling(&keys, &f, &by_name, head_dim, rope_theta)?;
    let n_tokens = meta.get_array("tokenizer.ggml.tokens").map(|a| a.len());
    let vocab_size = match by_name.get("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
        _ => match keys.opt_usize("vocab_size")? {
            Some(v) => v,
            None => n_tokens.unwrap_or(0),
        },
    };
    let token_id = |k: &str| meta.get_u64(k).and_then(|v| u32::try_from(v).ok());
    let eos = token_id("tokenizer.ggml.eos_token_id");
    let config = ModelConfig {
        architecture: arch.hf_class().to_string(),
        vocab_size,
        hidden_size: hidden,
        intermediate_size: ff,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: keys
            .opt_f64("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5) as f32,
        rope_theta,
        rope_scaling,
        max_position_embeddings: keys.opt_usize("context_length")?.unwrap_or(4096),
        tie_word_embeddings: !by_name.contains_key("output.weight"),
        attention_bias: by_name.contains_key("blk.0.attn_q.bias"),
        qk_norm: arch == Arch::Qwen3,
        sliding_window: None,
        moe,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: eos.into_iter().collect(),
    };
    config.validate().map_err(bad)?;

    // Tensors.
    let mut tensors = TensorStore::default();
    let (moe_prefix, expert_names) = arch.moe_names();
    for t in &f.tensors {
        let w = f.weight(t)?;
        let exps = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
            .iter()
            .position(|k| {
                t.name
                    .strip_prefix("blk.")
                    .and_then(|r| r.split_once('.'))
                    .is_some_and(|(_, rest)| rest == format!("{k}.weight"))
            });
        if let Some(k) = exps {
            // Merged experts [n_expert, rows, cols]: one zero-copy view per expert.
            let layer = t.name["blk.".len()..]
                .split_once('.')
                .map(|x| x.0)
                .unwrap_or("");
            if w.shape.len() != 3 {
                return Err(bad(format!(
                    "tensor `{}` has shape {:?}, expected [experts, rows, cols]",
                    t.name, w.shape
                )));
            }
            let (ne, rows) = (w.shape[0], w.shape[1]);
            for e in 0..ne {
                let name = format!(
                    "model.layers.{layer}.{moe_prefix}.experts.{e}.{}.weight",
                    expert_names[k]
                );
                tensors.insert(name, w.slice_rows(e * rows, rows));
            }
            continue;
        }
        let name = hf_name(&t.name, arch).unwrap_or_else(|| t.name.clone());
        let mut w = w;
        if name.ends_with(".mlp.shared_expert_gate.weight") && w.shape.len() == 1 {
            w.shape = vec![1, w.shape[0]];
        }
        if arch.permuted_qk() {
            let n_head = if name.contains(".self_attn.q_proj.") {
                Some(heads)
            } else if name.contains(".self_attn.k_proj.") {
                Some(kv_heads)
            } else {
                None
            };
            if let Some(n) = n_head {
                w = unpermute(&w, n).map_err(|e| bad(format!("tensor `{}`: {e}", t.name)))?;
            }
        }
        tensors.insert(name, w);
    }

    let tokenizer = tokenizer_from_gguf(meta, path)?;
    Ok(LoadedModel {
        config,
        tensors,
        tokenizer,
        chat_template: meta.get_str("tokenizer.chat_template").map(str::to_string),
        generation_defaults: GenerationDefaults {
            eos_token_ids: eos.into_iter().collect(),
            ..Default::default()
        },
    })
}

/// RoPE scaling from `{arch}.rope.scaling.*`, or Llama 3's from the `rope_freqs` tensor
/// (llama.cpp stores the per-frequency factors instead of the parameters).
fn rope_scaling(
    keys: &Keys,
    f: &GgufFile,
    by_name: &HashMap<&str, &TensorInfo>,
    head_dim: usize,
    theta: f64,
) -> Result<Option<RopeScaling>> {
    let path = keys.path;
    let kind = keys.meta.get_str(&keys.key("rope.scaling.type"));
    let factor = keys
        .opt_f64("rope.scaling.factor")?
        .or(keys.opt_f64("rope.scale_linear")?);
    match (kind, factor) {
        (Some("none"), _) | (None, None) => {}
        (Some("linear") | None, Some(f)) if f > 0.0 && f != 1.0 => {
            return Ok(Some(RopeScaling::Linear { factor: f }))
        }
        (Some("linear") | None, Some(_)) => {}
        (Some(other), _) => {
            return Err(Error::Unsupported(format!(
                "{}: rope scaling `{other}`",
                path.display()
            )))
        }
    }
    let Some(t) = by_name.get("rope_freqs.weight") else {
        return Ok(None);
    };
    let factors = f.weight(t)?.to_f32_vec();
    llama3_from_factors(&factors, head_dim, theta)
        .map(Some)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: `rope_freqs` factors that are not Llama 3 rope scaling",
                path.display()
            ))
        })
}

/// The factors llama.cpp's converter writes for Llama 3 rope scaling (frequency i is
/// divided by factor i).
pub fn llama3_factors(s: &RopeScaling, head_dim: usize, theta: f64) -> Vec<f64> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: old,
    } = *s
    else {
        return vec![1.0; head_dim / 2];
    };
    (0..head_dim / 2)
        .map(|i| {
            let freq = theta.powf(-((2 * i) as f64) / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// Recovers Llama 3 rope-scaling parameters that reproduce the stored factors. Only the
/// factors matter, and any (low, high, original_max) with the same linear smoothing
/// reproduces them, so `low_freq_factor` is taken as 1 and the rest solved for.
fn llama3_from_factors(factors: &[f32], head_dim: usize, theta: f64) -> Option<RopeScaling> {
    if factors.len() != head_dim / 2 || factors.iter().any(|f| !f.is_finite() || *f < 1.0) {
        return None;
    }
    let factor = factors.iter().fold(1.0f64, |m, &f| m.max(f as f64));
    if factor <= 1.0 {
        return None;
    }
    // Points strictly between the bands: smooth = a * freq + b.
    let mids: Vec<(f64, f64)> = factors
        .iter()
        .enumerate()
        .filter(|(_, &f)| (f as f64) > 1.0 + 1e-4 && (f as f64) < factor * (1.0 - 1e-4))
        .map(|(i, &f)| {
            let freq = theta.powf(-((2 * i) as f64) / head_dim as f64);
            let smooth = (1.0 / f as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (freq, smooth)
        })
        .collect();
    let (&(f0, s0), &(f1, s1)) = (mids.first()?, mids.last()?);
    if mids.len() < 2 || f0 == f1 {
        return None;
    }
    let a = (s1 - s0) / (f1 - f0);
    let b = s0 - a * f0;
    if b >= 0.0 || a <= 0.0 {
        return None;
    }
    let low = 1.0;
    // span = high_freq_factor - low_freq_factor.
    let span = -1.0 / b;
    // The factors are stored as f32: snap values within 1e-5 of an integer to it.
    let snap = |x: f64| {
        if (x - x.round()).abs() <= 1e-5 * x.abs() {
            x.round()
        } else {
            x
        }
    };
    let s = RopeScaling::Llama3 {
        factor: snap(factor),
        low_freq_factor: low,
        high_freq_factor: snap(low + span),
        original_max_position_embeddings: snap(a * 2.0 * std::f64::consts::PI * span),
    };
    let ok = llama3_factors(&s, head_dim, theta)
        .iter()
        .zip(factors)
        .all(|(&g, &f)| (g - f as f64).abs() <= 1e-3 * f as f64);
    ok.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: gguf row h*hd + 2i + j = hf row h*hd + j*hd/2 + i.
        let (n_head, hd) = (3, 8);
        let rows = n_head * hd;
        let mut gguf_of_hf = vec![0; rows];
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for j in 0..2 {
                    gguf_of_hf[h * hd + j * hd / 2 + i] = h * hd + 2 * i + j;
                }
            }
        }
        assert_eq!(unpermute_order(rows, n_head).unwrap(), gguf_of_hf);
        assert!(unpermute_order(10, 3).is_err());
    }

    #[test]
    fn llama3_factors_round_trip() {
        let s = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let f: Vec<f32> = llama3_factors(&s, 64, 500000.0)
            .iter()
            .map(|&x| x as f32)
            .collect();
        let got = llama3_from_factors(&f, 64, 500000.0).expect("inferred");
        let g = llama3_factors(&got, 64, 500000.0);
        for (a, b) in g.iter().zip(&f) {
            assert!((a - *b as f64).abs() < 1e-4 * *b as f64);
        }
        assert_eq!(got, s);
    }

    #[test]
    fn names_map_to_hf() {
        let n = |s: &str, a| hf_name(s, a).unwrap();
        assert_eq!(
            n("blk.3.attn_q.weight", Arch::Llama),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            n("blk.0.attn_k.bias", Arch::Qwen2),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            n("blk.1.ffn_gate_inp.weight", Arch::Mixtral),
            "model.layers.1.block_sparse_moe.gate.weight"
        );
        assert_eq!(
            n("blk.1.ffn_gate_inp.weight", Arch::Qwen2Moe),
            "model.layers.1.mlp.gate.weight"
        );
        assert_eq!(
            n("blk.1.ffn_down.7.weight", Arch::Mixtral),
            "model.layers.1.block_sparse_moe.experts.7.w2.weight"
        );
        assert_eq!(
            n("blk.2.ffn_gate_inp_shexp.weight", Arch::Qwen2Moe),
            "model.layers.2.mlp.shared_expert_gate.weight"
        );
        assert_eq!(n("output.weight", Arch::Llama), "lm_head.weight");
        assert!(hf_name("rope_freqs.weight", Arch::Llama).is_none());
    }
}
