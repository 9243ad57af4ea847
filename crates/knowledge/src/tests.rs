//! Store-level tests with a bag-of-words hashing "embedding" (the API tests use the real
//! MiniLM model).

use super::*;
use crate::chunk::Draft;

fn embed(text: &str) -> Vec<f32> {
    let mut v = [0f32; 16];
    for t in text::terms(text) {
        let h = t.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        v[(h % 16) as usize] += 1.0;
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter().map(|x| x / n).collect()
}

fn base(k: &Knowledge, name: &str) -> KnowledgeBase {
    k.create_base(NewBase {
        name: name.into(),
        description: String::new(),
        owner: "alice".into(),
        embedding_model: "emb:latest".into(),
        dim: 16,
        chunk_tokens: 64,
        chunk_overlap: 8,
        visibility: Visibility::default(),
    })
    .unwrap()
}

fn add(k: &Knowledge, kb: &str, name: &str, texts: &[&str]) -> Document {
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(texts.join("|").as_bytes()));
    let Begin::New(d) = k.begin_document(kb, name, &digest, 10, "alice", "job").unwrap() else { panic!("duplicate") };
    let chunks = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Embedded {
            draft: Draft { text: (*t).into(), anchor: format!("p. {}", i + 1), tokens: 3 },
            vector: embed(t),
        })
        .collect();
    k.commit_document(kb, d.id, "txt", chunks).unwrap()
}

fn search(k: &Knowledge, bases: &[&str], q: &str, mode: Mode) -> Vec<Hit> {
    let vectors = HashMap::from([("emb:latest".to_owned(), embed(q))]);
    let bases: Vec<String> = bases.iter().map(|s| (*s).to_owned()).collect();
    k.search(&Query { bases: &bases, text: q, vectors: &vectors, mode, top_k: 3 }).unwrap()
}

#[test]
fn documents_are_searchable_in_every_mode_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let k = Knowledge::open(dir.path()).unwrap();
        base(&k, "docs");
        add(&k, "docs", "a.txt", &["the llama runs on the gpu", "知识库支持中文分词检索", "bananas are yellow"]);
        add(&k, "docs", "b.txt", &["sled is an embedded database"]);
        for mode in [Mode::Hybrid, Mode::Keyword, Mode::Vector] {
            let hits = search(&k, &["docs"], "embedded database", mode);
            assert_eq!(hits[0].document, "b.txt", "{mode:?}");
            assert_eq!(hits[0].anchor, "p. 1");
        }
        let hits = search(&k, &["docs"], "中文检索", Mode::Keyword);
        assert_eq!(hits[0].text, "知识库支持中文分词检索");
        assert_eq!(hits[0].chunk_id, format!("{}:1", hits[0].document_id));
        let b = k.base("docs").unwrap();
        assert_eq!((b.documents, b.chunks), (2, 4));
    }
    let k = Knowledge::open(dir.path()).unwrap();
    assert_eq!(search(&k, &["docs"], "yellow bananas", Mode::Hybrid)[0].text, "bananas are yellow");
    assert_eq!(k.base("docs").unwrap().chunks, 4);
}

#[test]
fn same_content_is_a_duplicate_and_failed_uploads_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let k = Knowledge::open(dir.path()).unwrap();
    base(&k, "kb");
    let d = add(&k, "kb", "a.txt", &["alpha beta"]);
    assert!(
        matches!(k.begin_document("kb", "copy.txt", &d.sha256, 10, "bob", "j2").unwrap(), Begin::Duplicate(x) if x.id == d.id)
    );
    let Begin::New(f) = k.begin_document("kb", "bad.pdf", "ff", 1, "bob", "j3").unwrap() else { panic!() };
    k.fail_document("kb", f.id, "no text layer").unwrap();
    assert_eq!(k.document("kb", f.id).unwrap().error.as_deref(), Some("no text layer"));
    assert!(matches!(k.begin_document("kb", "bad.pdf", "ff", 1, "bob", "j4").unwrap(), Begin::New(_)));
    assert_eq!(k.documents("kb").unwrap().len(), 2, "the failed record was replaced");
}

