//! A GGUF header reader: the metadata the registry records, and the checks that reject a file
//! that is not GGUF, is truncated, or has an architecture llama.cpp cannot run — before
//! llama.cpp ever opens it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;

/// Errors reading a GGUF header.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Not a GGUF file.
    #[error("not a GGUF file (the first bytes are not 'GGUF')")]
    NotGguf,
    /// Truncated or malformed.
    #[error("the GGUF file is truncated or malformed: {0}")]
    Malformed(String),
    /// Version we do not read.
    #[error("unsupported GGUF version {0}")]
    Version(u32),
    /// Architecture llama.cpp does not run (or we have not validated).
    #[error("unsupported model architecture '{0}'")]
    Architecture(String),
    /// I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the registry records about a model file.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GgufInfo {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// Parameter count (sum of tensor element counts).
    pub parameters: u64,
    /// Quantization of the bulk of the weights (from `general.file_type`).
    pub quantization: String,
    /// `<arch>.context_length`.
    pub context_length: Option<u64>,
    /// `<arch>.embedding_length`.
    pub embedding_length: Option<u64>,
    /// `<arch>.pooling_type` as a name (embedding models).
    pub pooling: Option<String>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// `general.license`.
    pub license: Option<String>,
    /// Tensor count.
    pub tensors: u64,
    /// `model`, or `lora` for a LoRA adapter (`general.type = adapter`, `adapter.type = lora`).
    pub kind: String,
}

/// Architectures this build has been checked with (llama.cpp supports more; extend as tested).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
    "mistral",
    "bert",
    "nomic-bert",
    "stablelm",
    "starcoder2",
    "granite",
    "olmo",
    "falcon",
    "gpt2",
    "mpt",
    "deepseek2",
];

const MAX_STRING: u64 = 64 << 20;

/// A reader that counts what it consumed (the tensor data starts after the header).
struct R<T: Read> {
    r: T,
    pos: u64,
}

impl<T: Read> R<T> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|_| GgufError::Malformed("unexpected end of file in the header".into()))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(GgufError::Malformed(format!("string of {n} bytes")));
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b).map_err(|_| GgufError::Malformed("unexpected end of file in a string".into()))?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    /// Read a value of type `t`; scalars and strings are returned, arrays are skipped.
    fn value(&mut self, t: u32) -> Result<Option<Val>, GgufError> {
        Ok(Some(match t {
            0 => Val::U(u64::from(self.bytes::<1>()?[0])),
            1 => Val::I(i64::from(self.bytes::<1>()?[0] as i8)),
            2 => Val::U(u64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Val::I(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Val::U(u64::from(self.u32()?)),
            5 => Val::I(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => {
                self.bytes::<4>()?;
                return Ok(None);
            }
            7 => Val::U(u64::from(self.bytes::<1>()?[0])),
            8 => Val::S(self.string()?),
            9 => {
                let et = self.u32()?;
                let n = self.u64()?;
                if n > 1 << 28 {
                    return Err(GgufError::Malformed(format!("array of {n} elements")));
                }
                for _ in 0..n {
                    self.value(et)?;
                }
                return Ok(None);
            }
            10 => Val::U(self.u64()?),
            11 => Val::I(i64::from_le_bytes(self.bytes()?)),
            12 => {
                self.bytes::<8>()?;
                return Ok(None);
            }
            other => return Err(GgufError::Malformed(format!("unknown value type {other}"))),
        }))
    }
}

#[derive(Clone, Debug)]
enum Val {
    U(u64),
    I(i64),
    S(String),
}

impl Val {
    fn as_u64(&self) -> Option<u64> {
        match self {
            Val::U(u) => Some(*u),
            Val::I(i) => u64::try_from(*i).ok(),
            Val::S(_) => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Val::S(s) => Some(s),
            _ => None,
        }
    }
}

fn file_type_name(ft: u64) -> &'static str {
    match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => "other",
    }
}

