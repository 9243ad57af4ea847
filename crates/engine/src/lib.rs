//! maasbox-engine: local inference on llama.cpp, and the only crate that imports `llama-cpp-2`.
//!
//! Entry point: [`EngineHandle`] — load a GGUF ([`EngineHandle::load`]), then tokenize and
//! submit generation or embedding work to the loaded model ([`LoadedModel`]). Each loaded model
//! has one dedicated OS thread that owns its llama.cpp context: generation models run the
//! continuous-batching loop in `runner.rs`; embedding models (BERT-family, pooled) run the
//! batched embedding loop. Requests reach the thread over a channel; results come back on a
//! bounded per-request channel whose closing cancels the request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

mod chat;
pub mod gguf;
mod runner;
mod sampling;
pub mod text;

pub use chat::ChatMessage;

/// Engine errors. `BadRequest`, `ContextOverflow`, `Grammar` and `NotEmbedding` are the
/// caller's fault; the rest are the engine's.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be loaded.
    #[error("cannot load model: {0}")]
    Load(String),
    /// The chat template could not be applied.
    #[error("chat template: {0}")]
    Template(String),
    /// The JSON schema or grammar is not usable.
    #[error("invalid grammar or JSON schema: {0}")]
    Grammar(String),
    /// An input is longer than the model's context.
    #[error("input {index} has {tokens} tokens; the model's context holds {limit}")]
    ContextOverflow {
        /// Which input.
        index: usize,
        /// Its length in tokens.
        tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// A parameter is out of range.
    #[error("{0}")]
    BadRequest(String),
    /// Embeddings asked of a generation model.
    #[error("model {0} is not an embedding model")]
    NotEmbedding(String),
    /// The engine thread is gone.
    #[error("the model was unloaded")]
    Unloaded,
    /// Anything else inside llama.cpp.
    #[error("engine error: {0}")]
    Internal(String),
}

/// Sampling parameters of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// ≤ 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling (1.0 = off).
    pub top_p: f32,
    /// Top-k (0 = off).
    pub top_k: i32,
    /// Min-p (0 = off).
    pub min_p: f32,
    /// Seed of the random draw.
    pub seed: u32,
    /// OpenAI presence penalty.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty.
    pub frequency_penalty: f32,
    /// Token id → additive bias.
    pub logit_bias: Vec<(i32, f32)>,
    /// GBNF grammar (root rule `root`).
    pub grammar: Option<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            seed: 0xC0FFEE,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            grammar: None,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens reused from the slot's cache.
    pub cached_tokens: usize,
}

/// What a generation request streams back.
#[derive(Clone, Debug, PartialEq)]
pub enum GenEvent {
    /// More text (complete UTF-8, stop strings already removed).
    Text {
        /// The text.
        text: String,
        /// Tokens generated so far (what a request that ends now has cost).
        tokens: usize,
    },
    /// Finished.
    Done {
        /// Why.
        finish_reason: FinishReason,
        /// Counts.
        usage: Usage,
        /// Time to first token, ms (from submission).
        ttft_ms: f64,
        /// Total time, ms.
        total_ms: f64,
    },
    /// Failed.
    Error(String),
    /// Ended early because the engine ran out of room for it (the caller may retry).
    Overloaded(String),
}

/// A generation request, as the engine thread receives it.
pub struct GenJob {
    prompt: Vec<LlamaToken>,
    params: SamplingParams,
    max_tokens: usize,
    stop: Vec<String>,
    /// Index into the model's adapters; slots only decode together with the same one.
    adapter: Option<usize>,
    events: mpsc::Sender<GenEvent>,
    queued_at: Instant,
    /// Counts the request as active until the engine is done with it.
    active: ActiveGuard,
}

/// Held while a request is queued or running: a model with active requests is never unloaded
/// for idleness or evicted, and its idle time starts when the last request ends.
pub(crate) struct ActiveGuard(Arc<UseCounter>);

