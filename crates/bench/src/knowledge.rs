//! `maasbox-bench knowledge`: the knowledge index on a generated corpus of mixed English and
//! Chinese chunks. Ingests through the real MiniLM embedding model and the sled store, then
//! times keyword, vector and hybrid search; writes the texts, vectors, queries and its own
//! top-10 lists so `bench/knowledge_peers.py` can run faiss-cpu and bm25s on the same data.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use maasbox_engine::{EngineHandle, KeepAlive, ModelSpec};
use maasbox_knowledge::chunk::Draft;
use maasbox_knowledge::{Begin, Embedded, Knowledge, Mode, NewBase, Query};
use serde_json::json;

#[derive(Parser)]
pub struct KnowledgeArgs {
    /// The embedding model GGUF (models/cache/all-MiniLM-L6-v2.F32.gguf).
    #[arg(long)]
    model: PathBuf,
    /// Chunks in the corpus.
    #[arg(long, default_value_t = 10_000)]
    chunks: usize,
    /// CPU threads for embedding.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Queries per language.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Where the data for the peer script and `ours.json` go.
    #[arg(long)]
    out: PathBuf,
    /// Take the vectors from an earlier run's `vectors.f32` in `--out` (same corpus size)
    /// instead of embedding again: re-measures search without the long ingest.
    #[arg(long)]
    reuse_vectors: bool,
}

/// splitmix64: a small deterministic generator (the corpus is the same on every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

const EN: &str = "model server request token memory thread context batch queue cache network storage database index \
search query document page heading chunk vector score rank answer question user account password key audit chain \
hash signature policy quota limit usage report dashboard window browser desktop install update release version \
package library crate module function variable compiler runtime kernel driver device processor accelerator card \
cluster node machine rack power cooling fan disk volume backup snapshot restore recovery failure error warning \
latency throughput bandwidth speed benchmark measure figure table chart graph metric counter gauge histogram \
sample dataset training inference prompt reply stream event message channel topic subscriber publisher broker \
contract invoice payment budget finance revenue margin cost price customer supplier vendor partner market sales \
office building floor room badge security guard visitor entrance gate camera alarm lock door window schedule \
meeting calendar agenda minutes decision action owner deadline milestone project plan roadmap strategy goal \
team member manager engineer developer designer analyst operator administrator auditor reviewer tester writer \
river mountain forest ocean island valley desert village city harbour bridge tunnel road railway station airport \
weather rain snow wind storm summer winter spring autumn morning evening night weekend holiday journey travel \
kitchen recipe bread cheese apple orange coffee tea sugar salt butter garden flower tree grass stone water fire \
doctor hospital patient medicine nurse clinic health treatment symptom diagnosis therapy vaccine research lab \
school student teacher lesson course exam grade library book chapter story novel poem author reader language \
music song concert guitar piano violin drum singer band album film movie theatre actor camera scene picture art \
history empire king queen war peace treaty border nation government law court judge lawyer citizen vote election \
science physics chemistry biology energy atom molecule cell gene protein planet star galaxy telescope orbit \
software hardware firmware interface protocol encryption certificate firewall router switch gateway proxy tunnel \
migrate deploy configure monitor restart shutdown allocate schedule compress encrypt decrypt verify validate \
parse render compile link load unload retrieve embed segment tokenize normalise rotate archive export import \
quickly slowly carefully rarely often always never daily weekly monthly yearly locally remotely securely \
large small fast slow safe secure private public local remote offline online ready failed pending active idle";

const ZH: &str = "模型 服务器 请求 内存 线程 上下文 批处理 队列 缓存 网络 存储 数据库 索引 检索 查询 文档 页面 标题 \
向量 分数 排名 答案 问题 用户 账户 密码 密钥 审计 哈希 签名 策略 配额 限制 报告 仪表盘 窗口 浏览器 桌面 安装 更新 \
版本 软件 硬件 驱动 设备 处理器 加速卡 集群 节点 机器 机房 电源 散热 磁盘 备份 快照 恢复 故障 错误 警告 延迟 吞吐量 \
带宽 速度 基准 指标 数据集 训练 推理 提示 回复 消息 合同 发票 付款 预算 财务 收入 利润 成本 价格 客户 供应商 \
合作伙伴 市场 销售 办公室 大楼 楼层 门禁 安全 保安 访客 摄像头 报警 会议 日程 决议 负责人 截止日期 里程碑 项目 \
计划 战略 目标 团队 经理 工程师 开发者 分析师 管理员 审计员 河流 山脉 森林 海洋 城市 桥梁 铁路 车站 机场 天气 \
医生 医院 病人 药品 健康 治疗 研究 学校 学生 老师 课程 考试 图书馆 历史 政府 法律 法院 科学 物理 化学 生物 能源 \
加密 证书 防火墙 路由器 网关 代理 部署 配置 监控 重启 压缩 解密 验证 解析 分词 归档 导出 导入 本地 远程 离线 在线 \
国产 私有化 大模型 知识库 混合检索 关键词 中文 分词器 倒数排名 融合 国密 算法 签发 审批 流程 制度 规范 标准";

