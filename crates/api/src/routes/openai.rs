//! The OpenAI-compatible `/v1`: models, chat completions, completions, embeddings.
//!
//! Every request needs a key or session with the `Inference` permission and a key that allows
//! the model; every request writes one audit event (model, tokens, latency, outcome), committed
//! before the last byte of the response is sent — in streams, before the final chunk and
//! `[DONE]`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use maasbox_engine::{ChatMessage, FinishReason, GenEvent, LoadedModel, SamplingParams, Usage};
use maasbox_store::{apps, models};
use maasbox_types::{now_millis, now_secs, AppParams, ErrorCode, Permission};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::Principal;
use crate::error::{from_value, ApiError, ApiJson, ApiResult};
use crate::quota::Permit;
use crate::routes::gateway::{self, Endpoint, Finished, Route, Target, Upstreamed};
use crate::routes::models::{ensure_loaded, parse_keep_alive};
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
}

/// `"stop"`: a string or a list of strings.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

/// Message content: a string, or a list of parts of which only text is supported.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize, Debug)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Debug)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize, Debug)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    json_schema: Option<JsonSchemaFormat>,
}

#[derive(Deserialize, Debug)]
struct JsonSchemaFormat {
    #[serde(default)]
    schema: Option<Value>,
}

/// Sampling and stopping fields shared by chat and completions.
#[derive(Deserialize, Debug, Default)]
struct Common {
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<i32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<StringOrList>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    logit_bias: Option<HashMap<String, f32>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    user: Option<String>,
    /// Ollama's extension: how long the model stays loaded after this request.
    #[serde(default)]
    keep_alive: Option<Value>,
    // Accepted by OpenAI, not supported here: present → 400 naming the field.
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    functions: Option<Value>,
    #[serde(default)]
    function_call: Option<Value>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<Value>,
    #[serde(default)]
    echo: Option<Value>,
    #[serde(default)]
    best_of: Option<Value>,
    #[serde(default)]
    suffix: Option<Value>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ChatRequest {
    /// Resolved from the raw body by the gateway; declared so the field is known.
    #[allow(dead_code)]
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    response_format: Option<ResponseFormat>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize, Debug)]
struct CompletionRequest {
    /// Resolved from the raw body by the gateway; declared so the field is known.
    #[allow(dead_code)]
    model: String,
    prompt: StringOrList,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct EmbeddingRequest {
    /// Resolved from the raw body by the gateway; declared so the field is known.
    #[allow(dead_code)]
    model: String,
    input: StringOrList,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    keep_alive: Option<Value>,
}

fn unsupported(field: &str, why: &str) -> ApiError {
    ApiError::new(ErrorCode::UnsupportedParameter, format!("'{field}' is not supported: {why}")).param(field)
}

/// Validate the shared fields; returns sampling parameters, stop strings, max tokens (if given).
fn common_params(c: &Common) -> ApiResult<(SamplingParams, Vec<String>, Option<usize>)> {
    let _ = &c.user;
    for (name, v) in [
        ("tools", &c.tools),
        ("tool_choice", &c.tool_choice),
        ("functions", &c.functions),
        ("function_call", &c.function_call),
        ("parallel_tool_calls", &c.parallel_tool_calls),
    ] {
        if v.is_some() {
            return Err(unsupported(name, "tool calling is not available yet"));
        }
    }
    for (name, v) in [
        ("logprobs", &c.logprobs),
        ("top_logprobs", &c.top_logprobs),
        ("echo", &c.echo),
        ("best_of", &c.best_of),
        ("suffix", &c.suffix),
    ] {
        if v.as_ref().is_some_and(|v| !v.is_null() && v != &json!(false)) {
            return Err(unsupported(name, "not implemented"));
        }
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(unsupported("n", "only n = 1 is supported"));
    }
    let mut p = SamplingParams::default();
    if let Some(t) = c.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::field("temperature", "temperature must be between 0 and 2"));
        }
        p.temperature = t;
    }
    if let Some(v) = c.top_p {
        if !(0.0..=1.0).contains(&v) || v == 0.0 {
            return Err(ApiError::field("top_p", "top_p must be in (0, 1]"));
        }
        p.top_p = v;
    }
    if let Some(v) = c.top_k {
        if v < 0 {
            return Err(ApiError::field("top_k", "top_k must be 0 (off) or positive"));
        }
        p.top_k = v;
    }
    if let Some(v) = c.min_p {
        if !(0.0..=1.0).contains(&v) {
            return Err(ApiError::field("min_p", "min_p must be between 0 and 1"));
        }
        p.min_p = v;
    }
    if let Some(s) = c.seed {
        p.seed = s as u32;
    }
    for (name, v, slot) in [
        ("presence_penalty", c.presence_penalty, &mut p.presence_penalty),
        ("frequency_penalty", c.frequency_penalty, &mut p.frequency_penalty),
    ] {
        if let Some(v) = v {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::field(name, format!("{name} must be between -2 and 2")));
            }
            *slot = v;
        }
    }
    if let Some(bias) = &c.logit_bias {
        for (k, v) in bias {
            let id: i32 = k
                .parse()
                .map_err(|_| ApiError::field("logit_bias", format!("logit_bias key '{k}' is not a token id")))?;
            if !(-100.0..=100.0).contains(v) {
                return Err(ApiError::field("logit_bias", "logit_bias values must be between -100 and 100"));
            }
            // OpenAI's -100 bans a token; llama.cpp needs -inf for a hard ban.
            p.logit_bias.push((id, if *v <= -100.0 { f32::NEG_INFINITY } else { *v }));
        }
    }
    let stop = c.stop.as_ref().map(|s| match s {
        StringOrList::One(s) => vec![s.clone()],
        StringOrList::Many(v) => v.clone(),
    });
    let stop = stop.unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::field("stop", "at most 4 stop sequences"));
    }
    let max = match (c.max_completion_tokens, c.max_tokens) {
        (Some(0), _) | (None, Some(0)) => return Err(ApiError::field("max_tokens", "max_tokens must be at least 1")),
        (Some(m), _) | (None, Some(m)) => Some(m as usize),
        (None, None) => None,
    };
    Ok((p, stop, max))
}

