//! `/api/v1/conversations`: each user's chat history, kept on the server so it follows them
//! between browsers and the desktop window. A conversation belongs to the user who created it;
//! anyone else gets 404, admins included (history is private). Creating, renaming, appending
//! and deleting are audited by id and counts — message text never enters the audit chain.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use maasbox_store::{conversations, WriteOutcome};
use maasbox_types::{Conversation, Message, Permission};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;
use maasbox_types::ErrorCode;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_conversations, create_conversation))
        .routes(routes!(get_conversation, update_conversation, delete_conversation))
        .routes(routes!(append_messages))
}

const MAX_TITLE: usize = 200;
const MAX_MESSAGE_CHARS: usize = 200_000;
const MAX_APPEND: usize = 100;

/// `GET /api/v1/conversations` query.
#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only conversations changed before this (unix seconds): the next page.
    pub before: Option<i64>,
    /// Page size (1–200, default 50).
    pub limit: Option<i64>,
}

/// The caller's conversations.
#[derive(Serialize, ToSchema)]
pub struct ConversationList {
    /// Most recently changed first.
    pub data: Vec<Conversation>,
}

/// A conversation with its messages.
#[derive(Serialize, ToSchema)]
pub struct ConversationDetail {
    /// The conversation.
    #[serde(flatten)]
    pub conversation: Conversation,
    /// Oldest first.
    pub messages: Vec<Message>,
}

/// `POST /api/v1/conversations`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// Shown in the history (default "New chat").
    #[serde(default)]
    pub title: Option<String>,
    /// The model used.
    #[serde(default)]
    pub model: String,
    /// Messages to start with.
    #[serde(default)]
    pub messages: Vec<Message>,
}

/// `PATCH /api/v1/conversations/{id}`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    /// New title.
    #[serde(default)]
    pub title: Option<String>,
    /// New model.
    #[serde(default)]
    pub model: Option<String>,
}

/// `POST /api/v1/conversations/{id}/messages`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendMessages {
    /// Appended in order.
    pub messages: Vec<Message>,
    /// The model that answered (becomes the conversation's model).
    #[serde(default)]
    pub model: Option<String>,
}

/// Conversations belong to users; the owner token and API keys of no user have none.
fn user_of(p: &Principal) -> ApiResult<i64> {
    p.user_id.ok_or_else(|| {
        ApiError::new(ErrorCode::Forbidden, "conversations belong to users: sign in as a user to keep chat history")
    })
}

fn check_title(t: &str) -> ApiResult<String> {
    let t = t.trim();
    if t.is_empty() || t.chars().count() > MAX_TITLE {
        return Err(ApiError::field("title", format!("title must be 1-{MAX_TITLE} characters")));
    }
    Ok(t.to_owned())
}

fn check_messages(msgs: &[Message]) -> ApiResult<()> {
    if msgs.len() > MAX_APPEND {
        return Err(ApiError::field("messages", format!("at most {MAX_APPEND} messages at a time")));
    }
    for (i, m) in msgs.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::field(&format!("messages[{i}].role"), "role must be system, user or assistant"));
        }
        if m.content.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ApiError::field(
                &format!("messages[{i}].content"),
                format!("a message is at most {MAX_MESSAGE_CHARS} characters"),
            ));
        }
        if m.meta.to_string().len() > 64 * 1024 {
            return Err(ApiError::field(&format!("messages[{i}].meta"), "meta is at most 64 KiB of JSON"));
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = ConversationList)))]
async fn list_conversations(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<ConversationList>> {
    p.authorize(&st, Permission::Inference, "conversation.list").await?;
    let uid = user_of(&p)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let data = st.store().read(move |c| conversations::list(c, uid, q.before, limit)).await?;
    Ok(Json(ConversationList { data }))
}

#[utoipa::path(post, path = "/api/v1/conversations", tag = "conversations", security(("bearer" = [])), request_body = CreateConversation,
    responses((status = 201, body = Conversation), (status = 400, body = crate::error::ErrorBody)))]