/// Read and check the header of `path`. The tensor data must be present in full: a file shorter
/// than its tensor table says is reported as truncated.
pub fn read_info(path: &Path) -> Result<GgufInfo, GgufError> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut r = R { r: std::io::BufReader::new(f), pos: 0 };
    if &r.bytes::<4>()? != b"GGUF" {
        return Err(GgufError::NotGguf);
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::Version(version));
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    if n_tensors > 1 << 20 || n_kv > 1 << 20 {
        return Err(GgufError::Malformed("implausible tensor or key count".into()));
    }
    let mut kv: BTreeMap<String, Val> = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let t = r.u32()?;
        if let Some(v) = r.value(t)? {
            kv.insert(key, v);
        }
    }
    let mut parameters = 0u64;
    let mut data_end = 0u64;
    for _ in 0..n_tensors {
        let _name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > 8 {
            return Err(GgufError::Malformed(format!("tensor with {n_dims} dimensions")));
        }
        let mut elems = 1u64;
        for _ in 0..n_dims {
            elems = elems.saturating_mul(r.u64()?);
        }
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        parameters = parameters.saturating_add(elems);
        data_end = data_end.max(offset.saturating_add(tensor_bytes(ggml_type, elems)));
    }
    let alignment = kv.get("general.alignment").and_then(Val::as_u64).unwrap_or(32).max(1);
    let data_start = r.pos.div_ceil(alignment) * alignment;
    if data_start.saturating_add(data_end) > len {
        return Err(GgufError::Malformed(format!(
            "the file has {len} bytes but its tensors end at byte {}",
            data_start + data_end
        )));
    }
    let arch = kv.get("general.architecture").and_then(Val::as_str).unwrap_or_default().to_owned();
    if arch.is_empty() {
        return Err(GgufError::Malformed("general.architecture is missing".into()));
    }
    if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(GgufError::Architecture(arch));
    }
    let get = |k: &str| kv.get(&format!("{arch}.{k}")).and_then(Val::as_u64);
    Ok(GgufInfo {
        name: kv.get("general.name").and_then(Val::as_str).map(str::to_owned),
        parameters,
        quantization: kv.get("general.file_type").and_then(Val::as_u64).map_or("unknown", file_type_name).to_owned(),
        context_length: get("context_length"),
        embedding_length: get("embedding_length"),
        pooling: get("pooling_type").map(|p| match p {
            0 => "none".to_owned(),
            1 => "mean".to_owned(),
            2 => "cls".to_owned(),
            3 => "last".to_owned(),
            n => format!("type {n}"),
        }),
        chat_template: kv.get("tokenizer.chat_template").and_then(Val::as_str).map(str::to_owned),
        license: kv.get("general.license").and_then(Val::as_str).map(str::to_owned),
        tensors: n_tensors,
        kind: match (kv.get("general.type").and_then(Val::as_str), kv.get("adapter.type").and_then(Val::as_str)) {
            (Some("adapter"), Some("lora")) => "lora".to_owned(),
            (Some("adapter"), Some(other)) => {
                return Err(GgufError::Architecture(format!("{arch} adapter of type {other}")))
            }
            _ => "model".to_owned(),
        },
        architecture: arch,
    })
}

/// Bytes of a tensor of `elems` elements of ggml type `t` (block sizes from ggml.h).
fn tensor_bytes(t: u32, elems: u64) -> u64 {
    let (block, bytes) = match t {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        30 => (1, 2),     // BF16
        _ => return 0,    // unknown: do not guess
    };
    elems.div_ceil(block) * bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_gguf_and_truncated_headers() {
        let dir = std::env::temp_dir().join(format!("mbx-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.gguf");
        std::fs::write(&p, b"PK\x03\x04 not a model").unwrap();
        assert!(matches!(read_info(&p), Err(GgufError::NotGguf)));
        let mut h = b"GGUF".to_vec();
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&1u64.to_le_bytes());
        h.extend_from_slice(&5u64.to_le_bytes());
        std::fs::write(&p, &h).unwrap();
        assert!(matches!(read_info(&p), Err(GgufError::Malformed(_))));
        std::fs::write(&p, b"GGUF\x09\x00\x00\x00").unwrap();
        assert!(matches!(read_info(&p), Err(GgufError::Version(9))));
    }
}