/// Fill the fields a request leaves out from its app's defaults.
fn apply_app_params(c: &mut Common, a: &AppParams) {
    c.temperature = c.temperature.or(a.temperature);
    c.top_p = c.top_p.or(a.top_p);
    c.top_k = c.top_k.or(a.top_k);
    c.min_p = c.min_p.or(a.min_p);
    if c.max_tokens.is_none() && c.max_completion_tokens.is_none() {
        c.max_tokens = a.max_tokens;
    }
    c.presence_penalty = c.presence_penalty.or(a.presence_penalty);
    c.frequency_penalty = c.frequency_penalty.or(a.frequency_penalty);
    if c.stop.is_none() && !a.stop.is_empty() {
        c.stop = Some(StringOrList::Many(a.stop.clone()));
    }
}

/// Check an app's default parameters as if a request had sent them.
pub(crate) fn validate_app_params(a: &AppParams) -> ApiResult<()> {
    let mut c = Common::default();
    apply_app_params(&mut c, a);
    common_params(&c).map(|_| ()).map_err(|e| {
        let param = e.param.as_deref().map_or("params".to_owned(), |f| format!("params.{f}"));
        e.param(param)
    })
}

/// `/v1/models`: the models and apps the caller may use (hidden ones are simply absent).
async fn list_models(State(st): State<AppState>, p: Principal) -> ApiResult<Json<Value>> {
    p.authorize(&st, Permission::Inference, "model.list").await?;
    let (recs, all_apps) = st.store().read(|c| Ok((models::list(c)?, apps::list(c)?))).await?;
    let usable: Vec<_> = recs.into_iter().filter(|r| gateway::sees(&p, &r.visibility)).collect();
    let mut data: Vec<Value> = Vec::new();
    if p.key_app.is_none() {
        data.extend(
            usable
                .iter()
                .filter(|r| p.may_use_model(&r.id))
                .map(|r| json!({"id": r.id, "object": "model", "created": r.created_at, "owned_by": "maasbox"})),
        );
    }
    let listed: std::collections::HashSet<String> =
        data.iter().filter_map(|m| m["id"].as_str().map(str::to_owned)).collect();
    if p.key_app.is_none() {
        let mut seen = listed;
        for u in st.0.upstreams.all().into_iter().filter(|u| u.rec.enabled) {
            for m in &u.rec.models {
                if p.may_use_model(m) && seen.insert(m.clone()) {
                    data.push(json!({"id": m, "object": "model", "created": u.rec.created_at, "owned_by": "upstream"}));
                }
            }
        }
    }
    for a in all_apps {
        let id = format!("app:{}", a.name);
        let model_ok = usable.iter().any(|r| r.id == a.model && (p.may_use_model(&r.id) || p.may_use_model(&id)));
        if model_ok && p.key_app.as_deref().is_none_or(|k| k == a.name) {
            data.push(json!({"id": id, "object": "model", "created": a.created_at, "owned_by": a.created_by}));
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

fn messages(req: &[Message]) -> ApiResult<Vec<ChatMessage>> {
    if req.is_empty() {
        return Err(ApiError::field("messages", "messages must not be empty"));
    }
    req.iter()
        .enumerate()
        .map(|(i, m)| {
            if !["system", "user", "assistant", "developer", "tool"].contains(&m.role.as_str()) {
                return Err(ApiError::field(&format!("messages[{i}].role"), format!("unknown role '{}'", m.role)));
            }
            let _ = &m.name;
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for part in parts {
                        if part.kind != "text" {
                            return Err(unsupported(
                                &format!("messages[{i}].content"),
                                &format!("'{}' parts are not supported", part.kind),
                            ));
                        }
                        s.push_str(part.text.as_deref().unwrap_or_default());
                    }
                    s
                }
            };
            let role = if m.role == "developer" { "system".to_owned() } else { m.role.clone() };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

struct Prepared {
    model: Arc<LoadedModel>,
    /// Index of the LoRA adapter in the loaded model.
    adapter: Option<usize>,
    prompt: Vec<i32>,
    params: SamplingParams,
    stop: Vec<String>,
    max_tokens: usize,
    stream: bool,
    include_usage: bool,
    /// Passages the answer may cite (chat with knowledge).
    citations: Option<Value>,
}

fn budget(st: &AppState, model: &LoadedModel, prompt_len: usize, max: Option<usize>, quota: u64) -> ApiResult<usize> {
    let n_ctx = model.info().n_ctx as usize;
    if prompt_len + 1 > n_ctx {
        return Err(ApiError::new(
            ErrorCode::ContextLengthExceeded,
            format!(
                "This model's maximum context length is {n_ctx} tokens. However, your prompt resulted in {prompt_len} tokens. \
                 Shorten the messages; nothing was truncated."
            ),
        )
        .param("messages"));
    }
    let room = n_ctx - prompt_len;
    Ok(max.unwrap_or(st.config().engine.default_max_tokens).min(room).min(quota.max(1) as usize))
}

/// The loaded model's index of the target's adapter.
fn adapter_index(model: &LoadedModel, target: &Target) -> ApiResult<Option<usize>> {
    match &target.adapter {
        None => Ok(None),
        Some(a) => model.info().adapters.iter().position(|x| x == a).map(Some).ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, format!("the adapter '{a}' is not loaded yet; retry")).retry_after(1)
        }),
    }
}

/// Load the target's model.
async fn load(st: &AppState, target: &Target, keep_alive: Option<&Value>) -> ApiResult<Arc<LoadedModel>> {
    let keep = keep_alive.map(parse_keep_alive).transpose()?;
    ensure_loaded(st, &target.model, target.adapter.as_deref(), keep).await
}

/// Resolve and admit a request, then serve it upstream when its first route is an upstream.
/// `Err` hands the request (its target and permit) to the local engine.
async fn route(
    st: &AppState,
    p: &Principal,
    endpoint: Endpoint,
    body: &mut Value,
    started: (i64, Instant),
) -> ApiResult<Result<Response, (Target, Permit)>> {
    let (target, permit) = gateway::enter(st, p, endpoint, body).await?;
    upstream_first(st, p, endpoint, target, permit, body, started).await
}

/// Serve an admitted request upstream when its first route is an upstream.
async fn upstream_first(
    st: &AppState,
    p: &Principal,
    endpoint: Endpoint,
    target: Target,
    permit: Permit,
    body: &Value,
    started: (i64, Instant),
) -> ApiResult<Result<Response, (Target, Permit)>> {
    if matches!(target.routes.first(), Some(Route::Local)) {
        return Ok(Err((target, permit)));
    }
    match gateway::try_upstreams(st, p, endpoint, target, body.clone(), permit, started).await? {
        Upstreamed::Done(r) => Ok(Ok(r)),
        Upstreamed::Local(local) => Ok(Err(*local)),
    }
}

/// `"knowledge": {"bases": [...], "top_k": n}` on a chat request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KnowledgeRequest {
    bases: Vec<String>,
    #[serde(default)]
    top_k: Option<usize>,
}

