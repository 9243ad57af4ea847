//! The in-memory search structures of one knowledge base, rebuilt from sled at startup:
//! a contiguous matrix of normalised vectors (exact inner-product search) and an inverted
//! index for BM25. Deleted chunks leave a dead slot (skipped, its postings removed); the index
//! is compacted when more than half its slots are dead.

use std::cmp::Ordering;
use std::collections::HashMap;

/// BM25 parameters (Lucene's defaults, as in bm25s).
const K1: f32 = 1.5;
const B: f32 = 0.75;

/// Below this many slots one thread scans the vectors; above it, two.
const PARALLEL_SCAN: usize = 16_384;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub doc: u64,
    pub ord: u32,
    pub len: u32,
    pub live: bool,
}

#[derive(Default)]
pub(crate) struct KbIndex {
    pub dim: usize,
    pub slots: Vec<Slot>,
    vectors: Vec<f32>,
    postings: HashMap<Box<str>, Vec<(u32, u32)>>,
    pub live: usize,
    total_len: u64,
    /// Live chunks per document (its length is the document count, kept for every read).
    pub docs: HashMap<u64, usize>,
}

/// A ranked candidate: index in the list of searched bases, slot, score.
pub(crate) type Ranked = (usize, u32, f32);

impl KbIndex {
    pub fn new(dim: usize) -> Self {
        Self { dim, ..Default::default() }
    }

    /// Add one chunk: its terms with counts and its vector.
    pub fn add(&mut self, doc: u64, ord: u32, terms: &[(String, u32)], vector: &[f32]) {
        let slot = self.slots.len() as u32;
        let len: u32 = terms.iter().map(|t| t.1).sum();
        for (t, n) in terms {
            match self.postings.get_mut(t.as_str()) {
                Some(p) => p.push((slot, *n)),
                None => {
                    self.postings.insert(t.as_str().into(), vec![(slot, *n)]);
                }
            }
        }
        self.vectors.extend_from_slice(vector);
        self.slots.push(Slot { doc, ord, len, live: true });
        self.live += 1;
        *self.docs.entry(doc).or_default() += 1;
        self.total_len += u64::from(len);
    }

