//! Request parameters → a llama.cpp sampler chain.
//!
//! Order: grammar (constrains), logit bias, penalties, then greedy (temperature ≤ 0) or
//! top-k → top-p → min-p → temperature → seeded draw. The chain's `sample` accepts the token
//! itself; the engine never accepts twice (a second accept advances a grammar past its state
//! and aborts the process, llama-cpp-rs#1007). The prompt primes only chains without a grammar.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;

use crate::{EngineError, SamplingParams};

pub(crate) fn build_sampler(
    model: &LlamaModel,
    p: &SamplingParams,
    prompt: &[LlamaToken],
) -> Result<LlamaSampler, EngineError> {
    let n_vocab = model.n_vocab();
    let mut chain = Vec::new();
    let has_grammar = p.grammar.is_some();
    if let Some(g) = &p.grammar {
        chain.push(LlamaSampler::grammar(model, g, "root").map_err(|e| EngineError::Grammar(e.to_string()))?);
    }
    if !p.logit_bias.is_empty() {
        for (tok, _) in &p.logit_bias {
            if *tok < 0 || *tok >= n_vocab {
                return Err(EngineError::BadRequest(format!(
                    "logit_bias names token {tok}, outside the vocabulary (0..{n_vocab})"
                )));
            }
        }
        let biases: Vec<LlamaLogitBias> =
            p.logit_bias.iter().map(|(t, b)| LlamaLogitBias::new(LlamaToken(*t), *b)).collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    let penalize = p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
    if penalize {
        chain.push(LlamaSampler::penalties(n_vocab, 64, 1.0, p.frequency_penalty, p.presence_penalty));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(p.top_k));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        chain.push(LlamaSampler::dist(p.seed));
    }
    let sampler = LlamaSampler::chain_simple(chain);
    Ok(if penalize && !has_grammar { sampler.with_tokens(prompt.iter().copied()) } else { sampler })
}