/// Passages retrieved for a chat request.
struct Retrieved {
    hits: Vec<maasbox_knowledge::Hit>,
    bases: Vec<String>,
}

impl Retrieved {
    /// The system text that carries the passages that fit in `budget` (as `count` measures
    /// text: tokens of the chat model, or characters for an upstream), and the passages used,
    /// numbered from 1. Each piece is measured once.
    fn context(&self, budget: usize, count: impl Fn(&str) -> usize) -> (String, Vec<&maasbox_knowledge::Hit>) {
        let head = "Answer using the numbered passages below when they are relevant and cite them as [n]. \
                    If they do not contain the answer, say so.\n\n";
        let mut text = head.to_owned();
        let mut size = count(head);
        let mut used = Vec::new();
        for h in &self.hits {
            let passage = format!("[{}] {} ({})\n{}\n\n", used.len() + 1, h.document, h.anchor, h.text);
            let n = count(&passage);
            if size + n > budget {
                break;
            }
            size += n;
            text.push_str(&passage);
            used.push(h);
        }
        if used.is_empty() {
            return (String::new(), used);
        }
        (text.trim_end().to_owned(), used)
    }

    fn citations(used: &[&maasbox_knowledge::Hit]) -> Value {
        Value::Array(
            used.iter()
                .enumerate()
                .map(|(i, h)| {
                    json!({"index": i + 1, "document": h.document, "anchor": h.anchor, "text": h.text,
                           "base": h.base, "document_id": h.document_id, "chunk_id": h.chunk_id, "score": h.score})
                })
                .collect(),
        )
    }