/// Tokens a model has processed since it was loaded (live throughput: sample twice, divide).
#[derive(Default, Debug)]
pub struct TokenStats {
    /// Tokens sampled (generated).
    pub generated: std::sync::atomic::AtomicU64,
    /// Tokens decoded (prompt and generated; embeddings not counted).
    pub decoded: std::sync::atomic::AtomicU64,
}

/// Shared use counters of a loaded model.
#[derive(Default)]
pub(crate) struct UseCounter {
    active: AtomicUsize,
    last_used: Mutex<Option<Instant>>,
}

impl ActiveGuard {
    fn new(u: &Arc<UseCounter>) -> Self {
        u.active.fetch_add(1, Ordering::SeqCst);
        *u.last_used.lock() = Some(Instant::now());
        Self(u.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        *self.0.last_used.lock() = Some(Instant::now());
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long a model stays loaded after its last request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepAlive {
    /// Unload after this much idle time (zero: as soon as it is idle).
    For(Duration),
    /// Never unload for idleness (LRU eviction may still unload it unless pinned).
    Forever,
}

pub(crate) struct EmbedJob {
    inputs: Vec<Vec<LlamaToken>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>>,
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// Registry name (`name:tag`).
    pub name: String,
    /// GGUF path.
    pub path: PathBuf,
    /// Context size (tokens); `None` = the model's training context, capped at 8192.
    pub n_ctx: Option<u32>,
    /// Parallel sequences (slots).
    pub parallel: usize,
    /// One KV pool shared by the slots (else `n_ctx / parallel` each).
    pub kv_unified: bool,
    /// Most tokens decoded per step.
    pub n_batch: u32,
    /// CPU threads.
    pub n_threads: i32,
    /// Layers to offload to the GPU (`None` = all that the build supports).
    pub n_gpu_layers: Option<u32>,
    /// LoRA adapters requests may select (loaded with the model; llama.cpp needs them before
    /// the model is shared).
    pub adapters: Vec<AdapterSpec>,
}

/// A LoRA adapter GGUF for a model.
#[derive(Clone, Debug)]
pub struct AdapterSpec {
    /// Registry name.
    pub name: String,
    /// GGUF path.
    pub path: PathBuf,
    /// Scale (1.0 = as trained).
    pub scale: f32,
}

/// Facts about a loaded model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelInfo {
    /// Registry name.
    pub name: String,
    /// `general.architecture`.
    pub architecture: String,
    /// Parameters.
    pub n_params: u64,
    /// Context one request may use (the whole pool when unified, else a slot's share).
    pub n_ctx: u32,
    /// Training context.
    pub n_ctx_train: u32,
    /// Embedding width.
    pub n_embd: i32,
    /// Whether it serves embeddings (else generation).
    pub embedding: bool,
    /// Slots.
    pub parallel: usize,
    /// LoRA adapters loaded with it, by index (what [`LoadedModel::generate`] selects).
    pub adapters: Vec<String>,
}

/// A model with its engine thread.
pub struct LoadedModel {
    info: ModelInfo,
    model: Arc<LlamaModel>,
    tx: crossbeam_channel::Sender<runner::Cmd>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    use_: Arc<UseCounter>,
    keep_alive: Mutex<KeepAlive>,
    pinned: AtomicBool,
    stats: Arc<TokenStats>,
}

/// A loaded model as `ps` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RunningModel {
    /// What was loaded.
    #[serde(flatten)]
    pub info: ModelInfo,
    /// Requests queued or running.
    pub active_requests: usize,
    /// Exempt from idle unloading and from LRU eviction.
    pub pinned: bool,
    /// Seconds since the last request ended (0 while busy).
    pub idle_secs: u64,
    /// Seconds until it is unloaded for idleness; `None`: not while pinned, busy or kept forever.
    pub expires_in_secs: Option<u64>,
    /// Tokens generated since it was loaded.
    pub generated_tokens: u64,
    /// Tokens decoded (prompt and generated) since it was loaded.
    pub decoded_tokens: u64,
}

impl LoadedModel {
    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Tokenize a conversation with the model's chat template (special tokens in user content
    /// stay text). Returns token ids.
    pub fn tokenize_chat(&self, messages: &[ChatMessage]) -> Result<Vec<i32>, EngineError> {
        let (toks, _) = chat::tokenize_chat(&self.model, messages)?;
        Ok(toks.into_iter().map(|t| t.0).collect())
    }

