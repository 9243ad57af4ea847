//! Chunking: blocks are packed into chunks of at most `size` tokens of the embedding model.
//! A heading starts a new chunk (and heads it); a block too long for one chunk is split at
//! sentence ends, then at any character if a sentence alone is too long. Consecutive chunks of
//! one section share about `overlap` tokens of trailing sentences.

use crate::parse::Block;

/// A chunk before embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    /// The text to embed and to show.
    pub text: String,
    /// Where it comes from (heading path, page, line); pages spanned show as "p. 2–3".
    pub anchor: String,
    /// Its length in tokens of the embedding model.
    pub tokens: usize,
}

/// Split `text` into sentences, keeping the terminator (and following spaces) with each.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let end_here = match c {
            '。' | '！' | '？' | '；' | '\n' => true,
            '.' | '!' | '?' | ';' => it.peek().is_none_or(|(_, n)| n.is_whitespace()),
            _ => false,
        };
        if end_here {
            let mut j = i + c.len_utf8();
            while let Some(&(k, n)) = it.peek() {
                if n.is_whitespace() {
                    j = k + n.len_utf8();
                    it.next();
                } else {
                    break;
                }
            }
            out.push(&text[start..j]);
            start = j;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

struct Piece<'a> {
    text: &'a str,
    anchor: &'a str,
    tokens: usize,
    /// Starts a new paragraph (joined with a blank line rather than a space).
    para: bool,
}

/// Cut `s` into pieces of at most `size` tokens at character boundaries (binary search on length).
fn hard_split<'a>(s: &'a str, size: usize, count: &dyn Fn(&str) -> usize, out: &mut Vec<(&'a str, usize)>) {
    let mut rest = s;
    while !rest.is_empty() {
        let n = count(rest);
        if n <= size {
            out.push((rest, n));
            return;
        }
        let bounds: Vec<usize> = rest.char_indices().map(|(i, _)| i).skip(1).chain([rest.len()]).collect();
        let (mut lo, mut hi) = (0usize, bounds.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if count(&rest[..bounds[mid]]) <= size {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let cut = bounds[lo];
        out.push((&rest[..cut], count(&rest[..cut])));
        rest = &rest[cut..];
    }
}

fn span(first: &str, last: &str) -> String {
    match (first.strip_prefix("p. "), last.strip_prefix("p. ")) {
        (Some(a), Some(b)) if a != b => format!("p. {a}–{b}"),
        _ => first.to_owned(),
    }
}

/// Pack `blocks` into chunks of at most `size` tokens with about `overlap` tokens shared.
pub fn chunk(blocks: &[Block], size: usize, overlap: usize, count: &dyn Fn(&str) -> usize) -> Vec<Draft> {
    let size = size.max(8);
    let overlap = overlap.min(size / 2);
    let mut out = Vec::new();
    let mut cur: Vec<Piece> = Vec::new();
    let emit = |cur: &mut Vec<Piece>, out: &mut Vec<Draft>, keep_overlap: bool| {
        if cur.is_empty() {
            return;
        }
        let mut text = String::new();
        for (i, p) in cur.iter().enumerate() {
            if i > 0 {
                text.push_str(if p.para {
                    "\n\n"
                } else if text.ends_with(char::is_whitespace) {
                    ""
                } else {
                    " "
                });
            }
            text.push_str(p.text.trim_end_matches(['\n']));
        }
        let anchor = span(cur[0].anchor, cur[cur.len() - 1].anchor);
        let tokens = cur.iter().map(|p| p.tokens).sum();
        out.push(Draft { text: text.trim().to_owned(), anchor, tokens });
        // Carry trailing pieces worth at most `overlap` tokens into the next chunk.
        let mut keep = 0;
        let mut t = 0;
        if keep_overlap {
            for p in cur.iter().rev() {
                if t + p.tokens > overlap || keep + 1 == cur.len() {
                    break;
                }
                t += p.tokens;
                keep += 1;
            }
        }
        let drop = cur.len() - keep;
        cur.drain(..drop);
    };
    for b in blocks {
        if b.heading {
            emit(&mut cur, &mut out, false);
            cur.clear();
        }
        let mut pieces: Vec<(&str, usize)> = Vec::new();
        let whole = count(&b.text);
        if whole <= size {
            pieces.push((&b.text, whole));
        } else {
            for s in sentences(&b.text) {
                let n = count(s);
                if n <= size {
                    pieces.push((s, n));
                } else {
                    hard_split(s, size, count, &mut pieces);
                }
            }
        }
        for (i, (text, tokens)) in pieces.into_iter().enumerate() {
            if text.trim().is_empty() {
                continue;
            }
            let used: usize = cur.iter().map(|p| p.tokens).sum();
            if used + tokens > size {
                emit(&mut cur, &mut out, true);
                // The carried overlap must leave room for this piece.
                while !cur.is_empty() && cur.iter().map(|p| p.tokens).sum::<usize>() + tokens > size {
                    cur.remove(0);
                }
            }
            cur.push(Piece { text, anchor: &b.anchor, tokens, para: i == 0 });
        }
    }
    emit(&mut cur, &mut out, false);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    fn block(anchor: &str, text: &str, heading: bool) -> Block {
        Block { anchor: anchor.into(), text: text.into(), heading }
    }

    #[test]
    fn sentences_keep_terminators() {
        assert_eq!(sentences("One. Two! 三。四？ e.g. x"), ["One. ", "Two! ", "三。", "四？ ", "e.g. ", "x"]);
    }

    #[test]
    fn small_paragraphs_pack_and_headings_split() {
        let blocks = [
            block("A", "A", true),
            block("A", "one two three", false),
            block("A", "four five", false),
            block("B", "B", true),
            block("B", "six", false),
        ];
        let c = chunk(&blocks, 10, 0, &words);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].text, "A\n\none two three\n\nfour five");
        assert_eq!(c[0].anchor, "A");
        assert_eq!(c[1].text, "B\n\nsix");
        assert_eq!(c[1].tokens, 2);
    }

    #[test]
    fn long_paragraphs_split_by_sentence_with_overlap_and_never_exceed_size() {
        let text = (0..30).map(|i| format!("word{i} a b c.")).collect::<Vec<_>>().join(" ");
        let c = chunk(&[block("p. 1", &text, false)], 12, 4, &words);
        assert!(c.len() > 3);
        for d in &c {
            assert!(d.tokens <= 12 && words(&d.text) == d.tokens, "{d:?}");
        }
        // consecutive chunks share the last sentence of the previous one
        let last_of_first = sentences(&c[0].text).last().unwrap().trim().to_owned();
        assert!(c[1].text.starts_with(&last_of_first), "{:?} / {:?}", c[0].text, c[1].text);
        // every sentence is somewhere
        for i in 0..30 {
            assert!(c.iter().any(|d| d.text.contains(&format!("word{i} "))), "word{i}");
        }
    }

    #[test]
    fn overlong_sentence_is_cut_hard_and_pages_span() {
        let long = "x ".repeat(25);
        let c = chunk(&[block("p. 1", &long, false), block("p. 2", "tail", false)], 10, 0, &words);
        assert!(c.iter().all(|d| d.tokens <= 10));
        assert_eq!(c.iter().map(|d| d.tokens).sum::<usize>(), 26);
        assert_eq!(c.last().unwrap().anchor, "p. 1–2");
    }
}