    fn audit(&self, used: &[&maasbox_knowledge::Hit]) -> Value {
        json!({"bases": self.bases, "retrieved": self.hits.len(), "chunks": used.iter().map(|h| h.chunk_id.clone()).collect::<Vec<_>>()})
    }
}

/// The text of the last user message of a raw chat body.
fn last_user_text(body: &Value) -> Option<String> {
    let msgs = body.get("messages")?.as_array()?;
    let m = msgs.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    match m.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n"))
        }
        _ => None,
    }
}

/// Retrieve for the last user turn from the request's `knowledge` bases (each must be readable:
/// 404 otherwise) or else the app's bases (those the caller may not read are skipped).
async fn retrieve(
    st: &AppState,
    p: &Principal,
    target: &Target,
    asked: Option<KnowledgeRequest>,
    body: &Value,
) -> ApiResult<Option<Retrieved>> {
    let (bases, top_k) = match (asked, target.app.as_ref().filter(|a| !a.knowledge_bases.is_empty())) {
        (Some(k), _) => {
            let top_k = k.top_k.unwrap_or(st.config().knowledge.rag_top_k);
            if !(1..=20).contains(&top_k) {
                return Err(ApiError::field("knowledge.top_k", "top_k must be between 1 and 20"));
            }
            (crate::routes::knowledge::bases_for(st, p, &k.bases, "knowledge.bases")?, top_k)
        }
        (None, Some(app)) => {
            let readable: Vec<_> = app
                .knowledge_bases
                .iter()
                .filter_map(|n| st.knowledge().base(n).ok())
                .filter(|b| crate::routes::knowledge::readable_through_app(p, b, &app.name))
                .collect();
            (readable, st.config().knowledge.rag_top_k)
        }
        (None, None) => return Ok(None),
    };
    let names: Vec<String> = bases.iter().map(|b| b.name.clone()).collect();
    let Some(query) = last_user_text(body).filter(|q| !q.trim().is_empty()) else {
        return Ok(Some(Retrieved { hits: Vec::new(), bases: names }));
    };
    if bases.is_empty() {
        return Ok(Some(Retrieved { hits: Vec::new(), bases: names }));
    }
    let hits =
        crate::routes::knowledge::search_bases(st, p, bases, &query, top_k, maasbox_knowledge::Mode::Hybrid).await?;
    Ok(Some(Retrieved { hits, bases: names }))
}

