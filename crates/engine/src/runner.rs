//! The per-model engine thread: it owns the llama.cpp context and runs continuous batching.
//!
//! Each step decodes, in one batch, one token for every generating slot plus prompt chunks for
//! slots still reading their prompt (up to `n_batch` tokens), then samples every slot whose
//! logits were produced. A new request takes the idle slot whose cached tokens share the longest
//! prefix with its prompt (falling back to the least recently used), so a follow-up turn of a
//! conversation only decodes what is new. A request whose receiver is gone (the client left) is
//! released at the next step boundary.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use tokio::sync::mpsc;

use crate::sampling::build_sampler;
use crate::text::{take_utf8, StopFilter, StopOutcome};
use crate::{ActiveGuard, EmbedJob, FinishReason, GenEvent, GenJob, Usage};

pub(crate) enum Cmd {
    Generate(GenJob),
    Embed(EmbedJob),
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    Idle,
    Prompt,
    Generating,
}

struct Slot {
    id: i32,
    phase: Phase,
    /// Tokens whose keys/values are in this slot's KV sequence.
    cached: Vec<LlamaToken>,
    prompt: Vec<LlamaToken>,
    n_past: usize,
    i_batch: Option<i32>,
    sampler: Option<LlamaSampler>,
    last: LlamaToken,
    n_gen: usize,
    max_new: usize,
    utf8: Vec<u8>,
    stop: StopFilter,
    tx: Option<mpsc::Sender<GenEvent>>,
    /// The request's hold on the model (released with the slot).
    active: Option<ActiveGuard>,
    last_used: Instant,
    started: Instant,
    first_token: Option<Instant>,
    cache_hit: usize,
    /// The LoRA adapter of the running request, and under which `cached` was computed.
    adapter: Option<usize>,
    /// Last step this slot was decoded in (slots of other adapters wait their turn).
    served: Instant,
}

impl Slot {
    fn new(id: i32) -> Self {
        Self {
            id,
            phase: Phase::Idle,
            cached: Vec::new(),
            prompt: Vec::new(),
            n_past: 0,
            i_batch: None,
            sampler: None,
            last: LlamaToken(0),
            n_gen: 0,
            max_new: 0,
            utf8: Vec::new(),
            stop: StopFilter::default(),
            tx: None,
            active: None,
            last_used: Instant::now(),
            started: Instant::now(),
            first_token: None,
            cache_hit: 0,
            adapter: None,
            served: Instant::now(),
        }
    }

    fn release(&mut self) {
        self.phase = Phase::Idle;
        self.tx = None;
        self.active = None;
        self.sampler = None;
        self.i_batch = None;
        self.last_used = Instant::now();
    }

    fn finish(&mut self, reason: FinishReason) {
        let tail = self.stop.finish();
        if let Some(tx) = &self.tx {
            if !tail.is_empty() && reason != FinishReason::Stop {
                let _ = tx.try_send(GenEvent::Text { text: tail, tokens: self.n_gen });
            }
            let now = Instant::now();
            let _ = tx.try_send(GenEvent::Done {
                finish_reason: reason,
                usage: Usage {
                    prompt_tokens: self.prompt.len(),
                    completion_tokens: self.n_gen,
                    cached_tokens: self.cache_hit,
                },
                ttft_ms: self.first_token.map(|t| (t - self.started).as_secs_f64() * 1e3).unwrap_or(0.0),
                total_ms: (now - self.started).as_secs_f64() * 1e3,
            });
        }
        self.release();
    }
}