/// Zipf-like choice: rank r has weight 1/(r+1).
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Self {
        let mut acc = 0.0;
        Zipf(
            (0..n)
                .map(|r| {
                    acc += 1.0 / (r as f64 + 1.0);
                    acc
                })
                .collect(),
        )
    }
    fn pick(&self, rng: &mut Rng) -> usize {
        let x = rng.unit() * self.0.last().copied().unwrap_or(1.0);
        self.0.partition_point(|c| *c < x).min(self.0.len() - 1)
    }
}

fn english(rng: &mut Rng, words: &[&str], z: &Zipf) -> String {
    let mut s = String::new();
    for _ in 0..rng.range(3, 6) {
        let n = rng.range(7, 14);
        let mut sent: Vec<&str> = (0..n).map(|_| words[z.pick(rng)]).collect();
        let first = sent[0].to_owned();
        let cap = first[..1].to_uppercase() + &first[1..];
        sent[0] = "";
        s.push_str(&cap);
        for w in &sent[1..] {
            s.push(' ');
            s.push_str(w);
        }
        s.push_str(". ");
    }
    s.trim_end().to_owned()
}

fn chinese(rng: &mut Rng, words: &[&str], z: &Zipf) -> String {
    let mut s = String::new();
    for _ in 0..rng.range(3, 6) {
        for i in 0..rng.range(5, 10) {
            if i > 0 && i % 4 == 0 {
                s.push('，');
            }
            s.push_str(words[z.pick(rng)]);
        }
        s.push('。');
    }
    s
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize - 1;
    v[i.min(v.len() - 1)]
}

