//! Keyword analysis for BM25: Chinese runs are segmented by jieba (search mode, so a long word
//! is also findable by its parts), every other script is split into words at Unicode word
//! boundaries, lower-cased, and stripped of punctuation. Latin-script tokens shorter than two
//! characters and common English and Chinese function words are dropped. The same analysis runs
//! on documents and on queries.

use std::collections::HashMap;
use std::sync::OnceLock;

use jieba_rs::Jieba;
use unicode_segmentation::UnicodeSegmentation;

/// English stop words (NLTK's list). The benchmark hands the same list to bm25s.
pub const ENGLISH_STOPWORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "ain",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "couldn",
    "d",
    "did",
    "didn",
    "do",
    "does",
    "doesn",
    "doing",
    "don",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "hadn",
    "has",
    "hasn",
    "have",
    "haven",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "isn",
    "it",
    "its",
    "itself",
    "just",
    "ll",
    "m",
    "ma",
    "me",
    "mightn",
    "more",
    "most",
    "mustn",
    "my",
    "myself",
    "needn",
    "no",
    "nor",
    "not",
    "now",
    "o",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "re",
    "s",
    "same",
    "shan",
    "she",
    "should",
    "shouldn",
    "so",
    "some",
    "such",
    "t",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "ve",
    "very",
    "was",
    "wasn",
    "we",
    "were",
    "weren",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "won",
    "wouldn",
    "y",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// Chinese function words that carry no topic.
const CHINESE_STOPWORDS: &[&str] = &[
    "的", "了", "和", "是", "在", "也", "就", "都", "而", "及", "与", "着", "或", "一个", "没有", "我们", "你们",
    "他们", "它们", "这", "那", "之", "以", "于", "其", "被", "把", "让", "从", "到", "对", "为", "又", "并",
];

static JIEBA: OnceLock<Jieba> = OnceLock::new();

fn jieba() -> &'static Jieba {
    JIEBA.get_or_init(Jieba::new)
}

/// Load the segmentation dictionary now (it takes a moment) rather than on the first search.
pub fn warm_up() {
    let _ = jieba();
}

/// [`warm_up`] on a background thread, unless the dictionary is already loaded.
pub fn warm_up_in_background() {
    if JIEBA.get().is_none() {
        std::thread::spawn(warm_up);
    }
}

fn is_han(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2A6DF | 0x2A700..=0x2EBEF | 0x30000..=0x3134F)
}

fn stop(word: &str) -> bool {
    ENGLISH_STOPWORDS.binary_search(&word).is_ok() || CHINESE_STOPWORDS.contains(&word)
}

/// The terms of `text`, in order, with repeats.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut han = None;
    for (i, c) in text.char_indices() {
        let h = is_han(c);
        if han != Some(h) {
            if let Some(was) = han {
                run(&text[start..i], was, &mut out);
            }
            han = Some(h);
            start = i;
        }
    }
    if let Some(was) = han {
        run(&text[start..], was, &mut out);
    }
    out
}

fn run(s: &str, han: bool, out: &mut Vec<String>) {
    if han {
        for t in jieba().cut_for_search(s, true) {
            if !stop(t.word) {
                out.push(t.word.to_owned());
            }
        }
        return;
    }
    for word in s.unicode_words() {
        // Split further where a word keeps inner punctuation ("don't", "e.g"), as a \w+ tokenizer does.
        for part in word.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if part.chars().nth(1).is_none() {
                continue;
            }
            let lower = part.to_lowercase();
            if !stop(&lower) {
                out.push(lower);
            }
        }
    }
}

/// Term frequencies of `text`, sorted by term.
pub fn term_counts(text: &str) -> Vec<(String, u32)> {
    let mut m: HashMap<String, u32> = HashMap::new();
    for t in terms(text) {
        *m.entry(t).or_default() += 1;
    }
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopword_list_is_sorted_for_binary_search() {
        assert!(ENGLISH_STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn english_is_lowercased_split_and_filtered() {
        assert_eq!(terms("The Quick-brown fox can't JUMP, a 42x!"), ["quick", "brown", "fox", "jump", "42x"]);
    }

    #[test]
    fn chinese_is_segmented_into_words() {
        let t = terms("中华人民共和国的首都是北京");
        assert!(t.contains(&"北京".to_owned()), "{t:?}");
        assert!(t.contains(&"首都".to_owned()), "{t:?}");
        // search mode also offers the parts of a long word
        assert!(t.contains(&"人民".to_owned()) && t.contains(&"中华人民共和国".to_owned()), "{t:?}");
        assert!(!t.contains(&"的".to_owned()));
    }

    #[test]
    fn mixed_scripts_keep_both() {
        let t = terms("使用 GPU 加速推理 with llama.cpp");
        assert!(
            t.contains(&"gpu".to_owned()) && t.contains(&"加速".to_owned()) && t.contains(&"llama".to_owned()),
            "{t:?}"
        );
    }

    #[test]
    fn other_scripts_split_at_word_boundaries() {
        assert_eq!(terms("Привет, МИР"), ["привет", "мир"]);
    }
}
