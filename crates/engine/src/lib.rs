//! maasbox-engine: the seam between the API and local inference.
//!
//! This crate will be the only one that imports `llama-cpp-2`: one OS thread per loaded model,
//! continuous batching, the model manager. Until that lands, [`EngineHandle`] is the type the
//! API state holds and reports through `/health/engine`; it has no models and claims none.

use serde::Serialize;

/// What `/health/engine` shows.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EngineStatus {
    /// Which backend this build was compiled with (`cpu` by default).
    pub backend: &'static str,
    /// Models currently loaded.
    pub loaded_models: Vec<String>,
    /// Whether the engine can serve inference in this build.
    pub inference_available: bool,
}

/// Handle to the inference engine, cheap to clone, held by the API state.
#[derive(Clone, Debug, Default)]
pub struct EngineHandle {
    _private: (),
}

impl EngineHandle {
    /// An engine with no models loaded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Current status.
    pub fn status(&self) -> EngineStatus {
        EngineStatus { backend: "cpu", loaded_models: Vec::new(), inference_available: false }
    }
}
