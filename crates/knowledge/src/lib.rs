//! maasbox-knowledge: the knowledge index. sled holds knowledge bases, documents (digest,
//! parser, status) and chunks (text, anchor, term counts, vector); the search structures
//! ([`index`]) live in memory and are rebuilt from sled at open.
//!
//! This crate knows neither HTTP nor llama.cpp: the caller parses ([`parse::parse`]), chunks
//! ([`chunk::chunk`], counting tokens with the embedding model's tokenizer), embeds, and hands
//! the chunks with their vectors to [`Knowledge::commit_document`].
//!
//! Durability: a document's chunks are written and flushed before its status becomes `ready`,
//! and only chunks of ready documents are indexed. A document still `processing` at open was
//! interrupted (kill -9, power loss): it is marked failed and its partial chunks are removed.

pub mod chunk;
mod index;
pub mod parse;
pub mod text;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use maasbox_types::Visibility;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::index::KbIndex;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
    /// No such base or document.
    #[error("{0}")]
    NotFound(String),
    /// The name is taken.
    #[error("{0}")]
    Conflict(String),
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// The sled store failed.
    #[error("knowledge store: {0}")]
    Store(String),
}

impl From<sled::Error> for KnowledgeError {
    fn from(e: sled::Error) -> Self {
        KnowledgeError::Store(e.to_string())
    }
}

impl From<serde_json::Error> for KnowledgeError {
    fn from(e: serde_json::Error) -> Self {
        KnowledgeError::Store(format!("corrupt record: {e}"))
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, KnowledgeError>;

/// A knowledge base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeBase {
    /// Internal id (keys in sled).
    pub id: u64,
    /// Unique name (URL segment).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Username of the creator; the owner may change and delete it.
    pub owner: String,
    /// The embedding model (`name:tag`) its vectors come from.
    pub embedding_model: String,
    /// Vector length (0 until the first document is embedded).
    pub dim: usize,
    /// Chunk size in tokens of the embedding model.
    pub chunk_tokens: usize,
    /// Tokens shared by consecutive chunks of one section.
    pub chunk_overlap: usize,
    /// Who may search it (besides the owner and admins); empty = every user.
    pub visibility: Visibility,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Ready documents (filled when read).
    #[serde(default)]
    pub documents: usize,
    /// Indexed chunks (filled when read).
    #[serde(default)]
    pub chunks: usize,
}

/// Where a document stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocStatus {
    /// Being parsed, chunked and embedded.
    Processing,
    /// Searchable.
    Ready,
    /// Not searchable; `error` says why.
    Failed,
}

/// A document of a knowledge base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Unique across the store.
    pub id: u64,
    /// The base's name.
    pub base: String,
    /// The uploaded file name.
    pub name: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// File size.
    pub bytes: u64,
    /// The parser that read it.
    pub format: Option<String>,
    /// Status.
    pub status: DocStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// Chunks indexed.
    pub chunks: usize,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// The ingestion job that processed it.
    pub job: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// What [`Knowledge::begin_document`] found.
#[derive(Debug)]
pub enum Begin {
    /// A new document to process.
    New(Document),
    /// The same content is already in the base (ready or being processed): nothing to do.
    Duplicate(Document),
}

/// Search mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Vector and keyword results fused by reciprocal rank.
    #[default]
    Hybrid,
    /// Embedding similarity only.
    Vector,
    /// BM25 only.
    Keyword,
}

/// A search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// `"<document id>:<chunk number>"`.
    pub chunk_id: String,
    /// The base it came from.
    pub base: String,
    /// Document id.
    pub document_id: u64,
    /// Document (file) name.
    pub document: String,
    /// Heading path, page or line.
    pub anchor: String,
    /// The chunk's text.
    pub text: String,
    /// Fused score (hybrid), cosine similarity (vector) or BM25 score (keyword).
    pub score: f32,
    /// Rank in the vector list (1-based), when it was there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_rank: Option<usize>,
    /// Rank in the keyword list (1-based), when it was there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword_rank: Option<usize>,
}

