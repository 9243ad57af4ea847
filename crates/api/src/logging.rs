//! One tracing pipeline: env filter, text or JSON to stderr, and a daily-rolling file under
//! `<data_dir>/logs` through `tracing-appender`.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber. Keep the returned guard alive for the life of the process:
/// dropping it flushes the file writer. `RUST_LOG`, when set, overrides `log.level`.
pub fn init_logging(cfg: &LogConfig, logs_dir: &Path) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = || EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&cfg.level));
    let filter_stderr = filter().map_err(|e| anyhow::anyhow!("invalid configuration key `log.level`: {e}"))?;
    let stderr = match cfg.format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_filter(filter_stderr).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).with_filter(filter_stderr).boxed(),
    };
    let (file, guard) = if cfg.file {
        let dir = logs_dir.to_owned();
        std::fs::create_dir_all(&dir)?;
        let appender = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix("maasbox")
            .filename_suffix("log")
            .max_log_files(cfg.max_files.max(1))
            .build(&dir)?;
        let (writer, guard) = tracing_appender::non_blocking(appender);
        let f = filter()?;
        // Files are always JSON lines: easy to ship and to grep with jq.
        (Some(fmt::layer().json().with_ansi(false).with_writer(writer).with_filter(f).boxed()), Some(guard))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))?;
    Ok(guard)
}