fn lcp(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Reusable prefix of a slot for a job: keys and values computed under another adapter differ.
fn reusable(s: &Slot, job: &GenJob) -> usize {
    if s.adapter == job.adapter {
        lcp(&s.cached, &job.prompt)
    } else {
        0
    }
}

pub(crate) struct RunnerConfig {
    pub n_ctx: u32,
    pub parallel: usize,
    pub n_batch: u32,
    pub n_threads: i32,
    pub kv_unified: bool,
    /// Tokens processed, for live throughput (one relaxed add per step and per sampled token).
    pub stats: Arc<crate::TokenStats>,
}

/// Create the context; a failure is reported to the loader (and `None` ends the thread).
fn open_context<'m>(
    model: &'m LlamaModel,
    backend: &'static llama_cpp_2::llama_backend::LlamaBackend,
    params: LlamaContextParams,
    ready: &std::sync::mpsc::Sender<Result<u32, String>>,
) -> Option<LlamaContext<'m>> {
    match model.new_context(backend, params) {
        Ok(c) => Some(c),
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            None
        }
    }
}

/// Run the generation loop until the command channel closes.
pub(crate) fn run_generation(
    model: Arc<LlamaModel>,
    mut loras: Vec<(LlamaLoraAdapter, f32)>,
    backend: &'static llama_cpp_2::llama_backend::LlamaBackend,
    cfg: RunnerConfig,
    rx: Receiver<Cmd>,
    ready: std::sync::mpsc::Sender<Result<u32, String>>,
) {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cfg.n_ctx))
        .with_n_batch(cfg.n_batch)
        .with_n_ubatch(cfg.n_batch.min(512))
        .with_n_seq_max(cfg.parallel as u32)
        .with_kv_unified(cfg.kv_unified)
        .with_n_threads(cfg.n_threads)
        .with_n_threads_batch(cfg.n_threads);
    let Some(mut ctx) = open_context(&model, backend, params, &ready) else { return };
    // What one request may use: llama.cpp gives each sequence n_ctx / n_seq_max cells unless
    // the pool is unified.
    let n_ctx = if cfg.kv_unified { ctx.n_ctx() } else { ctx.n_ctx() / cfg.parallel as u32 };
    let _ = ready.send(Ok(n_ctx));
    // llama.cpp caps a causal context's batch at its size (`n_batch = min(n_batch, n_ctx)`) and
    // aborts the process on a larger decode: every step stays within what the context took.
    let n_batch = (ctx.n_batch() as usize).max(1);
    let mut batch = LlamaBatch::new(n_batch, 1);
    let mut slots: Vec<Slot> = (0..cfg.parallel as i32).map(Slot::new).collect();
    let mut pending: VecDeque<GenJob> = VecDeque::new();
    let vocab = model.vocab();
    // The adapter set on the context now (llama.cpp applies it to every sequence in a batch).
    let mut applied: Option<usize> = None;

    loop {
        let busy = slots.iter().any(|s| s.phase != Phase::Idle);
        // Block only when there is nothing to do.
        if !busy && pending.is_empty() {
            match rx.recv() {
                Ok(cmd) => handle_cmd(cmd, &mut pending, &mut ctx, &model),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => handle_cmd(cmd, &mut pending, &mut ctx, &model),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if slots.iter().all(|s| s.phase == Phase::Idle) && pending.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }

        // Cancellation: a closed receiver means the client went away.
        for s in slots.iter_mut().filter(|s| s.phase != Phase::Idle) {
            if s.tx.as_ref().is_none_or(|t| t.is_closed()) {
                tracing::debug!(slot = s.id, "client gone; slot released");
                s.release();
            }
        }
        pending.retain(|j| !j.events.is_closed());

        // Admission.
        while let Some(job) = pending.pop_front() {
            let free: Vec<usize> =
                slots.iter().enumerate().filter(|(_, s)| s.phase == Phase::Idle).map(|(i, _)| i).collect();
            if free.is_empty() {
                pending.push_front(job);
                break;
            }
            let best = free
                .iter()
                .copied()
                .max_by_key(|&i| (reusable(&slots[i], &job), std::cmp::Reverse(slots[i].last_used)))
                .unwrap_or(free[0]);
            let best = if reusable(&slots[best], &job) == 0 {
                free.iter().copied().min_by_key(|&i| slots[i].last_used).unwrap_or(best)
            } else {
                best
            };
            admit(&mut slots[best], job, &mut ctx, &model, n_ctx as usize);
        }

        // Slots decode together only under one adapter set: this step serves the adapter of
        // the slot that has waited longest, so groups take turns.
        let group = slots.iter().filter(|s| s.phase != Phase::Idle).min_by_key(|s| s.served).map(|s| s.adapter);
        let Some(group) = group else { continue };
        if group != applied {
            let switched = match group {
                Some(i) => {
                    let (lora, scale) = &mut loras[i];
                    ctx.lora_adapter_set(lora, *scale).map_err(|e| e.to_string())
                }
                None => match loras.first_mut() {
                    Some((lora, _)) => ctx.lora_adapter_remove(lora).map_err(|e| e.to_string()),
                    None => Ok(()),
                },
            };
            if let Err(e) = switched {
                tracing::error!(error = %e, "switching the LoRA adapter failed");
                fail_all(&mut slots, &mut ctx, "the engine could not switch LoRA adapters; see the server log");
                applied = None;
                continue;
            }
            applied = group;
        }

        // Build the batch: one token per generating slot, then prompt chunks.
        let marks: Vec<(usize, usize)> = slots.iter().map(|s| (s.cached.len(), s.n_past)).collect();
        batch.clear();
        let mut ok = true;
        let now = Instant::now();
        for s in slots.iter_mut().filter(|s| s.phase != Phase::Idle && s.adapter == group) {
            s.served = now;
        }
        for s in slots.iter_mut().filter(|s| s.phase == Phase::Generating && s.adapter == group) {
            if batch.n_tokens() as usize >= n_batch {
                break; // more slots than the batch holds: the rest go next step
            }
            s.i_batch = Some(batch.n_tokens());
            ok &= batch.add(s.last, s.cached.len() as i32, &[s.id], true).is_ok();
            s.cached.push(s.last);
        }
        for s in slots.iter_mut().filter(|s| s.phase == Phase::Prompt && s.adapter == group) {
            while s.n_past < s.prompt.len() && (batch.n_tokens() as usize) < n_batch {
                let last = s.n_past + 1 == s.prompt.len();
                ok &= batch.add(s.prompt[s.n_past], s.n_past as i32, &[s.id], last).is_ok();
                s.cached.push(s.prompt[s.n_past]);
                s.n_past += 1;
                if last {
                    s.i_batch = Some(batch.n_tokens() - 1);
                }
            }
        }
        if batch.n_tokens() == 0 {
            continue;
        }
        if !ok {
            fail_all(&mut slots, &mut ctx, "internal error: batch overflow");
            continue;
        }
        match ctx.decode(&mut batch) {
            Ok(()) => {
                cfg.stats.decoded.fetch_add(batch.n_tokens() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(DecodeError::NoKvCacheSlot) => {
                // The shared KV cache is full. llama.cpp checks room before it writes, so only
                // this step's bookkeeping is undone; then make room and build the step again.
                for (s, &(cached, n_past)) in slots.iter_mut().zip(&marks) {
                    s.cached.truncate(cached);
                    s.n_past = n_past;
                    s.i_batch = None;
                }
                if !purge_one_idle(&mut slots, &mut ctx) {
                    // Every cell belongs to a running request: the youngest one gives way.
                    let n_active = slots.iter().filter(|s| s.phase != Phase::Idle).count();
                    if let Some(v) = slots.iter_mut().filter(|s| s.phase != Phase::Idle).max_by_key(|s| s.started) {
                        tracing::warn!(slot = v.id, n_active, "KV cache full; ending the youngest request");
                        if let Some(tx) = &v.tx {
                            let _ = tx.try_send(GenEvent::Overloaded(format!(
                                "the model's KV cache (shared by {n_active} running requests) is full; \
                                 retry shortly, or raise engine.context_size"
                            )));
                        }
                        let _ = ctx.clear_kv_cache_seq(Some(v.id as u32), None, None);
                        v.cached.clear();
                        v.release();
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "llama_decode failed; failing the active requests");
                fail_all(&mut slots, &mut ctx, "inference failed in the engine; see the server log");
                continue;
            }
        }

        // Sample.
        for s in slots.iter_mut() {
            let Some(i) = s.i_batch.take() else { continue };
            let Some(sampler) = s.sampler.as_mut() else { continue };
            // `sample` also accepts the token into the chain (grammar, penalties): never again.
            let tok = sampler.sample(&ctx, i);
            if s.phase == Phase::Prompt {
                s.phase = Phase::Generating;
            }
            s.first_token.get_or_insert_with(Instant::now);
            s.last = tok;
            if vocab.is_eog(tok) {
                s.finish(FinishReason::Stop);
                continue;
            }
            s.n_gen += 1;
            cfg.stats.generated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let piece = vocab.token_to_piece(tok, false, None);
            let text = take_utf8(&mut s.utf8, &piece);
            let (out, stopped) = match s.stop.push(&text) {
                StopOutcome::Continue(t) => (t, false),
                StopOutcome::Stopped(t) => (t, true),
            };
            if !out.is_empty() {
                if let Some(tx) = &s.tx {
                    if tx.try_send(GenEvent::Text { text: out, tokens: s.n_gen }).is_err() {
                        // Closed (client left) or a client that reads nothing for 1024 pieces.
                        s.release();
                        continue;
                    }
                }
            }
            if stopped {
                s.finish(FinishReason::Stop);
            } else if s.n_gen >= s.max_new || s.cached.len() + 1 >= n_ctx as usize {
                s.finish(FinishReason::Length);
            }
        }
    }
}

fn handle_cmd(cmd: Cmd, pending: &mut VecDeque<GenJob>, ctx: &mut LlamaContext<'_>, model: &LlamaModel) {
    match cmd {
        Cmd::Generate(job) => pending.push_back(job),
        Cmd::Embed(job) => {
            let _ = job
                .reply
                .send(Err(crate::EngineError::NotEmbedding(model.meta_val_str("general.name").unwrap_or_default())));
            let _ = ctx;
        }
    }
}

fn admit(s: &mut Slot, job: GenJob, ctx: &mut LlamaContext<'_>, model: &LlamaModel, n_ctx: usize) {
    if job.prompt.is_empty() || job.prompt.len() >= n_ctx {
        let _ = job.events.try_send(GenEvent::Error(format!(
            "the prompt has {} tokens; this model's context holds {} (including the reply)",
            job.prompt.len(),
            n_ctx
        )));
        return;
    }
    let mut n_past = reusable(s, &job);
    if n_past == job.prompt.len() {
        // At least one token must be decoded to get logits.
        n_past -= 1;
    }
    if ctx.clear_kv_cache_seq(Some(s.id as u32), Some(n_past as u32), None).is_err() {
        n_past = 0;
        let _ = ctx.clear_kv_cache_seq(Some(s.id as u32), None, None);
    }
    s.cached.truncate(n_past);
    let sampler = match build_sampler(model, &job.params, &job.prompt) {
        Ok(smp) => smp,
        Err(e) => {
            let _ = job.events.try_send(GenEvent::Error(e.to_string()));
            return;
        }
    };
    s.cache_hit = n_past;
    s.n_past = n_past;
    s.adapter = job.adapter;
    s.served = Instant::now();
    s.prompt = job.prompt;
    s.sampler = Some(sampler);
    s.phase = Phase::Prompt;
    s.n_gen = 0;
    s.max_new = job.max_tokens.max(1);
    s.utf8.clear();
    s.stop = StopFilter::new(job.stop);
    s.tx = Some(job.events);
    s.active = Some(job.active);
    s.started = job.queued_at;
    s.first_token = None;
    s.last_used = Instant::now();
}

/// Drop the prefix cache of the least recently used idle slot that has one; false if none has.
fn purge_one_idle(slots: &mut [Slot], ctx: &mut LlamaContext<'_>) -> bool {
    let Some(s) =
        slots.iter_mut().filter(|s| s.phase == Phase::Idle && !s.cached.is_empty()).min_by_key(|s| s.last_used)
    else {
        return false;
    };
    tracing::debug!(slot = s.id, tokens = s.cached.len(), "KV cache full; dropping an idle slot's prefix cache");
    let _ = ctx.clear_kv_cache_seq(Some(s.id as u32), None, None);
    s.cached.clear();
    true
}

fn fail_all(slots: &mut [Slot], ctx: &mut LlamaContext<'_>, msg: &str) {
    for s in slots.iter_mut().filter(|s| s.phase != Phase::Idle) {
        if let Some(tx) = &s.tx {
            let _ = tx.try_send(GenEvent::Error(msg.to_owned()));
        }
        let _ = ctx.clear_kv_cache_seq(Some(s.id as u32), None, None);
        s.cached.clear();
        s.release();
    }
}

/// Run the embedding loop: each job's inputs are decoded together (one sequence each) and
/// pooled by the model's pooling type; vectors are L2-normalised.
pub(crate) fn run_embeddings(
    model: Arc<LlamaModel>,
    backend: &'static llama_cpp_2::llama_backend::LlamaBackend,
    cfg: RunnerConfig,
    rx: Receiver<Cmd>,
    ready: std::sync::mpsc::Sender<Result<u32, String>>,
) {
    let n_seq = 64u32;
    let n_ctx_train = model.n_ctx_train().max(1);
    let n_batch = cfg.n_batch.max(n_ctx_train);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_batch))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(n_seq)
        .with_kv_unified(true)
        .with_embeddings(true)
        .with_n_threads(cfg.n_threads)
        .with_n_threads_batch(cfg.n_threads);
    let Some(mut ctx) = open_context(&model, backend, params, &ready) else { return };
    let _ = ready.send(Ok(n_ctx_train));
    let mut batch = LlamaBatch::new(n_batch as usize, 1);
    while let Ok(cmd) = rx.recv() {
        let job = match cmd {
            Cmd::Embed(j) => j,
            Cmd::Generate(j) => {
                let _ = j.events.try_send(GenEvent::Error("this is an embedding model; use /v1/embeddings".into()));
                continue;
            }
        };
        let result =
            embed_all(&mut ctx, &mut batch, &job.inputs, n_batch as usize, n_seq as usize, n_ctx_train as usize);
        let _ = job.reply.send(result);
    }
}

fn embed_all(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    inputs: &[Vec<LlamaToken>],
    n_batch: usize,
    n_seq: usize,
    n_ctx_train: usize,
) -> Result<Vec<Vec<f32>>, crate::EngineError> {
    if let Some((i, t)) = inputs.iter().enumerate().find(|(_, t)| t.len() > n_ctx_train || t.is_empty()) {
        return Err(crate::EngineError::ContextOverflow { index: i, tokens: t.len(), limit: n_ctx_train });
    }
    let mut out = Vec::with_capacity(inputs.len());
    let mut start = 0;
    while start < inputs.len() {
        // As many inputs as fit in one decode.
        let mut end = start;
        let mut total = 0;
        while end < inputs.len() && end - start < n_seq && total + inputs[end].len() <= n_batch {
            total += inputs[end].len();
            end += 1;
        }
        ctx.clear_kv_cache();
        batch.clear();
        for (seq, toks) in inputs[start..end].iter().enumerate() {
            for (pos, t) in toks.iter().enumerate() {
                batch
                    .add(*t, pos as i32, &[seq as i32], true)
                    .map_err(|e| crate::EngineError::Internal(e.to_string()))?;
            }
        }
        ctx.decode(batch).map_err(|e| crate::EngineError::Internal(e.to_string()))?;
        for seq in 0..(end - start) {
            let v = ctx.embeddings_seq_ith(seq as i32).map_err(|e| crate::EngineError::Internal(e.to_string()))?;
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            out.push(v.iter().map(|x| x / norm).collect());
        }
        start = end;
    }
    Ok(out)
}