    /// Tokenize a raw prompt (no special-token parsing).
    pub fn tokenize(&self, prompt: &str) -> Vec<i32> {
        chat::tokenize_prompt(&self.model, prompt).into_iter().map(|t| t.0).collect()
    }

    /// Turn a string into token ids for `logit_bias` validation or counting.
    pub fn n_vocab(&self) -> i32 {
        self.model.n_vocab()
    }

    /// Start generating. Events arrive on the returned receiver; dropping it cancels.
    pub fn generate(
        &self,
        prompt: Vec<i32>,
        params: SamplingParams,
        max_tokens: usize,
        stop: Vec<String>,
        adapter: Option<usize>,
    ) -> Result<mpsc::Receiver<GenEvent>, EngineError> {
        if adapter.is_some_and(|a| a >= self.info.adapters.len()) {
            return Err(EngineError::BadRequest(format!("{} has no such LoRA adapter", self.info.name)));
        }
        if self.info.embedding {
            return Err(EngineError::BadRequest(format!(
                "{} is an embedding model; use /v1/embeddings",
                self.info.name
            )));
        }
        if prompt.len() >= self.info.n_ctx as usize {
            return Err(EngineError::ContextOverflow {
                index: 0,
                tokens: prompt.len(),
                limit: self.info.n_ctx as usize,
            });
        }
        let (tx, rx) = mpsc::channel(1024);
        let job = GenJob {
            prompt: prompt.into_iter().map(LlamaToken).collect(),
            params,
            max_tokens,
            stop,
            adapter,
            events: tx,
            queued_at: Instant::now(),
            active: ActiveGuard::new(&self.use_),
        };
        self.tx.send(runner::Cmd::Generate(job)).map_err(|_| EngineError::Unloaded)?;
        Ok(rx)
    }

    /// Embed several texts in one batch; vectors are L2-normalised.
    pub async fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), EngineError> {
        if !self.info.embedding {
            return Err(EngineError::NotEmbedding(self.info.name.clone()));
        }
        let _active = ActiveGuard::new(&self.use_);
        let vocab = self.model.vocab();
        let inputs: Vec<Vec<LlamaToken>> = texts.iter().map(|t| vocab.tokenize(t.as_bytes(), true, false)).collect();
        let n_tokens = inputs.iter().map(Vec::len).sum();
        let (reply, rx) = oneshot::channel();
        self.tx.send(runner::Cmd::Embed(EmbedJob { inputs, reply })).map_err(|_| EngineError::Unloaded)?;
        let v = rx.await.map_err(|_| EngineError::Unloaded)??;
        Ok((v, n_tokens))
    }

    /// When this model last started or finished a request (its load time before any).
    pub fn last_used(&self) -> Instant {
        self.use_.last_used.lock().unwrap_or_else(Instant::now)
    }

    /// Requests queued or running.
    pub fn active_requests(&self) -> usize {
        self.use_.active.load(Ordering::SeqCst)
    }

    /// Set how long the model stays loaded after its last request (a request's `keep_alive`).
    pub fn set_keep_alive(&self, k: KeepAlive) {
        *self.keep_alive.lock() = k;
    }

    /// The current keep-alive.
    pub fn keep_alive(&self) -> KeepAlive {
        *self.keep_alive.lock()
    }

    /// Pin (or unpin): a pinned model is never unloaded for idleness nor evicted.
    pub fn set_pinned(&self, pinned: bool) {
        self.pinned.store(pinned, Ordering::SeqCst);
    }

    /// Whether the model is pinned.
    pub fn pinned(&self) -> bool {
        self.pinned.load(Ordering::SeqCst)
    }