/// Put `context` into the conversation: appended to a leading system message, or as a new one.
fn insert_context(msgs: &mut Vec<ChatMessage>, context: String) {
    match msgs.first_mut().filter(|m| m.role == "system") {
        Some(m) => m.content = format!("{}\n\n{context}", m.content),
        None => msgs.insert(0, ChatMessage { role: "system".into(), content: context }),
    }
}

/// The same on a raw body bound upstream.
fn insert_context_json(body: &mut Value, context: String) {
    let Some(msgs) = body.get_mut("messages").and_then(Value::as_array_mut) else { return };
    match msgs.first_mut().filter(|m| m.get("role").and_then(Value::as_str) == Some("system")) {
        Some(m) if m.get("content").is_some_and(Value::is_string) => {
            let old = m["content"].as_str().unwrap_or_default().to_owned();
            m["content"] = json!(format!("{old}\n\n{context}"));
        }
        _ => msgs.insert(0, json!({"role": "system", "content": context})),
    }
}

/// Passages for an upstream model, whose tokenizer is unknown here: about 3 characters a token.
const UPSTREAM_CONTEXT_CHARS: usize = 6000;

async fn chat(State(st): State<AppState>, p: Principal, ApiJson(mut body): ApiJson<Value>) -> ApiResult<Response> {
    let started = (now_millis(), Instant::now());
    let asked = match body.as_object_mut().and_then(|o| o.remove("knowledge")) {
        None | Some(Value::Null) => None,
        Some(k) => Some(serde_json::from_value::<KnowledgeRequest>(k).map_err(|e| {
            ApiError::field("knowledge", format!("knowledge must be {{\"bases\": [names], \"top_k\": n}}: {e}"))
        })?),
    };
    let (mut target, permit) = gateway::enter(&st, &p, Endpoint::Chat, &mut body).await?;
    let retrieved = retrieve(&st, &p, &target, asked, &body).await?;
    if let Some(r) = retrieved.as_ref().filter(|_| !matches!(target.routes.first(), Some(Route::Local))) {
        let (context, used) = r.context(UPSTREAM_CONTEXT_CHARS, |t| t.chars().count());
        target.knowledge = Some(r.audit(&used));
        if !context.is_empty() {
            insert_context_json(&mut body, context);
        }
    }
    let (mut target, permit) = match upstream_first(&st, &p, Endpoint::Chat, target, permit, &body, started).await? {
        Ok(served) => return Ok(served),
        Err(local) => local,
    };
    let req: ChatRequest = from_value(body)?;
    let mut common = req.common;
    if let Some(app) = &target.app {
        apply_app_params(&mut common, &app.params);
    }
    let (mut params, stop, max) = common_params(&common)?;
    if let Some(rf) = &req.response_format {
        params.grammar = match rf.kind.as_str() {
            "text" => None,
            "json_object" => Some(json_grammar(&json!({"type": "object"}))?),
            "json_schema" => {
                let schema = rf.json_schema.as_ref().and_then(|j| j.schema.clone()).ok_or_else(|| {
                    ApiError::field("response_format.json_schema.schema", "json_schema needs a 'schema'")
                })?;
                Some(json_grammar(&schema)?)
            }
            other => {
                return Err(ApiError::field("response_format.type", format!("unknown response_format type '{other}'")))
            }
        };
    }
    let mut msgs = messages(&req.messages)?;
    if let Some(app) = target.app.as_ref().filter(|a| !a.system_prompt.is_empty()) {
        msgs.insert(0, ChatMessage { role: "system".into(), content: app.system_prompt.clone() });
    }
    if common.keep_alive.is_some() {
        parse_keep_alive(common.keep_alive.as_ref().unwrap_or(&Value::Null))?;
    }
    let model = load(&st, &target, common.keep_alive.as_ref()).await?;
    let mut citations = None;
    if let Some(r) = &retrieved {
        // Passages fill what the conversation and the answer leave of the context.
        let m2 = model.clone();
        let plain = msgs.clone();
        let base_len = tokio::task::spawn_blocking(move || m2.tokenize_chat(&plain))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()).param("messages"))?
            .len();
        let n_ctx = model.info().n_ctx as usize;
        let answer = max.unwrap_or(st.config().engine.default_max_tokens).min(n_ctx / 4);
        let room = n_ctx.saturating_sub(base_len + answer + 16);
        let m2 = model.clone();
        let (context, used) = r.context(room, |t| m2.tokenize(t).len());
        target.knowledge = Some(r.audit(&used));
        citations = Some(Retrieved::citations(&used));
        if !context.is_empty() {
            insert_context(&mut msgs, context);
        }
    }
    let m2 = model.clone();
    let prompt = tokio::task::spawn_blocking(move || m2.tokenize_chat(&msgs))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()).param("messages"))?;
    let max_tokens = budget(&st, &model, prompt.len(), max, permit.allowed_tokens())?;
    let adapter = adapter_index(&model, &target)?;
    let prep = Prepared {
        adapter,
        model,
        prompt,
        params,
        stop,
        max_tokens,
        stream: common.stream.unwrap_or(false),
        include_usage: common.stream_options.as_ref().is_some_and(|o| o.include_usage),
        citations,
    };
    run(st, p, prep, Metered { endpoint: Endpoint::Chat, target, permit, started }).await
}