/// A chunk as stored: metadata as JSON, then the vector.
#[derive(Serialize, Deserialize)]
struct ChunkRec {
    text: String,
    anchor: String,
    tokens: usize,
    terms: Vec<(String, u32)>,
}

/// A chunk ready to store: text, anchor, token count and its embedding.
pub struct Embedded {
    /// The chunk.
    pub draft: chunk::Draft,
    /// Its normalised embedding.
    pub vector: Vec<f32>,
}

fn encode_chunk(rec: &ChunkRec, vector: &[f32]) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(rec)?;
    let mut out = Vec::with_capacity(4 + json.len() + vector.len() * 4);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    for v in vector {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

fn decode_chunk(bytes: &[u8]) -> Result<(ChunkRec, Vec<f32>)> {
    let bad = || KnowledgeError::Store("corrupt chunk record".into());
    let n = u32::from_le_bytes(bytes.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let json = bytes.get(4..4 + n).ok_or_else(bad)?;
    let rest = &bytes[4 + n..];
    if !rest.len().is_multiple_of(4) {
        return Err(bad());
    }
    let v = rest.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((serde_json::from_slice(json)?, v))
}

fn key2(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

fn chunk_key(kb: u64, doc: u64, ord: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&key2(kb, doc));
    k[16..].copy_from_slice(&ord.to_be_bytes());
    k
}

fn digest_key(kb: u64, sha256: &str) -> Vec<u8> {
    let mut k = kb.to_be_bytes().to_vec();
    k.extend_from_slice(sha256.as_bytes());
    k
}

fn now() -> i64 {
    maasbox_types::now_secs()
}

/// Validation of a base's name: it is a URL segment.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(KnowledgeError::Invalid(
            "a knowledge base name is 1–64 letters, digits, '-', '_' or '.', not starting with '.'".into(),
        ))
    }
}

/// A new base's settings.
pub struct NewBase {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Creator.
    pub owner: String,
    /// Embedding model `name:tag`.
    pub embedding_model: String,
    /// Vector length of that model.
    pub dim: usize,
    /// Chunk size in tokens.
    pub chunk_tokens: usize,
    /// Overlap in tokens.
    pub chunk_overlap: usize,
    /// Who may search it.
    pub visibility: Visibility,
}

/// A search across one or more bases.
pub struct Query<'a> {
    /// Base names (the caller has checked the grants).
    pub bases: &'a [String],
    /// The query text (for keyword search).
    pub text: &'a str,
    /// The query embedding per embedding model (for vector search).
    pub vectors: &'a HashMap<String, Vec<f32>>,
    /// Which lists to use.
    pub mode: Mode,
    /// Results wanted.
    pub top_k: usize,
}

/// The knowledge store. Cheap to share behind an `Arc`.
pub struct Knowledge {
    db: sled::Db,
    bases: sled::Tree,
    docs: sled::Tree,
    digests: sled::Tree,
    chunks: sled::Tree,
    /// Serialises changes to bases and documents (not searches).
    write: Mutex<()>,
    indexes: RwLock<HashMap<u64, KbIndex>>,
}

