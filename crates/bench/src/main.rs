//! Load generator behind `bench/inference.sh`.
//!
//! `maasbox-bench run` streams greedy `/v1/completions` from several OpenAI-compatible servers,
//! interleaved, writes each one's figures as JSON and prints them side by side (`maasbox-bench
//! table` prints saved figures again). Every request gets a prompt that differs from the others in its first words, so no
//! server can answer from a prompt cache and prompt speed is measured on a full prefill.

mod knowledge;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Streams OpenAI completions from a server and prints throughput and latency")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure servers, write their figures as JSON and print the table.
    Run(RunArgs),
    /// Latency of short non-streaming chat requests through several targets (e.g. a server
    /// directly and through a gateway), interleaved; prints p50/p99 side by side.
    Latency(LatencyArgs),
    /// The knowledge index on a generated corpus (ingest rate, search latency; data for peers).
    Knowledge(knowledge::KnowledgeArgs),
    /// Print the figures of several runs as one table; the first file is the reference.
    Table {
        /// JSON files written by `run`.
        files: Vec<PathBuf>,
    },
}

#[derive(Parser)]
struct RunArgs {
    /// A server: `LABEL=URL=MODEL[=KEY]`; repeat for each server. Measurements interleave
    /// the servers (run 1 on each, then run 2 on each, …) so drift in the machine's speed
    /// falls on all of them alike.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Approximate prompt length in tokens (the passage is repeated to reach it).
    #[arg(long, default_value_t = 200)]
    prompt_tokens: usize,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Single-stream runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Concurrency levels, comma-separated.
    #[arg(long, default_value = "1,4,8,16", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Requests each client sends one after another at each concurrency level.
    #[arg(long, default_value_t = 1)]
    requests_per_client: usize,
    /// Directory for one JSON file of figures per server (`LABEL.json`).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Parser)]
struct LatencyArgs {
    /// `LABEL=URL=MODEL[=KEY]`; the first is the reference the others are compared with.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// Concurrency levels.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Rounds per level; in each round every target serves `clients` × 4 requests.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Tokens to generate per request.
    #[arg(long, default_value_t = 1)]
    max_tokens: u32,
    /// Approximate prompt length in tokens.
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
}

/// What one streamed request measured.
#[derive(Debug, Clone, Copy)]
struct Sample {
    prompt_tokens: usize,
    completion_tokens: usize,
    ttft: Duration,
    /// From the first content chunk to the last one.
    decode: Duration,
    total: Duration,
}

/// JSON has no NaN (serde_json writes null): read null back as NaN ("not reported").
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Serialize, Deserialize, Debug)]
struct Level {
    clients: usize,
    requests: usize,
    #[serde(deserialize_with = "nan_if_null")]
    aggregate_tok_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    ttft_p50_ms: f64,
    #[serde(deserialize_with = "nan_if_null")]
    ttft_p99_ms: f64,
}

#[derive(Serialize, Deserialize, Debug)]
struct Report {
    label: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    #[serde(deserialize_with = "nan_if_null")]
    decode_tok_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    prompt_tok_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    ttft_ms: f64,
    levels: Vec<Level>,
}

const PASSAGE: &str = "The river town woke slowly. Fishermen checked their nets along the grey stone quay, \
a baker pulled the first loaves from a brick oven, and children ran past the shuttered market with a \
dog at their heels. Above the hills the clouds thinned, and the bell of the old church rang seven times. ";