async fn completions(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(mut body): ApiJson<Value>,
) -> ApiResult<Response> {
    let started = (now_millis(), Instant::now());
    let (target, permit) = match route(&st, &p, Endpoint::Completion, &mut body, started).await? {
        Ok(served) => return Ok(served),
        Err(local) => local,
    };
    let req: CompletionRequest = from_value(body)?;
    let (params, stop, max) = common_params(&req.common)?;
    let prompts = req.prompt.into_vec();
    if prompts.len() != 1 {
        return Err(unsupported("prompt", "send one prompt per request"));
    }
    if let Some(k) = &req.common.keep_alive {
        parse_keep_alive(k)?;
    }
    let model = load(&st, &target, req.common.keep_alive.as_ref()).await?;
    let prompt = model.tokenize(&prompts[0]);
    if prompt.is_empty() {
        return Err(ApiError::field("prompt", "prompt must not be empty"));
    }
    let max_tokens = budget(&st, &model, prompt.len(), Some(max.unwrap_or(16)), permit.allowed_tokens())
        .map_err(|e| e.param("prompt"))?;
    let adapter = adapter_index(&model, &target)?;
    let prep = Prepared {
        adapter,
        model,
        prompt,
        params,
        stop,
        max_tokens,
        stream: req.common.stream.unwrap_or(false),
        include_usage: req.common.stream_options.as_ref().is_some_and(|o| o.include_usage),
        citations: None,
    };
    run(st, p, prep, Metered { endpoint: Endpoint::Completion, target, permit, started }).await
}

fn json_grammar(schema: &Value) -> ApiResult<String> {
    maasbox_engine::json_schema_grammar(&schema.to_string())
        .map_err(|e| ApiError::field("response_format", e.to_string()))
}

/// An admitted request on its way through the engine.
struct Metered {
    endpoint: Endpoint,
    target: Target,
    permit: Permit,
    /// Start as wall-clock ms (the usage row) and as an instant (latency).
    started: (i64, Instant),
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

#[derive(Default)]
struct Outcome {
    usage: Usage,
    finish: Option<FinishReason>,
    error: Option<String>,
    /// The engine ended the request for lack of room: 503, retryable.
    overloaded: bool,
    cancelled: bool,
    ttft_ms: f64,
}

impl Outcome {
    /// Take one engine event; text comes back to be sent on.
    fn record(&mut self, ev: GenEvent) -> Option<String> {
        match ev {
            GenEvent::Text { text, tokens } => {
                self.usage.completion_tokens = tokens;
                return Some(text);
            }
            GenEvent::Done { finish_reason, usage, ttft_ms, .. } => {
                self.finish = Some(finish_reason);
                self.usage = usage;
                self.ttft_ms = ttft_ms;
            }
            GenEvent::Error(e) => self.error = Some(e),
            GenEvent::Overloaded(e) => {
                self.error = Some(e);
                self.overloaded = true;
            }
        }
        None
    }