impl Knowledge {
    /// Open (or create) the store in `dir`, finish interrupted ingestions, and build the
    /// in-memory indexes.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open()?;
        let k = Knowledge {
            bases: db.open_tree("bases")?,
            docs: db.open_tree("docs")?,
            digests: db.open_tree("digests")?,
            chunks: db.open_tree("chunks")?,
            db,
            write: Mutex::new(()),
            indexes: RwLock::new(HashMap::new()),
        };
        k.recover()?;
        k.load()?;
        // The segmentation dictionary costs tens of MB: load it up front only where there is
        // something to search (a new base loads it in the background, see create_base).
        if !k.bases.is_empty() {
            text::warm_up();
        }
        Ok(k)
    }

    /// Documents left `processing` by a crash: failed, partial chunks removed.
    fn recover(&self) -> Result<()> {
        for item in self.docs.iter() {
            let (key, v) = item?;
            let mut d: Document = serde_json::from_slice(&v)?;
            if d.status == DocStatus::Processing {
                let kb = u64::from_be_bytes(key[..8].try_into().map_err(|_| KnowledgeError::Store("bad key".into()))?);
                self.remove_chunks(kb, d.id)?;
                d.status = DocStatus::Failed;
                d.error = Some("interrupted: the server stopped during ingestion; upload it again".into());
                d.updated_at = now();
                self.docs.insert(key, serde_json::to_vec(&d)?)?;
                tracing::warn!(document = %d.name, base = %d.base, "ingestion was interrupted; marked failed");
            }
        }
        self.db.flush()?;
        Ok(())
    }

    fn load(&self) -> Result<()> {
        let mut ready: HashSet<(u64, u64)> = HashSet::new();
        for item in self.docs.iter() {
            let (key, v) = item?;
            let d: Document = serde_json::from_slice(&v)?;
            if d.status == DocStatus::Ready {
                ready.insert((u64::from_be_bytes(key[..8].try_into().unwrap_or_default()), d.id));
            }
        }
        let mut idx = self.indexes.write();
        for b in self.all_bases()? {
            idx.insert(b.id, KbIndex::new(b.dim));
        }
        for item in self.chunks.iter() {
            let (key, v) = item?;
            if key.len() != 20 {
                continue;
            }
            let kb = u64::from_be_bytes(key[..8].try_into().unwrap_or_default());
            let doc = u64::from_be_bytes(key[8..16].try_into().unwrap_or_default());
            let ord = u32::from_be_bytes(key[16..].try_into().unwrap_or_default());
            if !ready.contains(&(kb, doc)) {
                continue;
            }
            let (rec, vector) = decode_chunk(&v)?;
            if let Some(i) = idx.get_mut(&kb) {
                if vector.len() == i.dim {
                    i.add(doc, ord, &rec.terms, &vector);
                }
            }
        }
        Ok(())
    }

    fn all_bases(&self) -> Result<Vec<KnowledgeBase>> {
        self.bases.iter().values().map(|v| Ok(serde_json::from_slice(&v?)?)).collect()
    }

    fn with_counts(&self, mut b: KnowledgeBase) -> KnowledgeBase {
        let idx = self.indexes.read();
        if let Some(i) = idx.get(&b.id) {
            b.chunks = i.live;
            b.documents = i.docs.len();
        }
        b
    }

    /// Every base, by name.
    pub fn bases(&self) -> Result<Vec<KnowledgeBase>> {
        Ok(self.all_bases()?.into_iter().map(|b| self.with_counts(b)).collect())
    }

    /// One base by name.
    pub fn base(&self, name: &str) -> Result<KnowledgeBase> {
        let v = self
            .bases
            .get(name.as_bytes())?
            .ok_or_else(|| KnowledgeError::NotFound(format!("there is no knowledge base named '{name}'")))?;
        Ok(self.with_counts(serde_json::from_slice(&v)?))
    }

    /// Create a base.
    pub fn create_base(&self, new: NewBase) -> Result<KnowledgeBase> {
        check_name(&new.name)?;
        check_chunking(new.chunk_tokens, new.chunk_overlap)?;
        let _w = self.write.lock();
        if self.bases.contains_key(new.name.as_bytes())? {
            return Err(KnowledgeError::Conflict(format!("a knowledge base named '{}' exists", new.name)));
        }
        let t = now();
        let b = KnowledgeBase {
            id: self.db.generate_id()?,
            name: new.name,
            description: new.description,
            owner: new.owner,
            embedding_model: new.embedding_model,
            dim: new.dim,
            chunk_tokens: new.chunk_tokens,
            chunk_overlap: new.chunk_overlap,
            visibility: new.visibility,
            created_at: t,
            updated_at: t,
            documents: 0,
            chunks: 0,
        };
        self.bases.insert(b.name.as_bytes(), serde_json::to_vec(&b)?)?;
        self.db.flush()?;
        self.indexes.write().insert(b.id, KbIndex::new(b.dim));
        text::warm_up_in_background();
        Ok(b)
    }

    /// Change a base's description, chunking or visibility (new chunking applies to documents
    /// added afterwards).
    pub fn update_base(&self, name: &str, change: impl FnOnce(&mut KnowledgeBase)) -> Result<KnowledgeBase> {
        let _w = self.write.lock();
        let mut b = self.base(name)?;
        change(&mut b);
        check_chunking(b.chunk_tokens, b.chunk_overlap)?;
        b.updated_at = now();
        self.bases.insert(name.as_bytes(), serde_json::to_vec(&b)?)?;
        self.db.flush()?;
        Ok(b)
    }

    /// Delete a base with all its documents, chunks and vectors.
    pub fn delete_base(&self, name: &str) -> Result<KnowledgeBase> {
        let _w = self.write.lock();
        let b = self.base(name)?;
        // The record first: a crash after this leaves only unreachable data, removed below or
        // on the next delete of a base with this id (ids are never reused).
        self.bases.remove(name.as_bytes())?;
        self.indexes.write().remove(&b.id);
        let prefix = b.id.to_be_bytes();
        for tree in [&self.chunks, &self.docs, &self.digests] {
            let mut batch = sled::Batch::default();
            for k in tree.scan_prefix(prefix).keys() {
                batch.remove(k?);
            }
            tree.apply_batch(batch)?;
        }
        self.db.flush()?;
        Ok(b)
    }

    /// Record an upload. Content already in the base (same SHA-256, ready or processing) is a
    /// duplicate; a failed earlier attempt is replaced.
    pub fn begin_document(
        &self,
        base: &str,
        name: &str,
        sha256: &str,
        bytes: u64,
        uploaded_by: &str,
        job: &str,
    ) -> Result<Begin> {
        let _w = self.write.lock();
        let b = self.base(base)?;
        if let Some(id) = self.digests.get(digest_key(b.id, sha256))? {
            let id = u64::from_be_bytes(
                id.as_ref().try_into().map_err(|_| KnowledgeError::Store("bad digest index".into()))?,
            );
            if let Some(v) = self.docs.get(key2(b.id, id))? {
                let d: Document = serde_json::from_slice(&v)?;
                if d.status != DocStatus::Failed {
                    return Ok(Begin::Duplicate(d));
                }
                self.docs.remove(key2(b.id, id))?;
            }
        }
        let t = now();
        let d = Document {
            id: self.db.generate_id()?,
            base: b.name.clone(),
            name: name.to_owned(),
            sha256: sha256.to_owned(),
            bytes,
            format: None,
            status: DocStatus::Processing,
            error: None,
            chunks: 0,
            uploaded_by: uploaded_by.to_owned(),
            job: Some(job.to_owned()),
            created_at: t,
            updated_at: t,
        };
        self.docs.insert(key2(b.id, d.id), serde_json::to_vec(&d)?)?;
        self.digests.insert(digest_key(b.id, sha256), &d.id.to_be_bytes())?;
        self.db.flush()?;
        Ok(Begin::New(d))
    }

    fn doc_rec(&self, kb: u64, doc: u64) -> Result<Option<Document>> {
        self.docs.get(key2(kb, doc))?.map(|v| Ok(serde_json::from_slice(&v)?)).transpose()
    }

    /// Store a processed document's chunks and make it searchable. Chunks are flushed before the
    /// document is marked ready.
    pub fn commit_document(&self, base: &str, doc: u64, format: &str, chunks: Vec<Embedded>) -> Result<Document> {
        let b = self.base(base)?;
        let dim = chunks.first().map_or(b.dim, |c| c.vector.len());
        if b.dim != 0 && dim != b.dim {
            return Err(KnowledgeError::Invalid(format!(
                "the embedding model gives vectors of {dim} values, the base holds {} (was the model replaced?)",
                b.dim
            )));
        }
        if chunks.iter().any(|c| c.vector.len() != dim) {
            return Err(KnowledgeError::Invalid("embeddings of different lengths".into()));
        }
        let mut batch = sled::Batch::default();
        let mut terms = Vec::with_capacity(chunks.len());
        for (ord, c) in chunks.iter().enumerate() {
            let rec = ChunkRec {
                terms: text::term_counts(&c.draft.text),
                text: c.draft.text.clone(),
                anchor: c.draft.anchor.clone(),
                tokens: c.draft.tokens,
            };
            batch.insert(&chunk_key(b.id, doc, ord as u32), encode_chunk(&rec, &c.vector)?);
            terms.push(rec.terms);
        }
        let _w = self.write.lock();
        let mut d = self
            .doc_rec(b.id, doc)?
            .filter(|d| d.status == DocStatus::Processing)
            .ok_or_else(|| KnowledgeError::NotFound("the document was deleted during ingestion".into()))?;
        if self.base(base)?.id != b.id {
            return Err(KnowledgeError::NotFound(format!("the knowledge base '{base}' was deleted during ingestion")));
        }
        self.chunks.apply_batch(batch)?;
        self.db.flush()?;
        d.status = DocStatus::Ready;
        d.format = Some(format.to_owned());
        d.chunks = chunks.len();
        d.updated_at = now();
        self.docs.insert(key2(b.id, doc), serde_json::to_vec(&d)?)?;
        if b.dim == 0 && dim != 0 {
            let mut nb = b.clone();
            nb.dim = dim;
            self.bases.insert(base.as_bytes(), serde_json::to_vec(&nb)?)?;
        }
        self.db.flush()?;
        let mut idx = self.indexes.write();
        let i = idx.entry(b.id).or_insert_with(|| KbIndex::new(dim));
        if i.dim == 0 {
            i.dim = dim;
        }
        for (ord, (c, t)) in chunks.iter().zip(&terms).enumerate() {
            i.add(doc, ord as u32, t, &c.vector);
        }
        Ok(d)
    }

    /// Mark a document failed (parse error, cancelled, embedding failed); nothing of it stays
    /// searchable.
    pub fn fail_document(&self, base: &str, doc: u64, reason: &str) -> Result<()> {
        let _w = self.write.lock();
        let Ok(b) = self.base(base) else { return Ok(()) };
        let Some(mut d) = self.doc_rec(b.id, doc)? else { return Ok(()) };
        self.remove_chunks(b.id, doc)?;
        d.status = DocStatus::Failed;
        d.error = Some(reason.to_owned());
        d.updated_at = now();
        self.docs.insert(key2(b.id, doc), serde_json::to_vec(&d)?)?;
        self.db.flush()?;
        Ok(())
    }

    fn remove_chunks(&self, kb: u64, doc: u64) -> Result<Vec<String>> {
        let mut batch = sled::Batch::default();
        let mut terms = HashSet::new();
        for item in self.chunks.scan_prefix(key2(kb, doc)) {
            let (k, v) = item?;
            if let Ok((rec, _)) = decode_chunk(&v) {
                terms.extend(rec.terms.into_iter().map(|t| t.0));
            }
            batch.remove(k);
        }
        self.chunks.apply_batch(batch)?;
        Ok(terms.into_iter().collect())
    }

    /// Delete a document: its record, chunks, vectors and postings.
    pub fn delete_document(&self, base: &str, doc: u64) -> Result<Document> {
        let _w = self.write.lock();
        let b = self.base(base)?;
        let d = self
            .doc_rec(b.id, doc)?
            .ok_or_else(|| KnowledgeError::NotFound(format!("there is no document {doc} in '{base}'")))?;
        let terms = self.remove_chunks(b.id, doc)?;
        self.docs.remove(key2(b.id, doc))?;
        if self.digests.get(digest_key(b.id, &d.sha256))?.is_some_and(|v| v.as_ref() == doc.to_be_bytes()) {
            self.digests.remove(digest_key(b.id, &d.sha256))?;
        }
        self.db.flush()?;
        let mut idx = self.indexes.write();
        if let Some(i) = idx.get_mut(&b.id) {
            i.remove_doc(doc, &terms);
            if i.sparse() {
                i.compact();
            }
        }
        Ok(d)
    }

    /// A base's documents, newest first.
    pub fn documents(&self, base: &str) -> Result<Vec<Document>> {
        let b = self.base(base)?;
        let mut v: Vec<Document> = self
            .docs
            .scan_prefix(b.id.to_be_bytes())
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect::<Result<_>>()?;
        v.sort_by_key(|d| std::cmp::Reverse(d.id));
        Ok(v)
    }

    /// One document.
    pub fn document(&self, base: &str, doc: u64) -> Result<Document> {
        let b = self.base(base)?;
        self.doc_rec(b.id, doc)?
            .ok_or_else(|| KnowledgeError::NotFound(format!("there is no document {doc} in '{base}'")))
    }

    /// Search `q.bases`. Hybrid fuses the top `max(50, 4·top_k)` of each list.
    pub fn search(&self, q: &Query) -> Result<Vec<Hit>> {
        let bases: Vec<KnowledgeBase> = q.bases.iter().map(|n| self.base(n)).collect::<Result<_>>()?;
        let idx = self.indexes.read();
        let empty = KbIndex::default();
        let idxs: Vec<&KbIndex> = bases.iter().map(|b| idx.get(&b.id).unwrap_or(&empty)).collect();
        let depth = match q.mode {
            Mode::Hybrid => q.top_k.saturating_mul(4).max(50),
            _ => q.top_k,
        };
        let vec_list = if q.mode != Mode::Keyword {
            let qs: Vec<Option<&[f32]>> =
                bases.iter().map(|b| q.vectors.get(&b.embedding_model).map(Vec::as_slice)).collect();
            index::vector_search(&idxs, &qs, depth)
        } else {
            Vec::new()
        };
        let kw_list =
            if q.mode != Mode::Vector { index::keyword_search(&idxs, &text::terms(q.text), depth) } else { Vec::new() };
        let picked: Vec<index::Fused> = match q.mode {
            Mode::Hybrid => index::fuse(&[&vec_list, &kw_list], q.top_k),
            Mode::Vector => vec_list.iter().enumerate().map(|(r, x)| (x.0, x.1, x.2, [Some(r + 1), None])).collect(),
            Mode::Keyword => kw_list.iter().enumerate().map(|(r, x)| (x.0, x.1, x.2, [None, Some(r + 1)])).collect(),
        };
        let mut names: HashMap<u64, String> = HashMap::new();
        let mut out = Vec::with_capacity(picked.len());
        for (w, slot, score, ranks) in picked {
            let b = &bases[w];
            let s = idxs[w].slots[slot as usize];
            let Some(v) = self.chunks.get(chunk_key(b.id, s.doc, s.ord))? else { continue };
            let (rec, _) = decode_chunk(&v)?;
            let document = match names.get(&s.doc) {
                Some(n) => n.clone(),
                None => {
                    let n = self.doc_rec(b.id, s.doc)?.map(|d| d.name).unwrap_or_default();
                    names.insert(s.doc, n.clone());
                    n
                }
            };
            out.push(Hit {
                chunk_id: format!("{}:{}", s.doc, s.ord),
                base: b.name.clone(),
                document_id: s.doc,
                document,
                anchor: rec.anchor,
                text: rec.text,
                score,
                vector_rank: ranks[0],
                keyword_rank: ranks[1],
            });
        }
        Ok(out)
    }

    /// Flush everything to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

fn check_chunking(size: usize, overlap: usize) -> Result<()> {
    if !(16..=2048).contains(&size) {
        return Err(KnowledgeError::Invalid("chunk_tokens must be between 16 and 2048".into()));
    }
    if overlap * 2 > size {
        return Err(KnowledgeError::Invalid("chunk_overlap must be at most half of chunk_tokens".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