    /// Time left before it is unloaded for idleness; `None` while pinned, busy or kept forever.
    fn expires_in(&self, now: Instant) -> Option<Duration> {
        if self.pinned() || self.active_requests() > 0 {
            return None;
        }
        match self.keep_alive() {
            KeepAlive::Forever => None,
            KeepAlive::For(d) => Some(d.saturating_sub(now.saturating_duration_since(self.last_used()))),
        }
    }

    fn running(&self, now: Instant) -> RunningModel {
        let active = self.active_requests();
        RunningModel {
            info: self.info.clone(),
            active_requests: active,
            pinned: self.pinned(),
            idle_secs: if active > 0 { 0 } else { now.saturating_duration_since(self.last_used()).as_secs() },
            expires_in_secs: self.expires_in(now).map(|d| d.as_secs()),
            generated_tokens: self.stats.generated.load(Ordering::Relaxed),
            decoded_tokens: self.stats.decoded.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LoadedModel {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its running requests finish; the thread
        // holds its own reference to the weights, so nothing waits for it here (a drop on an
        // async worker must not block).
        let (dead, _) = crossbeam_channel::bounded(0);
        let _ = std::mem::replace(&mut self.tx, dead);
        drop(self.thread.lock().take());
    }
}

/// What `/health/engine` shows.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EngineStatus {
    /// Backend this build was compiled with.
    pub backend: &'static str,
    /// Loaded models.
    pub loaded_models: Vec<RunningModel>,
    /// Whether this build can run inference.
    pub inference_available: bool,
}

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(true));
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load(e.clone()))
}

/// Handle to the engine: the set of loaded models. Cheap to clone.
#[derive(Clone, Default)]
pub struct EngineHandle {
    models: Arc<Mutex<HashMap<String, Arc<LoadedModel>>>>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("loaded", &self.models.lock().keys().collect::<Vec<_>>()).finish()
    }
}

/// The compiled-in GPU backend, if any.
pub const BACKEND_NAME: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "vulkan") {
    "vulkan"
} else if cfg!(feature = "metal") {
    "metal"
} else {
    "cpu"
};

impl EngineHandle {
    /// An engine with no models loaded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Current status.
    pub fn status(&self) -> EngineStatus {
        let now = Instant::now();
        let mut loaded: Vec<RunningModel> = self.models.lock().values().map(|m| m.running(now)).collect();
        loaded.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        EngineStatus { backend: BACKEND_NAME, loaded_models: loaded, inference_available: true }
    }

