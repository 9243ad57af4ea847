//! Route modules; each exports `router()` for its part of `/api/v1`.

pub(crate) mod apps;
pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod bundles;
pub(crate) mod conversations;
pub(crate) mod gateway;
pub(crate) mod keys;
pub(crate) mod knowledge;
pub(crate) mod models;
pub(crate) mod openai;
pub(crate) mod pull;
pub(crate) mod settings;
pub(crate) mod system;
pub(crate) mod upstreams;
pub(crate) mod usage;
pub(crate) mod users;