    /// The event stream ended: without a finish or error (or the client leaving) it broke.
    fn close(&mut self) {
        if self.finish.is_none() && self.error.is_none() && !self.cancelled {
            self.error = Some("the engine stopped before finishing".into());
        }
    }
}

/// Meter and audit a finished request (see [`gateway::finish`]).
async fn finish(st: &AppState, p: &Principal, m: Metered, o: &Outcome, stream: bool) -> ApiResult<()> {
    let (status, failure) = if o.cancelled {
        (499, Some("client_disconnected"))
    } else if o.error.is_some() {
        if o.overloaded {
            (503, Some("engine_overloaded"))
        } else {
            (500, Some("engine_error"))
        }
    } else {
        (200, None)
    };
    let mut details = json!({"finish_reason": o.finish, "stream": stream});
    if m.endpoint != Endpoint::Embeddings {
        details["ttft_ms"] = json!(o.ttft_ms.round());
    }
    if let Some(e) = &o.error {
        details["error"] = json!(e);
    }
    let f = Finished {
        prompt_tokens: o.usage.prompt_tokens,
        completion_tokens: o.usage.completion_tokens,
        status,
        failure,
        details,
    };
    gateway::finish(st, p, m.endpoint, &m.target, m.permit, m.started, f).await
}

async fn run(st: AppState, p: Principal, prep: Prepared, metered: Metered) -> ApiResult<Response> {
    let kind = metered.endpoint;
    let model_name = prep.model.info().name.clone();
    let id = format!("{}-{}", if kind == Endpoint::Chat { "chatcmpl" } else { "cmpl" }, maasbox_crypto::random_hex(12));
    let created = now_secs();
    let prompt_len = prep.prompt.len();
    let mut events = prep
        .model
        .generate(prep.prompt, prep.params, prep.max_tokens, prep.stop, prep.adapter)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;

    if !prep.stream {
        // The request runs in its own task so that a client who hangs up still gets metered
        // and audited with what was generated until then; the engine stops at its next step.
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<ApiResult<(String, Outcome)>>();
        let (st2, p2) = (st.clone(), p.clone());
        tokio::spawn(async move {
            let mut done_tx = done_tx;
            let mut text = String::new();
            let mut out =
                Outcome { usage: Usage { prompt_tokens: prompt_len, ..Usage::default() }, ..Outcome::default() };
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = done_tx.closed() => { out.cancelled = true; break; }
                };
                let Some(ev) = ev else { break };
                if let Some(t) = out.record(ev) {
                    text.push_str(&t);
                }
            }
            drop(events);
            out.close();
            let r = finish(&st2, &p2, metered, &out, false).await.map(|()| (text, out));
            let _ = done_tx.send(r);
        });
        let (text, out) = (&mut done_rx).await.map_err(ApiError::internal)??;
        if let Some(e) = out.error {
            return Err(ApiError::new(if out.overloaded { ErrorCode::Unavailable } else { ErrorCode::Internal }, e));
        }
        let choice = match kind {
            Endpoint::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": out.finish, "logprobs": null})
            }
            _ => json!({"index": 0, "text": text, "finish_reason": out.finish, "logprobs": null}),
        };
        let object = if kind == Endpoint::Chat { "chat.completion" } else { "text_completion" };
        let mut body = json!({
            "id": id, "object": object, "created": created, "model": model_name,
            "choices": [choice], "usage": usage_json(&out.usage), "system_fingerprint": null,
        });
        if let Some(c) = prep.citations {
            body["citations"] = c;
        }
        return Ok(Json(body).into_response());
    }

    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    let include_usage = prep.include_usage;
    let citations = prep.citations;
    tokio::spawn(async move {
        let object = if kind == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" };
        let chunk = |delta: Value, finish: Option<FinishReason>| -> Event {
            let choice = match kind {
                Endpoint::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}),
                _ => {
                    json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish, "logprobs": null})
                }
            };
            let mut body = json!({"id": id, "object": object, "created": created, "model": model_name, "choices": [choice], "system_fingerprint": null});
            if include_usage {
                body["usage"] = Value::Null;
            }
            Event::default().data(body.to_string())
        };
        let mut out = Outcome { usage: Usage { prompt_tokens: prompt_len, ..Usage::default() }, ..Outcome::default() };
        if kind == Endpoint::Chat
            && tx.send(Ok(chunk(json!({"role": "assistant", "content": ""}), None))).await.is_err()
        {
            out.cancelled = true;
        }
        while !out.cancelled {
            let ev = tokio::select! {
                ev = events.recv() => ev,
                _ = tx.closed() => { out.cancelled = true; break; }
            };
            match ev {
                Some(ev) => {
                    if let Some(text) = out.record(ev) {
                        if tx.send(Ok(chunk(json!({"content": text}), None))).await.is_err() {
                            out.cancelled = true;
                        }
                    }
                }
                None => break,
            }
        }
        // Dropping the receiver tells the engine to free the slot at its next step.
        drop(events);
        out.close();
        // The audit event is committed before the final bytes go out.
        if let Err(e) = finish(&st, &p, metered, &out, true).await {
            let _ = tx.send(Ok(Event::default().data(serde_json::to_string(&e.body()).unwrap_or_default()))).await;
            let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
            return;
        }
        if out.cancelled {
            return;
        }
        if let Some(e) = out.error {
            let err = ApiError::new(if out.overloaded { ErrorCode::Unavailable } else { ErrorCode::Internal }, e);
            let _ = tx.send(Ok(Event::default().data(serde_json::to_string(&err.body()).unwrap_or_default()))).await;
        } else {
            let _ = tx.send(Ok(chunk(json!({}), out.finish))).await;
            if include_usage {
                let body = json!({"id": id, "object": object, "created": created, "model": model_name, "choices": [], "usage": usage_json(&out.usage)});
                let _ = tx.send(Ok(Event::default().data(body.to_string()))).await;
            }
            if let Some(c) = citations {
                let body = json!({"id": id, "object": object, "created": created, "model": model_name, "choices": [], "citations": c});
                let _ = tx.send(Ok(Event::default().data(body.to_string()))).await;
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response())
}