    /// Remove every chunk of `doc`; `terms` are the terms its chunks used.
    pub fn remove_doc(&mut self, doc: u64, terms: &[String]) {
        if self.docs.remove(&doc).is_none() {
            return;
        }
        let mut dead = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.doc == doc && s.live {
                s.live = false;
                self.live -= 1;
                self.total_len -= u64::from(s.len);
                self.vectors[i * self.dim..(i + 1) * self.dim].fill(0.0);
                dead.push(i as u32);
            }
        }
        for t in terms {
            if let Some(p) = self.postings.get_mut(t.as_str()) {
                p.retain(|(s, _)| dead.binary_search(s).is_err());
                if p.is_empty() {
                    self.postings.remove(t.as_str());
                }
            }
        }
    }

    /// Whether compaction would pay (more than half the slots dead).
    pub fn sparse(&self) -> bool {
        self.slots.len() > 64 && self.live * 2 < self.slots.len()
    }

    fn vector(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dim..(slot + 1) * self.dim]
    }

    /// Rebuild without dead slots.
    pub fn compact(&mut self) {
        let mut map = vec![u32::MAX; self.slots.len()];
        let mut next = KbIndex::new(self.dim);
        for (i, s) in self.slots.iter().enumerate() {
            if s.live {
                map[i] = next.slots.len() as u32;
                next.vectors.extend_from_slice(self.vector(i));
                next.slots.push(*s);
                next.live += 1;
                *next.docs.entry(s.doc).or_default() += 1;
                next.total_len += u64::from(s.len);
            }
        }
        for (t, p) in self.postings.drain() {
            let p: Vec<_> = p
                .into_iter()
                .filter(|(s, _)| map[*s as usize] != u32::MAX)
                .map(|(s, n)| (map[s as usize], n))
                .collect();
            if !p.is_empty() {
                next.postings.insert(t, p);
            }
        }
        *self = next;
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums so the compiler keeps them in vector registers.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Keep the `k` best by score (descending), ties by position.
pub(crate) fn top(mut v: Vec<Ranked>, k: usize) -> Vec<Ranked> {
    let cmp =
        |a: &Ranked, b: &Ranked| b.2.partial_cmp(&a.2).unwrap_or(Ordering::Equal).then((a.0, a.1).cmp(&(b.0, b.1)));
    if v.len() > k && k > 0 {
        v.select_nth_unstable_by(k - 1, cmp);
        v.truncate(k);
    }
    v.sort_unstable_by(cmp);
    v
}

fn scan(idx: &KbIndex, which: usize, q: &[f32], from: usize, to: usize, k: usize) -> Vec<Ranked> {
    let mut out: Vec<Ranked> = Vec::with_capacity(k * 2 + 16);
    let mut floor = f32::NEG_INFINITY;
    for i in from..to {
        if !idx.slots[i].live {
            continue;
        }
        let s = dot(q, idx.vector(i));
        if s > floor || out.len() < k {
            out.push((which, i as u32, s));
            if out.len() >= k * 2 + 16 {
                out = top(out, k);
                floor = out.last().map_or(f32::NEG_INFINITY, |r| r.2);
            }
        }
    }
    top(out, k)
}

/// Exact inner-product search over the bases' vectors (`queries[i]` for `idxs[i]`; `None`
/// skips a base whose embedding model gave no query vector).
pub(crate) fn vector_search(idxs: &[&KbIndex], queries: &[Option<&[f32]>], k: usize) -> Vec<Ranked> {
    let mut all = Vec::new();
    for (w, (idx, q)) in idxs.iter().zip(queries).enumerate() {
        let Some(q) = q.filter(|q| q.len() == idx.dim) else { continue };
        let n = idx.slots.len();
        if n >= PARALLEL_SCAN {
            let mid = n / 2;
            let (a, b) = std::thread::scope(|s| {
                let h = s.spawn(|| scan(idx, w, q, mid, n, k));
                (scan(idx, w, q, 0, mid, k), h.join().unwrap_or_default())
            });
            all.extend(a);
            all.extend(b);
        } else {
            all.extend(scan(idx, w, q, 0, n, k));
        }
    }
    top(all, k)
}

/// BM25 over the bases taken together (document frequencies and average length summed).
pub(crate) fn keyword_search(idxs: &[&KbIndex], terms: &[String], k: usize) -> Vec<Ranked> {
    let n: usize = idxs.iter().map(|i| i.live).sum();
    if n == 0 || terms.is_empty() {
        return Vec::new();
    }
    let avgdl = (idxs.iter().map(|i| i.total_len).sum::<u64>() as f32 / n as f32).max(1.0);
    let mut uniq: Vec<&String> = terms.iter().collect();
    uniq.sort_unstable();
    uniq.dedup();
    let mut all = Vec::new();
    let mut weights: Vec<(usize, f32)> = Vec::new();
    for t in &uniq {
        let df: usize = idxs.iter().filter_map(|i| i.postings.get(t.as_str())).map(Vec::len).sum();
        if df > 0 {
            let idf = (1.0 + (n as f32 - df as f32 + 0.5) / (df as f32 + 0.5)).ln();
            weights.push((weights.len(), idf));
        } else {
            weights.push((weights.len(), 0.0));
        }
    }
    for (w, idx) in idxs.iter().enumerate() {
        let mut scores: HashMap<u32, f32> = HashMap::new();
        let mut dense: Vec<f32> = Vec::new();
        let postings: Vec<_> = uniq.iter().map(|t| idx.postings.get(t.as_str())).collect();
        let total: usize = postings.iter().flatten().map(|p| p.len()).sum();
        let use_dense = total * 8 > idx.slots.len();
        if use_dense {
            dense = vec![0.0; idx.slots.len()];
        }
        for (p, (_, idf)) in postings.iter().zip(&weights) {
            let Some(p) = p else { continue };
            for &(slot, tf) in p.iter() {
                let dl = idx.slots[slot as usize].len as f32;
                let tf = tf as f32;
                let s = idf * tf / (tf + K1 * (1.0 - B + B * dl / avgdl));
                if use_dense {
                    dense[slot as usize] += s;
                } else {
                    *scores.entry(slot).or_default() += s;
                }
            }
        }
        let cand: Vec<Ranked> = if use_dense {
            dense.iter().enumerate().filter(|(_, s)| **s > 0.0).map(|(i, s)| (w, i as u32, *s)).collect()
        } else {
            scores.into_iter().map(|(i, s)| (w, i, s)).collect()
        };
        all.extend(top(cand, k));
    }
    top(all, k)
}

/// A fused result: base index, slot, fused score, rank in the vector and keyword lists.
pub(crate) type Fused = (usize, u32, f32, [Option<usize>; 2]);

/// Reciprocal-rank fusion (k = 60) of ranked lists.
pub(crate) fn fuse(lists: &[&[Ranked]], k: usize) -> Vec<Fused> {
    type Ranks = [Option<usize>; 2];
    let mut m: HashMap<(usize, u32), (f32, Ranks)> = HashMap::new();
    for (li, list) in lists.iter().enumerate() {
        for (rank, r) in list.iter().enumerate() {
            let e = m.entry((r.0, r.1)).or_default();
            e.0 += 1.0 / (60.0 + rank as f32 + 1.0);
            if li < 2 {
                e.1[li] = Some(rank + 1);
            }
        }
    }
    let mut v: Vec<Fused> = m.into_iter().map(|((w, s), (score, ranks))| (w, s, score, ranks)).collect();
    v.sort_unstable_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(Ordering::Equal).then((a.0, a.1).cmp(&(b.0, b.1))));
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(words: &[&str]) -> Vec<(String, u32)> {
        let mut m: HashMap<String, u32> = HashMap::new();
        for w in words {
            *m.entry((*w).to_owned()).or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn bm25_prefers_rare_terms_and_short_docs() {
        let mut idx = KbIndex::new(2);
        idx.add(1, 0, &t(&["apple", "banana"]), &[1.0, 0.0]);
        idx.add(1, 1, &t(&["apple", "cherry", "x", "y", "z", "w"]), &[0.0, 1.0]);
        idx.add(2, 0, &t(&["apple"]), &[0.6, 0.8]);
        let r = keyword_search(&[&idx], &["cherry".into(), "apple".into()], 10);
        assert_eq!(r[0].1, 1, "the only cherry wins");
        let r = keyword_search(&[&idx], &["apple".into()], 10);
        assert_eq!(r.iter().map(|r| r.1).collect::<Vec<_>>(), [2, 0, 1], "shorter first");
        let v = vector_search(&[&idx], &[Some(&[0.0, 1.0])], 2);
        assert_eq!(v.iter().map(|r| r.1).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn removed_docs_vanish_and_compaction_keeps_results() {
        let mut idx = KbIndex::new(2);
        for i in 0..100u32 {
            idx.add(
                u64::from(i % 4),
                i,
                &t(&["common", if i % 4 == 3 { "rare" } else { "other" }]),
                &[1.0, i as f32 / 100.0],
            );
        }
        idx.remove_doc(3, &["common".into(), "rare".into()]);
        assert!(keyword_search(&[&idx], &["rare".into()], 10).is_empty());
        assert!(vector_search(&[&idx], &[Some(&[0.0, 1.0])], 100).iter().all(|r| idx.slots[r.1 as usize].doc != 3));
        let before: Vec<_> = keyword_search(&[&idx], &["common".into(), "other".into()], 5)
            .iter()
            .map(|r| (idx.slots[r.1 as usize].doc, idx.slots[r.1 as usize].ord))
            .collect();
        idx.remove_doc(2, &["common".into(), "other".into()]);
        idx.remove_doc(1, &["common".into(), "other".into()]);
        assert!(idx.sparse());
        idx.compact();
        assert_eq!(idx.slots.len(), 25);
        assert_eq!(idx.docs.len(), 1, "one document left, counted without a scan");
        let after = keyword_search(&[&idx], &["common".into()], 100);
        assert_eq!(after.len(), 25);
        assert!(after.iter().all(|r| idx.slots[r.1 as usize].doc == 0));
        assert!(before.iter().any(|(d, _)| *d == 0));
    }

    #[test]
    fn fusion_rewards_agreement() {
        let a = [(0, 1, 9.0), (0, 2, 8.0), (0, 3, 7.0)];
        let b = [(0, 3, 0.9), (0, 1, 0.8), (0, 4, 0.7)];
        let f = fuse(&[&a, &b], 10);
        assert_eq!(f[0].1, 1);
        assert_eq!(f[1].1, 3);
        assert_eq!(f[0].3, [Some(1), Some(2)]);
        assert_eq!(f.len(), 4);
    }
}