/// A prompt of about `tokens` tokens whose first words are unique to `n`.
fn prompt(n: usize, tokens: usize) -> String {
    // The passage is about 70 tokens for BPE tokenizers of the SmolLM/Llama kind.
    let reps = tokens.div_ceil(70).max(1);
    format!("Story {n}, chapter {}. {}Continue the story:", n * 7 + 3, PASSAGE.repeat(reps))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

#[derive(Clone)]
struct Target {
    http: reqwest::Client,
    url: String,
    model: String,
    key: Option<String>,
    prompt_tokens: usize,
    max_tokens: u32,
}

/// `LABEL=URL=MODEL[=KEY]`.
fn parse_target(spec: &str, http: &reqwest::Client, prompt_tokens: usize, max_tokens: u32) -> Result<(String, Target)> {
    let parts: Vec<&str> = spec.splitn(4, '=').collect();
    let [label, url, model, rest @ ..] = parts.as_slice() else {
        bail!("--target wants LABEL=URL=MODEL[=KEY], not {spec}");
    };
    let t = Target {
        http: http.clone(),
        url: url.trim_end_matches('/').to_owned(),
        model: (*model).to_owned(),
        key: rest.first().map(|k| (*k).to_owned()),
        prompt_tokens,
        max_tokens,
    };
    Ok(((*label).to_owned(), t))
}

impl Target {
    /// Stream one greedy completion and time it.
    async fn request(&self, n: usize) -> Result<Sample> {
        let body = json!({
            "model": self.model,
            "prompt": prompt(n, self.prompt_tokens),
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let mut req = self.http.post(format!("{}/v1/completions", self.url)).json(&body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let t0 = Instant::now();
        let resp = req.send().await?;
        if !resp.status().is_success() {
            bail!("{}: {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::<u8>::new();
        let (mut first, mut last) = (None, None);
        let mut chunks = 0usize;
        let mut usage: Option<(usize, usize)> = None;
        let mut done = false;
        while let Some(bytes) = stream.next().await {
            buf.extend_from_slice(&bytes?);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..end + 2).collect();
                for line in String::from_utf8_lossy(&event).lines() {
                    let Some(data) = line.strip_prefix("data:") else { continue };
                    let data = data.trim();
                    if data == "[DONE]" {
                        done = true;
                        continue;
                    }
                    let v: Value = serde_json::from_str(data).with_context(|| format!("bad chunk: {data}"))?;
                    if let Some(err) = v.get("error") {
                        bail!("server error: {err}");
                    }
                    let text = v["choices"][0]["text"].as_str().unwrap_or_default();
                    if !text.is_empty() {
                        let now = Instant::now();
                        first.get_or_insert(now);
                        last = Some(now);
                        chunks += 1;
                    }
                    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                        usage = Some((
                            u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                            u["completion_tokens"].as_u64().unwrap_or(0) as usize,
                        ));
                    }
                }
            }
        }
        if !done {
            bail!("the stream ended without [DONE]");
        }
        let first = first.context("no text was streamed")?;
        let last = last.unwrap_or(first);
        // A server that does not report usage in streams: one chunk per token.
        let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, chunks));
        Ok(Sample { prompt_tokens, completion_tokens, ttft: first - t0, decode: last - first, total: t0.elapsed() })
    }
}

struct Figures {
    decode: Vec<f64>,
    prompt: Vec<f64>,
    ttft: Vec<f64>,
    tokens: (usize, usize),
    levels: Vec<Level>,
}

/// `clients` concurrent clients, each sending `per` requests one after another.
async fn level(t: &Arc<Target>, clients: usize, per: usize, first: usize) -> Result<Level> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let t = t.clone();
            tokio::spawn(async move {
                let mut out = vec![];
                for r in 0..per {
                    out.push(t.request(first + c * per + r).await?);
                }
                anyhow::Ok(out)
            })
        })
        .collect();
    let mut samples = vec![];
    for task in tasks {
        samples.extend(task.await??);
    }
    let wall = start.elapsed().as_secs_f64();
    let tokens: usize = samples.iter().map(|s| s.completion_tokens).sum();
    let mut ttfts: Vec<f64> = samples.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect();
    Ok(Level {
        clients,
        requests: samples.len(),
        aggregate_tok_s: tokens as f64 / wall,
        ttft_p50_ms: percentile(&mut ttfts, 50.0),
        ttft_p99_ms: percentile(&mut ttfts, 99.0),
    })
}