    /// A loaded model.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models.lock().get(name).cloned()
    }

    /// Number of loaded models.
    pub fn loaded_count(&self) -> usize {
        self.models.lock().len()
    }

    /// Unload the idle, unpinned model that has waited longest since its last request; returns
    /// its name, or `None` when every loaded model is pinned or busy.
    pub fn evict_least_recently_used(&self) -> Option<String> {
        let mut g = self.models.lock();
        let victim = g
            .values()
            .filter(|m| !m.pinned() && m.active_requests() == 0)
            .min_by_key(|m| m.last_used())
            .map(|m| m.info.name.clone())?;
        g.remove(&victim);
        Some(victim)
    }

    /// Unload every model whose keep-alive has run out; returns their names.
    pub fn unload_expired(&self) -> Vec<String> {
        let now = Instant::now();
        let mut g = self.models.lock();
        let victims: Vec<String> =
            g.values().filter(|m| m.expires_in(now) == Some(Duration::ZERO)).map(|m| m.info.name.clone()).collect();
        for v in &victims {
            g.remove(v);
        }
        victims
    }

    /// Unload a model (its thread stops after the current step); true if it was loaded.
    pub fn unload(&self, name: &str) -> bool {
        self.models.lock().remove(name).is_some()
    }

    /// Load `spec` (blocking: reads the file and starts the thread). Loading an already-loaded
    /// name returns the loaded model. It stays loaded `keep_alive` after its last request.
    pub fn load(&self, spec: &ModelSpec, keep_alive: KeepAlive) -> Result<Arc<LoadedModel>, EngineError> {
        if let Some(m) = self.get(&spec.name) {
            return Ok(m);
        }
        let backend = backend()?;
        check_gguf(&spec.path)?;
        let mut params = LlamaModelParams::default();
        if let Some(n) = spec.n_gpu_layers {
            params = params.with_n_gpu_layers(n);
        }
        let mut model =
            LlamaModel::load_from_file(backend, &spec.path, &params).map_err(|e| EngineError::Load(e.to_string()))?;
        let mut loras = Vec::with_capacity(spec.adapters.len());
        for a in &spec.adapters {
            check_gguf(&a.path)?;
            let lora = model
                .lora_adapter_init(&a.path)
                .map_err(|e| EngineError::Load(format!("LoRA adapter '{}' does not fit this model: {e}", a.name)))?;
            loras.push((lora, a.scale));
        }
        let model = Arc::new(model);
        let arch = model.meta_val_str("general.architecture").unwrap_or_default();
        let embedding = model.meta_val_str(&format!("{arch}.pooling_type")).is_ok() || arch == "bert";
        let n_ctx_train = model.n_ctx_train();
        let n_ctx = spec.n_ctx.unwrap_or(n_ctx_train.min(8192)).min(n_ctx_train.max(1));
        let cfg = runner::RunnerConfig {
            n_ctx,
            parallel: spec.parallel.clamp(1, 64),
            n_batch: spec.n_batch.max(64),
            n_threads: spec.n_threads.max(1),
            kv_unified: spec.kv_unified,
            stats: Arc::new(TokenStats::default()),
        };
        let stats = cfg.stats.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let m2 = model.clone();
        let parallel = cfg.parallel;
        let thread = std::thread::Builder::new()
            .name(format!("engine-{}", spec.name))
            .spawn(move || {
                if embedding {
                    runner::run_embeddings(m2, backend, cfg, rx, ready_tx)
                } else {
                    runner::run_generation(m2, loras, backend, cfg, rx, ready_tx)
                }
            })
            .map_err(|e| EngineError::Load(e.to_string()))?;
        let n_ctx =
            ready_rx.recv().map_err(|_| EngineError::Load("engine thread died".into()))?.map_err(EngineError::Load)?;
        let info = ModelInfo {
            name: spec.name.clone(),
            architecture: arch,
            n_params: model.n_params(),
            n_ctx: if embedding { n_ctx_train } else { n_ctx },
            n_ctx_train,
            n_embd: model.n_embd(),
            embedding,
            parallel: if embedding { 1 } else { parallel },
            adapters: spec.adapters.iter().map(|a| a.name.clone()).collect(),
        };
        tracing::info!(model = %spec.name, ?info, "model loaded");
        let loaded = Arc::new(LoadedModel {
            info,
            model,
            tx,
            thread: Mutex::new(Some(thread)),
            use_: Arc::new(UseCounter { active: AtomicUsize::new(0), last_used: Mutex::new(Some(Instant::now())) }),
            keep_alive: Mutex::new(keep_alive),
            pinned: AtomicBool::new(false),
            stats,
        });
        self.models.lock().insert(spec.name.clone(), loaded.clone());
        Ok(loaded)
    }
}

/// A GBNF grammar (root rule `root`) that accepts exactly the JSON documents `schema` allows,
/// through llama.cpp's own converter.
pub fn json_schema_grammar(schema: &str) -> Result<String, EngineError> {
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| EngineError::Grammar(e.to_string()))
}

/// Refuse files that are not GGUF before llama.cpp sees them (it aborts on some bad files).
pub fn check_gguf(path: &Path) -> Result<(), EngineError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).map_err(|_| EngineError::Load("file is too short to be a GGUF model".into()))?;
    if &magic[..4] != b"GGUF" {
        return Err(EngineError::Load("not a GGUF file (bad magic)".into()));
    }
    let version = u32::from_le_bytes([magic[4], magic[5], magic[6], magic[7]]);
    if !(2..=3).contains(&version) {
        return Err(EngineError::Load(format!("unsupported GGUF version {version}")));
    }
    Ok(())
}
