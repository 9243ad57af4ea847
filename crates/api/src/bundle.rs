//! Offline bundles: models carried to air-gapped sites as one tar file.
//!
//! Layout, in this order: `manifest.json` (format, creation time and creator, every model's
//! name, tag, GGUF metadata and blob, every blob's SHA-256, SM3 and size), `manifest.sig` (the
//! hex SM2 signature of `manifest.json`'s exact bytes by the appliance key named in the
//! manifest; absent in an unsigned bundle), then `blobs/sha256-<hex>` for each blob. Readers
//! check the signature before looking at any blob and every digest of every blob before
//! anything is registered; tar entry names are never used as filesystem paths.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use maasbox_crypto::{Sm2KeyPair, Sm2PublicKey, Sm3Stream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// The format tag of this layout.
pub const FORMAT: &str = "maasbox-bundle/1";

/// One model in a bundle.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BundleModel {
    /// Name.
    pub name: String,
    /// Tag.
    pub tag: String,
    /// Its blob's SHA-256.
    pub sha256: String,
    /// GGUF metadata as the exporting appliance read it.
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
    /// Where the exporting appliance got it.
    pub source: String,
    /// For a LoRA adapter: its base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// One blob in a bundle.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BundleBlob {
    /// SHA-256 (hex).
    pub sha256: String,
    /// SM3 (hex).
    pub sm3: String,
    /// Bytes.
    pub size: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Who exported it.
    pub created_by: String,
    /// The signing appliance's SM2 public key (hex).
    pub signer: String,
    /// Models.
    pub models: Vec<BundleModel>,
    /// Blobs (each once, however many tags point at it).
    pub blobs: Vec<BundleBlob>,
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle of this format, or damaged.
    #[error("not a valid maasbox bundle: {0}")]
    Malformed(String),
    /// No `manifest.sig` and unsigned bundles were not allowed.
    #[error("the bundle is unsigned; pass allow_unsigned (--allow-unsigned) to import it anyway")]
    Unsigned,
    /// The signature does not verify.
    #[error("the bundle's signature does not verify: the manifest was changed or signed by another key")]
    BadSignature,
    /// Signed, but not by the key the caller trusts.
    #[error("the bundle is signed by {found}, not by the trusted key {trusted}")]
    Untrusted {
        /// Key in the manifest.
        found: String,
        /// Key the caller trusts.
        trusted: String,
    },
    /// A blob's content does not match the manifest.
    #[error("blob {0} does not match its digests in the manifest: the bundle was tampered with or damaged")]
    Digest(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A bundle whose signature and digests all checked out.
pub struct Verified {
    /// Its manifest.
    pub manifest: Manifest,
    /// Whether it carried a valid signature.
    pub signed: bool,
    /// Extracted blobs by SHA-256 (when extracting).
    pub files: HashMap<String, PathBuf>,
}

impl Verified {
    /// Remove extracted files (on any later failure).
    pub fn discard(&self) {
        for p in self.files.values() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Write a bundle of `models` (with their blob files) to `out`, signed by `key`.
pub fn write(
    out: impl Write,
    key: &Sm2KeyPair,
    created_by: &str,
    models: Vec<BundleModel>,
    blob_path: impl Fn(&str) -> PathBuf,
) -> Result<Manifest, BundleError> {
    let mut blobs: Vec<BundleBlob> = Vec::new();
    for m in &models {
        if blobs.iter().any(|b| b.sha256 == m.sha256) {
            continue;
        }
        let (sha256, sm3, size) = digests(&mut std::fs::File::open(blob_path(&m.sha256))?, &mut std::io::sink())?;
        if sha256 != m.sha256 {
            return Err(BundleError::Digest(format!("sha256-{} (the stored blob is damaged)", m.sha256)));
        }
        blobs.push(BundleBlob { sha256, sm3, size });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        created_at: maasbox_types::now_secs(),
        created_by: created_by.into(),
        signer: key.public_key().to_hex(),
        models,
        blobs,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let sig = hex::encode(key.sign(&json));
    let mut tar = tar::Builder::new(out);
    append(&mut tar, "manifest.json", json.len() as u64, &json[..])?;
    append(&mut tar, "manifest.sig", sig.len() as u64, sig.as_bytes())?;
    for b in &manifest.blobs {
        let f = std::fs::File::open(blob_path(&b.sha256))?;
        append(&mut tar, &format!("blobs/sha256-{}", b.sha256), b.size, f)?;
    }
    tar.into_inner()?.flush()?;
    Ok(manifest)
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, size: u64, data: impl Read) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(maasbox_types::now_secs().max(0) as u64);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
}

/// Copy `r` to `w`, returning SHA-256, SM3 and size.
fn digests(r: &mut impl Read, w: &mut impl Write) -> std::io::Result<(String, String, u64)> {
    let (mut sha, mut sm3, mut size) = (Sha256::new(), Sm3Stream::default(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        sm3.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((hex::encode(sha.finalize()), sm3.finish_hex(), size))
}

/// Read and verify the bundle at `path`. With `extract_to`, every blob is copied there (under
/// names of our own) while it is hashed; without, blobs are only hashed. `trusted`: the key the
/// bundle must be signed by; `None` accepts the key named in the manifest (integrity only).
pub fn read(
    path: &Path,
    trusted: Option<&Sm2PublicKey>,
    allow_unsigned: bool,
    extract_to: Option<&Path>,
) -> Result<Verified, BundleError> {
    let mut verified = Verified {
        manifest: Manifest {
            format: String::new(),
            created_at: 0,
            created_by: String::new(),
            signer: String::new(),
            models: vec![],
            blobs: vec![],
        },
        signed: false,
        files: HashMap::new(),
    };
    let result = read_into(path, trusted, allow_unsigned, extract_to, &mut verified);
    match result {
        Ok(()) => Ok(verified),
        Err(e) => {
            verified.discard();
            Err(e)
        }
    }
}

fn read_into(
    path: &Path,
    trusted: Option<&Sm2PublicKey>,
    allow_unsigned: bool,
    extract_to: Option<&Path>,
    v: &mut Verified,
) -> Result<(), BundleError> {
    let bad = |m: &str| BundleError::Malformed(m.to_owned());
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    let mut entries = archive.entries()?;
    let mut next = || -> Result<Option<(String, tar::Entry<'_, std::fs::File>)>, BundleError> {
        match entries.next() {
            None => Ok(None),
            Some(e) => {
                let e = e.map_err(|e| BundleError::Malformed(e.to_string()))?;
                let name = e.path().map_err(|e| BundleError::Malformed(e.to_string()))?.to_string_lossy().into_owned();
                Ok(Some((name, e)))
            }
        }
    };
    let (name, mut entry) = next()?.ok_or_else(|| bad("the file is empty"))?;
    if name != "manifest.json" || entry.header().size()? > 64 << 20 {
        return Err(bad("the first entry must be manifest.json"));
    }
    let mut json = Vec::new();
    entry.read_to_end(&mut json)?;
    drop(entry);
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| BundleError::Malformed(format!("manifest.json: {e}")))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Malformed(format!("format '{}' is not {FORMAT}", manifest.format)));
    }
    let mut upcoming = next()?;
    if let Some((_, mut e)) = upcoming.take_if(|(n, _)| n == "manifest.sig") {
        let mut sig = String::new();
        e.by_ref().take(1024).read_to_string(&mut sig)?;
        drop(e);
        let sig = hex::decode(sig.trim()).map_err(|_| BundleError::BadSignature)?;
        let signer = Sm2PublicKey::from_hex(&manifest.signer).map_err(|_| BundleError::BadSignature)?;
        signer.verify(&json, &sig).map_err(|_| BundleError::BadSignature)?;
        if let Some(t) = trusted {
            if t.to_hex() != signer.to_hex() {
                return Err(BundleError::Untrusted { found: manifest.signer.clone(), trusted: t.to_hex() });
            }
        }
        v.signed = true;
        upcoming = next()?;
    } else if !allow_unsigned || trusted.is_some() {
        return Err(BundleError::Unsigned);
    }
    let expected: HashMap<&str, &BundleBlob> = manifest.blobs.iter().map(|b| (b.sha256.as_str(), b)).collect();
    if manifest.models.iter().any(|m| !expected.contains_key(m.sha256.as_str())) {
        return Err(bad("a model names a blob the manifest does not list"));
    }
    let mut seen = HashSet::new();
    while let Some((name, mut entry)) = upcoming {
        let sha = name
            .strip_prefix("blobs/sha256-")
            .filter(|h| expected.contains_key(h))
            .ok_or_else(|| BundleError::Malformed(format!("unexpected entry '{name}'")))?
            .to_owned();
        if !seen.insert(sha.clone()) {
            return Err(BundleError::Malformed(format!("blob {sha} appears twice")));
        }
        let want = expected[sha.as_str()];
        let declared = entry.header().size()?;
        let got = match extract_to {
            Some(dir) => {
                let tmp = dir.join(format!(".bundle-{}", maasbox_crypto::random_hex(8)));
                v.files.insert(sha.clone(), tmp.clone());
                let mut f = std::fs::File::create(&tmp)?;
                let d = digests(&mut entry, &mut f)?;
                f.sync_all()?;
                d
            }
            None => digests(&mut entry, &mut std::io::sink())?,
        };
        if got.2 != declared {
            return Err(BundleError::Malformed(format!("blob {sha} is cut short (truncated bundle?)")));
        }
        if got != (want.sha256.clone(), want.sm3.clone(), want.size) {
            return Err(BundleError::Digest(sha));
        }
        drop(entry);
        upcoming = next()?;
    }
    if let Some(missing) = manifest.blobs.iter().find(|b| !seen.contains(&b.sha256)) {
        return Err(BundleError::Malformed(format!("blob {} is missing (truncated bundle?)", missing.sha256)));
    }
    v.manifest = manifest;
    Ok(())
}