async fn run(a: RunArgs) -> Result<()> {
    // A fresh connection per request: some servers close idle keep-alive connections, and a
    // loopback connect costs microseconds beside these timings.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut targets = vec![];
    for spec in &a.targets {
        let (label, t) = parse_target(spec, &http, a.prompt_tokens, a.max_tokens)?;
        let t = Arc::new(t);
        // Warm-up: loads the model where loading is lazy, faults in the weights.
        t.request(1_000_000).await.with_context(|| format!("warm-up request to {label}"))?;
        targets.push((label, t));
    }
    let mut figs: Vec<Figures> = targets
        .iter()
        .map(|_| Figures { decode: vec![], prompt: vec![], ttft: vec![], tokens: (0, 0), levels: vec![] })
        .collect();
    let mut seq = 0usize;
    for _ in 0..a.runs {
        seq += 1;
        for ((label, t), f) in targets.iter().zip(&mut figs) {
            let s = t.request(seq).await.with_context(|| label.clone())?;
            eprintln!(
                "[{label}] single: prompt {} tok, ttft {:.1} ms, {} tok in {:.2} s",
                s.prompt_tokens,
                s.ttft.as_secs_f64() * 1e3,
                s.completion_tokens,
                s.total.as_secs_f64()
            );
            f.decode.push(s.completion_tokens.saturating_sub(1) as f64 / s.decode.as_secs_f64());
            if s.prompt_tokens > 0 {
                f.prompt.push(s.prompt_tokens as f64 / s.ttft.as_secs_f64());
            }
            f.ttft.push(s.ttft.as_secs_f64() * 1e3);
            f.tokens = (s.prompt_tokens, s.completion_tokens);
        }
    }
    for &clients in &a.clients {
        for ((label, t), f) in targets.iter().zip(&mut figs) {
            let l = level(t, clients, a.requests_per_client, seq + 1).await.with_context(|| label.clone())?;
            eprintln!(
                "[{label}] {clients} clients: {:.1} tok/s aggregate, ttft p50 {:.0} ms p99 {:.0} ms",
                l.aggregate_tok_s, l.ttft_p50_ms, l.ttft_p99_ms
            );
            f.levels.push(l);
        }
        seq += clients * a.requests_per_client;
    }
    std::fs::create_dir_all(&a.out)?;
    let mut files = vec![];
    for ((label, _), mut f) in targets.into_iter().zip(figs) {
        let report = Report {
            label: label.clone(),
            prompt_tokens: f.tokens.0,
            completion_tokens: f.tokens.1,
            decode_tok_s: median(&mut f.decode),
            prompt_tok_s: median(&mut f.prompt),
            ttft_ms: median(&mut f.ttft),
            levels: f.levels,
        };
        let path = a.out.join(format!("{label}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        files.push(path);
    }
    table(&files)
}

fn table(files: &[PathBuf]) -> Result<()> {
    let reports: Vec<Report> = files
        .iter()
        .map(|f| Ok(serde_json::from_slice(&std::fs::read(f).with_context(|| f.display().to_string())?)?))
        .collect::<Result<_>>()?;
    let Some(reference) = reports.first() else { bail!("no reports given") };
    let mut rows: Vec<(String, Vec<f64>, bool)> = vec![
        ("single-stream decode tok/s".into(), reports.iter().map(|r| r.decode_tok_s).collect(), true),
        ("single-stream prompt tok/s".into(), reports.iter().map(|r| r.prompt_tok_s).collect(), true),
        ("single-stream TTFT ms".into(), reports.iter().map(|r| r.ttft_ms).collect(), false),
    ];
    for (i, l) in reference.levels.iter().enumerate() {
        let at = |f: fn(&Level) -> f64| reports.iter().map(|r| r.levels.get(i).map_or(f64::NAN, f)).collect();
        rows.push((format!("{} clients: aggregate tok/s", l.clients), at(|l| l.aggregate_tok_s), true));
        rows.push((format!("{} clients: TTFT p50 ms", l.clients), at(|l| l.ttft_p50_ms), false));
        rows.push((format!("{} clients: TTFT p99 ms", l.clients), at(|l| l.ttft_p99_ms), false));
    }
    let mut header = format!("| {:<30} |", "metric");
    let mut rule = format!("|{}|", "-".repeat(32));
    for r in &reports {
        header += &format!(" {:>16} |", r.label);
        rule += &format!("{}:|", "-".repeat(17));
    }
    for r in &reports[1..] {
        header += &format!(" {:>16} |", format!("× {}", r.label));
        rule += &format!("{}:|", "-".repeat(17));
    }
    println!("{header}\n{rule}");
    for (name, vals, higher_better) in rows {
        let mut line = format!("| {name:<30} |");
        // NaN: the server did not report what the figure needs (e.g. usage in streams).
        let cell = |v: f64, text: String| if v.is_finite() { text } else { "n/a".to_owned() };
        for v in &vals {
            line += &format!(" {:>16} |", cell(*v, format!("{v:.1}")));
        }
        // Ratios read "how many times better the first server is".
        for v in &vals[1..] {
            let ratio = if higher_better { vals[0] / v } else { v / vals[0] };
            line += &format!(" {:>16} |", cell(ratio, format!("{ratio:.2}×")));
        }
        println!("{line}");
    }
    let tokens: Vec<String> =
        reports.iter().map(|r| format!("{} {}+{}", r.label, r.prompt_tokens, r.completion_tokens)).collect();
    println!("\nprompt+generated tokens per request: {}", tokens.join(", "));
    Ok(())
}

/// One non-streaming chat request; its wall time in ms.
async fn chat_once(http: &reqwest::Client, t: &Target, n: usize) -> Result<f64> {
    let body = json!({
        "model": t.model,
        "messages": [{"role": "user", "content": prompt(n, t.prompt_tokens)}],
        "max_tokens": t.max_tokens,
        "temperature": 0.0,
    });
    let mut req = http.post(format!("{}/v1/chat/completions", t.url)).json(&body);
    if let Some(k) = &t.key {
        req = req.bearer_auth(k);
    }
    let t0 = Instant::now();
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

async fn latency(a: LatencyArgs) -> Result<()> {
    let http = reqwest::Client::new();
    let targets: Vec<(String, Target)> = a
        .targets
        .iter()
        .map(|spec| {
            let (label, t) = parse_target(spec, &http, a.prompt_tokens, a.max_tokens)?;
            Ok((label, t))
        })
        .collect::<Result<_>>()?;
    // Warm up: load the model, open connections.
    for (label, t) in &targets {
        chat_once(&http, t, 0).await.with_context(|| label.clone())?;
    }
    println!("| clients | target | requests | p50 ms | p99 ms | added p50 ms | added p99 ms |");
    println!("|--------:|--------|---------:|-------:|-------:|-------------:|-------------:|");
    let mut seq = 1;
    for &clients in &a.clients {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        for _ in 0..a.rounds {
            for (i, (_, t)) in targets.iter().enumerate() {
                let tasks = (0..clients).map(|c| {
                    let (http, t) = (http.clone(), t.clone());
                    let first = seq + c * 4;
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for r in 0..4 {
                            out.push(chat_once(&http, &t, first + r).await?);
                        }
                        anyhow::Ok(out)
                    })
                });
                for task in futures::future::join_all(tasks).await {
                    samples[i].extend(task??);
                }
                seq += clients * 4;
            }
        }
        let mut reference = (0.0, 0.0);
        for (i, (label, _)) in targets.iter().enumerate() {
            let n = samples[i].len();
            let (p50, p99) = (percentile(&mut samples[i], 50.0), percentile(&mut samples[i], 99.0));
            if i == 0 {
                reference = (p50, p99);
            }
            let added = |x: f64, r: f64| if i == 0 { "-".to_owned() } else { format!("{:+.1}", x - r) };
            println!(
                "| {clients} | {label} | {n} | {p50:.1} | {p99:.1} | {} | {} |",
                added(p50, reference.0),
                added(p99, reference.1)
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => run(a).await,
        Cmd::Latency(a) => latency(a).await,
        Cmd::Table { files } => table(&files),
        Cmd::Knowledge(a) => knowledge::run(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        let mut v = vec![3.0, 1.0, 2.0];
        assert_eq!(percentile(&mut v, 99.0), 3.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn missing_figures_survive_the_json_round_trip() {
        let r = Report {
            label: "x".into(),
            prompt_tokens: 0,
            completion_tokens: 1,
            decode_tok_s: 2.0,
            prompt_tok_s: f64::NAN,
            ttft_ms: 3.0,
            levels: vec![],
        };
        let back: Report = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert!(back.prompt_tok_s.is_nan());
        assert_eq!(back.decode_tok_s, 2.0);
    }

    #[test]
    fn prompts_differ_from_the_first_words() {
        let (a, b) = (prompt(1, 200), prompt(2, 200));
        assert_ne!(a.split_whitespace().nth(1), b.split_whitespace().nth(1));
        assert_eq!(a.len(), b.len());
    }
}