#[test]
fn deleting_a_document_removes_chunks_vectors_and_postings() {
    let dir = tempfile::tempdir().unwrap();
    let k = Knowledge::open(dir.path()).unwrap();
    base(&k, "kb");
    let a = add(&k, "kb", "a.txt", &["unique zebra words"]);
    add(&k, "kb", "b.txt", &["other text entirely"]);
    k.delete_document("kb", a.id).unwrap();
    assert!(search(&k, &["kb"], "zebra", Mode::Keyword).is_empty());
    assert!(search(&k, &["kb"], "zebra", Mode::Vector).iter().all(|h| h.document == "b.txt"));
    assert_eq!(k.chunks.scan_prefix(key2(k.base("kb").unwrap().id, a.id)).count(), 0);
    // same content can come back
    add(&k, "kb", "a.txt", &["unique zebra words"]);
    assert_eq!(search(&k, &["kb"], "zebra", Mode::Keyword).len(), 1);
}

#[test]
fn interrupted_ingestion_is_failed_at_open_and_leaves_no_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (kb, doc) = {
        let k = Knowledge::open(dir.path()).unwrap();
        let b = base(&k, "kb");
        add(&k, "kb", "ok.txt", &["kept text"]);
        let Begin::New(d) = k.begin_document("kb", "half.txt", "aa", 1, "alice", "j").unwrap() else { panic!() };
        // a crash after some chunks were written but before the document became ready
        k.chunks
            .insert(
                chunk_key(b.id, d.id, 0),
                encode_chunk(
                    &ChunkRec {
                        text: "half".into(),
                        anchor: String::new(),
                        tokens: 1,
                        terms: vec![("half".into(), 1)],
                    },
                    &embed("half"),
                )
                .unwrap(),
            )
            .unwrap();
        k.flush().unwrap();
        (b.id, d.id)
    };
    let k = Knowledge::open(dir.path()).unwrap();
    let d = k.document("kb", doc).unwrap();
    assert_eq!(d.status, DocStatus::Failed);
    assert!(d.error.unwrap().contains("interrupted"));
    assert_eq!(k.chunks.scan_prefix(key2(kb, doc)).count(), 0);
    assert!(search(&k, &["kb"], "half", Mode::Keyword).is_empty());
    assert_eq!(search(&k, &["kb"], "kept", Mode::Keyword).len(), 1);
}

#[test]
fn bases_are_separate_and_deleting_one_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let k = Knowledge::open(dir.path()).unwrap();
    base(&k, "one");
    base(&k, "two");
    assert!(matches!(
        k.create_base(NewBase {
            name: "one".into(),
            description: String::new(),
            owner: "x".into(),
            embedding_model: "e".into(),
            dim: 16,
            chunk_tokens: 64,
            chunk_overlap: 8,
            visibility: Visibility::default()
        }),
        Err(KnowledgeError::Conflict(_))
    ));
    add(&k, "one", "a.txt", &["apples in one"]);
    add(&k, "two", "b.txt", &["apples in two"]);
    assert_eq!(search(&k, &["two"], "apples", Mode::Hybrid).len(), 1);
    assert_eq!(search(&k, &["one", "two"], "apples", Mode::Hybrid).len(), 2);
    k.delete_base("one").unwrap();
    assert!(matches!(k.base("one"), Err(KnowledgeError::NotFound(_))));
    assert_eq!(k.chunks.len(), 1);
    assert_eq!(k.docs.len(), 1);
    assert!(matches!(
        k.create_base(NewBase {
            name: "../x".into(),
            description: String::new(),
            owner: "x".into(),
            embedding_model: "e".into(),
            dim: 16,
            chunk_tokens: 64,
            chunk_overlap: 8,
            visibility: Visibility::default()
        }),
        Err(KnowledgeError::Invalid(_))
    ));
}
