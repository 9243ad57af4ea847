//! Chat prompts without special-token injection.
//!
//! The model's template is rendered with a unique marker in place of each message's content.
//! The rendered text is then split at the markers: the template's own scaffolding is tokenized
//! with special-token parsing (so `<|im_start|>` becomes the control token), and every message
//! content is tokenized without it (so a user typing `<|im_end|>` gets plain text tokens).

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;

use crate::EngineError;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    /// The text.
    pub content: String,
}

fn marker(i: usize) -> String {
    // Private-use code points: never produced by tokenizers' normal text, never trimmed.
    format!("\u{F8FF}mbx{i}\u{F8FF}")
}

/// Tokens for `messages` with the assistant turn opened, and the rendered text (for logs/tests).
pub fn tokenize_chat(model: &LlamaModel, messages: &[ChatMessage]) -> Result<(Vec<LlamaToken>, String), EngineError> {
    let tmpl = match model.chat_template(None) {
        Ok(t) => t,
        Err(_) => LlamaChatTemplate::new("chatml").map_err(|e| EngineError::Template(e.to_string()))?,
    };
    let marked: Vec<LlamaChatMessage> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| LlamaChatMessage::new(m.role.clone(), marker(i)))
        .collect::<Result<_, _>>()
        .map_err(|e| EngineError::Template(e.to_string()))?;
    let rendered = model.apply_chat_template(&tmpl, &marked, true).map_err(|e| EngineError::Template(e.to_string()))?;

    let vocab = model.vocab();
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut rest = rendered.as_str();
    let mut first = true;
    for (i, m) in messages.iter().enumerate() {
        let mk = marker(i);
        let Some(at) = rest.find(&mk) else {
            return Err(EngineError::Template(format!("the chat template dropped message {i} ({})", m.role)));
        };
        let scaffold = &rest[..at];
        // BOS only when the vocabulary wants it and the template did not write it already.
        tokens.extend(vocab.tokenize(scaffold.as_bytes(), first && vocab.should_add_bos(), true));
        tokens.extend(vocab.tokenize(m.content.as_bytes(), false, false));
        text.push_str(scaffold);
        text.push_str(&m.content);
        rest = &rest[at + mk.len()..];
        first = false;
    }
    tokens.extend(vocab.tokenize(rest.as_bytes(), first && vocab.should_add_bos(), true));
    text.push_str(rest);
    Ok((tokens, text))
}

/// Tokens for a raw completion prompt (no special-token parsing: the caller's text is text).
pub fn tokenize_prompt(model: &LlamaModel, prompt: &str) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    vocab.tokenize(prompt.as_bytes(), vocab.should_add_bos(), false)
}