async fn embeddings(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(mut body): ApiJson<Value>,
) -> ApiResult<Response> {
    let started = (now_millis(), Instant::now());
    let (target, permit) = match route(&st, &p, Endpoint::Embeddings, &mut body, started).await? {
        Ok(served) => return Ok(served),
        Err(local) => local,
    };
    let req: EmbeddingRequest = from_value(body)?;
    let _ = &req.user;
    if req.dimensions.is_some() {
        return Err(unsupported("dimensions", "this model's vectors have a fixed size"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::field(
                "encoding_format",
                format!("encoding_format must be float or base64, not '{other}'"),
            ))
        }
    };
    let inputs = req.input.into_vec();
    if inputs.is_empty() || inputs.len() > 2048 {
        return Err(ApiError::field("input", "input must hold 1 to 2048 strings"));
    }
    if inputs.iter().any(String::is_empty) {
        return Err(ApiError::field("input", "input strings must not be empty"));
    }
    if let Some(k) = &req.keep_alive {
        parse_keep_alive(k)?;
    }
    let model = load(&st, &target, req.keep_alive.as_ref()).await?;
    let name = model.info().name.clone();
    let result = model.embed(&inputs).await;
    let (status, failure, n_tokens, error) = match &result {
        Ok((_, n)) => (200, None, *n, None),
        Err(e @ maasbox_engine::EngineError::ContextOverflow { .. }) => {
            (400, Some("context_length_exceeded"), 0, Some(e.to_string()))
        }
        Err(e @ maasbox_engine::EngineError::NotEmbedding(_)) => {
            (400, Some("not_an_embedding_model"), 0, Some(e.to_string()))
        }
        Err(e) => (500, Some("engine_error"), 0, Some(e.to_string())),
    };
    let f = Finished {
        prompt_tokens: n_tokens,
        completion_tokens: 0,
        status,
        failure,
        details: error.map_or(json!({}), |e| json!({"error": e})),
    };
    gateway::finish(&st, &p, Endpoint::Embeddings, &target, permit, started, f).await?;
    let vectors = result
        .map_err(|e| match e {
            maasbox_engine::EngineError::ContextOverflow { index, tokens, limit } => ApiError::new(
                ErrorCode::ContextLengthExceeded,
                format!("input {index} has {tokens} tokens; this model's maximum context length is {limit} tokens"),
            )
            .param("input"),
            maasbox_engine::EngineError::NotEmbedding(_) => {
                ApiError::field("model", format!("'{name}' is not an embedding model"))
            }
            e => ApiError::new(ErrorCode::Internal, e.to_string()),
        })?
        .0;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})).into_response())
}