async fn create_conversation(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateConversation>,
) -> ApiResult<(StatusCode, Json<Conversation>)> {
    p.authorize(&st, Permission::Inference, "conversation.create").await?;
    let uid = user_of(&p)?;
    let title = check_title(req.title.as_deref().unwrap_or("New chat"))?;
    check_messages(&req.messages)?;
    if req.model.chars().count() > 200 {
        return Err(ApiError::field("model", "model is at most 200 characters"));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let ev = p.event("conversation.create", format!("conversation:{id}"), json!({"messages": req.messages.len()}));
    let conv = st
        .store()
        .write(move |c| {
            conversations::create(c, uid, &id, &title, &req.model)?;
            let conv = conversations::append(c, uid, &id, &req.messages, None)?;
            Ok(WriteOutcome::audited(conv, ev))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(conv)))
}

#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = ConversationDetail), (status = 404, body = crate::error::ErrorBody)))]
async fn get_conversation(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ConversationDetail>> {
    p.authorize(&st, Permission::Inference, "conversation.read").await?;
    let uid = user_of(&p)?;
    let (conversation, messages) =
        st.store().read(move |c| Ok((conversations::get(c, uid, &id)?, conversations::messages(c, uid, &id)?))).await?;
    Ok(Json(ConversationDetail { conversation, messages }))
}

#[utoipa::path(patch, path = "/api/v1/conversations/{id}", tag = "conversations", security(("bearer" = [])), params(("id" = String, Path)),
    request_body = UpdateConversation, responses((status = 200, body = Conversation), (status = 404, body = crate::error::ErrorBody)))]
async fn update_conversation(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateConversation>,
) -> ApiResult<Json<Conversation>> {
    p.authorize(&st, Permission::Inference, "conversation.update").await?;
    let uid = user_of(&p)?;
    let title = req.title.as_deref().map(check_title).transpose()?;
    let ev = p.event("conversation.update", format!("conversation:{id}"), json!({}));
    let conv = st
        .store()
        .write(move |c| {
            let (before, after) = conversations::update(c, uid, &id, title.as_deref(), req.model.as_deref())?;
            let mut ev = ev;
            ev.details = json!({"title": [before.title, after.title], "model": [before.model, after.model]});
            Ok(WriteOutcome::audited(after, ev))
        })
        .await?;
    Ok(Json(conv))
}

#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "conversations", security(("bearer" = [])), params(("id" = String, Path)),
    request_body = AppendMessages, responses((status = 200, body = Conversation), (status = 404, body = crate::error::ErrorBody)))]
async fn append_messages(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AppendMessages>,
) -> ApiResult<Json<Conversation>> {
    p.authorize(&st, Permission::Inference, "conversation.append").await?;
    let uid = user_of(&p)?;
    if req.messages.is_empty() {
        return Err(ApiError::field("messages", "give at least one message"));
    }
    check_messages(&req.messages)?;
    let ev = p.event("conversation.append", format!("conversation:{id}"), json!({"messages": req.messages.len()}));
    let conv = st
        .store()
        .write(move |c| {
            let conv = conversations::append(c, uid, &id, &req.messages, req.model.as_deref())?;
            Ok(WriteOutcome::audited(conv, ev))
        })
        .await?;
    Ok(Json(conv))
}

#[utoipa::path(delete, path = "/api/v1/conversations/{id}", tag = "conversations", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn delete_conversation(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    p.authorize(&st, Permission::Inference, "conversation.delete").await?;
    let uid = user_of(&p)?;
    let ev = p.event("conversation.delete", format!("conversation:{id}"), json!({}));
    st.store()
        .write(move |c| {
            let gone = conversations::delete(c, uid, &id)?;
            let mut ev = ev;
            ev.details = json!({"messages": gone.message_count});
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