pub async fn run(a: KnowledgeArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let en: Vec<&str> = EN.split_whitespace().collect();
    let zh: Vec<&str> = ZH.split_whitespace().collect();
    let (zen, zzh) = (Zipf::new(en.len()), Zipf::new(zh.len()));
    let mut rng = Rng(42);
    let texts: Vec<(String, &str)> =
        (0..a.chunks)
            .map(|_| {
                if rng.unit() < 0.3 {
                    (chinese(&mut rng, &zh, &zzh), "zh")
                } else {
                    (english(&mut rng, &en, &zen), "en")
                }
            })
            .collect();

    let engine = EngineHandle::new();
    let spec = ModelSpec {
        name: "minilm".into(),
        path: a.model.clone(),
        n_ctx: None,
        parallel: 1,
        kv_unified: false,
        n_batch: 2048,
        n_threads: a.threads,
        n_gpu_layers: Some(0),
        adapters: Vec::new(),
    };
    let model = tokio::task::spawn_blocking(move || engine.load(&spec, KeepAlive::Forever)).await??;
    let dir = tempfile::tempdir()?;
    let k = Knowledge::open(&dir.path().join("kb"))?;
    k.create_base(NewBase {
        name: "bench".into(),
        description: String::new(),
        owner: "bench".into(),
        embedding_model: "minilm".into(),
        dim: model.info().n_embd as usize,
        chunk_tokens: 256,
        chunk_overlap: 0,
        visibility: Default::default(),
    })?;

    let dim = model.info().n_embd as usize;
    let reused: Option<Vec<Vec<f32>>> = if a.reuse_vectors {
        let bytes = std::fs::read(a.out.join("vectors.f32"))
            .context("--reuse-vectors needs vectors.f32 from an earlier run")?;
        let floats: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        anyhow::ensure!(floats.len() == a.chunks * dim, "vectors.f32 holds another corpus size");
        Some(floats.chunks(dim).map(<[f32]>::to_vec).collect())
    } else {
        None
    };
    // Ingest: documents of 1000 chunks, embedded 32 at a time, committed per document.
    eprintln!("ingesting {} chunks ({} threads)…", a.chunks, a.threads);
    let per_doc = 1000;
    let t0 = Instant::now();
    let mut doc_index: HashMap<u64, usize> = HashMap::new();
    let mut all_vectors: Vec<f32> = Vec::with_capacity(a.chunks * 384);
    let mut tokens = 0usize;
    for (di, docs) in texts.chunks(per_doc).enumerate() {
        let Begin::New(d) =
            k.begin_document("bench", &format!("doc{di}.txt"), &format!("{di:064x}"), 0, "bench", "bench")?
        else {
            anyhow::bail!("duplicate");
        };
        doc_index.insert(d.id, di);
        let mut chunks = Vec::with_capacity(docs.len());
        for (bi, batch) in docs.chunks(32).enumerate() {
            let (vectors, n) = match &reused {
                Some(all) => {
                    let first = di * per_doc + bi * 32;
                    (all[first..first + batch.len()].to_vec(), 0)
                }
                None => {
                    let inputs: Vec<String> = batch.iter().map(|t| t.0.clone()).collect();
                    model.embed(&inputs).await?
                }
            };
            tokens += n;
            for (t, v) in batch.iter().zip(vectors) {
                all_vectors.extend_from_slice(&v);
                chunks
                    .push(Embedded { draft: Draft { text: t.0.clone(), anchor: String::new(), tokens: 0 }, vector: v });
            }
        }
        k.commit_document("bench", d.id, "txt", chunks)?;
        if di % 10 == 9 {
            eprintln!(
                "  {} chunks, {:.0} chunks/s",
                (di + 1) * per_doc,
                ((di + 1) * per_doc) as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let ingest_s = t0.elapsed().as_secs_f64();
    let ingest_rate = a.chunks as f64 / ingest_s;
    eprintln!("ingested {} chunks ({} tokens) in {ingest_s:.1} s: {ingest_rate:.0} chunks/s", a.chunks, tokens);

    // Queries: mid-frequency words, 2–4 per English query, 1–3 per Chinese one.
    let mut qrng = Rng(7);
    let mut queries: Vec<(String, &str)> = Vec::new();
    for _ in 0..a.queries {
        let n = qrng.range(2, 5);
        let q: Vec<&str> = (0..n).map(|_| en[qrng.range(10, 300.min(en.len()))]).collect();
        queries.push((q.join(" "), "en"));
    }
    for _ in 0..a.queries {
        let n = qrng.range(1, 4);
        let q: String = (0..n).map(|_| zh[qrng.range(5, 150.min(zh.len()))]).collect();
        queries.push((q, "zh"));
    }
    let bases = vec!["bench".to_owned()];
    let idx_of = |h: &maasbox_knowledge::Hit| -> usize {
        let ord: usize = h.chunk_id.rsplit(':').next().and_then(|o| o.parse().ok()).unwrap_or(0);
        doc_index[&h.document_id] * per_doc + ord
    };
    // warm up
    for (q, _) in queries.iter().take(5) {
        let (v, _) = model.embed(std::slice::from_ref(q)).await?;
        let vectors = HashMap::from([("minilm".to_owned(), v[0].clone())]);
        k.search(&Query { bases: &bases, text: q, vectors: &vectors, mode: Mode::Hybrid, top_k: 10 })?;
    }
    let mut lat: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut qfile = std::io::BufWriter::new(std::fs::File::create(a.out.join("queries.jsonl"))?);
    for (q, lang) in &queries {
        let te = Instant::now();
        let (v, _) = model.embed(std::slice::from_ref(q)).await?;
        let embed_ms = te.elapsed().as_secs_f64() * 1000.0;
        lat.entry("embed").or_default().push(embed_ms);
        let vectors = HashMap::from([("minilm".to_owned(), v[0].clone())]);
        let mut tops = HashMap::new();
        for (mode, name) in [(Mode::Keyword, "keyword"), (Mode::Vector, "vector"), (Mode::Hybrid, "hybrid")] {
            let t = Instant::now();
            let hits = k.search(&Query { bases: &bases, text: q, vectors: &vectors, mode, top_k: 10 })?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            lat.entry(name).or_default().push(ms);
            if mode != Mode::Keyword {
                lat.entry(if mode == Mode::Vector { "vector+embed" } else { "hybrid+embed" })
                    .or_default()
                    .push(ms + embed_ms);
            }
            tops.insert(name, hits.iter().map(idx_of).collect::<Vec<_>>());
        }
        writeln!(
            qfile,
            "{}",
            json!({"text": q, "lang": lang, "vector": v[0], "keyword": tops["keyword"], "vector_top": tops["vector"], "hybrid": tops["hybrid"]})
        )?;
    }
    qfile.flush()?;
    let mut tf = std::io::BufWriter::new(std::fs::File::create(a.out.join("texts.jsonl"))?);
    for (t, _) in &texts {
        writeln!(tf, "{}", serde_json::to_string(t)?)?;
    }
    tf.flush()?;
    let bytes: Vec<u8> = all_vectors.iter().flat_map(|f| f.to_le_bytes()).collect();
    std::fs::write(a.out.join("vectors.f32"), bytes)?;
    std::fs::write(a.out.join("stopwords.json"), serde_json::to_string(maasbox_knowledge::text::ENGLISH_STOPWORDS)?)?;
    let mut figures = serde_json::Map::new();
    for (name, mut v) in lat {
        figures.insert(name.to_owned(), json!({"p50": pct(&mut v, 50.0), "p95": pct(&mut v, 95.0)}));
    }
    let mut ours = json!({"chunks": a.chunks, "threads": a.threads, "ingest_chunks_per_s": ingest_rate, "ingest_s": ingest_s, "tokens": tokens, "latency_ms": figures});
    if a.reuse_vectors {
        // Keep the ingest figures of the run that embedded.
        if let Ok(old) = std::fs::read_to_string(a.out.join("ours.json")) {
            let old: serde_json::Value = serde_json::from_str(&old)?;
            for k in ["ingest_chunks_per_s", "ingest_s", "tokens"] {
                ours[k] = old[k].clone();
            }
        }
    }
    std::fs::write(a.out.join("ours.json"), serde_json::to_string_pretty(&ours)?).context("writing ours.json")?;
    println!("{}", serde_json::to_string_pretty(&ours)?);
    Ok(())
}
