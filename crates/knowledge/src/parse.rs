//! Document parsers: text, Markdown, HTML, PDF (text layer), DOCX and OFD. Each turns a file
//! into blocks of text with the anchor a citation points at (a heading path, a page, a line).

use std::collections::HashMap;
use std::io::{Cursor, Read};

use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// A parsed file: blocks of text in reading order.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The parser that read it (`txt`, `md`, `html`, `pdf`, `docx`, `ofd`).
    pub format: &'static str,
    /// Paragraphs (or whole pages), in order.
    pub blocks: Vec<Block>,
}

/// A run of text that belongs to one place in the document.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Where it is: `"Install › Linux"`, `"p. 3"`, `"line 12"`.
    pub anchor: String,
    /// The text.
    pub text: String,
    /// A heading starts a new section: chunks do not run across it.
    pub heading: bool,
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// Largest file the parsers accept from one part of a zip (document.xml, a page).
const MAX_ENTRY: u64 = 256 << 20;

/// Parse `bytes`, choosing the parser by the file name's extension and by content.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Parsed, ParseError> {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let zip = bytes.starts_with(b"PK\x03\x04");
    let blocks = match ext.as_str() {
        _ if bytes.starts_with(b"%PDF") => return pdf(bytes).map(|b| done("pdf", b)),
        "pdf" => return Err(err("not a PDF file (no %PDF header)")),
        "docx" if zip => return docx(bytes).map(|b| done("docx", b)),
        "ofd" if zip => return ofd(bytes).map(|b| done("ofd", b)),
        "docx" | "ofd" => return Err(err(format!("not a .{ext} file (not a zip archive)"))),
        _ if zip => {
            return match zip_has(bytes, "word/document.xml") {
                true => docx(bytes).map(|b| done("docx", b)),
                false if zip_has(bytes, "OFD.xml") => ofd(bytes).map(|b| done("ofd", b)),
                false => Err(err("unsupported archive (neither DOCX nor OFD)")),
            }
        }
        "html" | "htm" | "xhtml" => ("html", html(&decode(bytes)?)),
        "md" | "markdown" | "mdx" => ("md", markdown(&decode(bytes)?)),
        _ => {
            let text = decode(bytes).map_err(|_| err(format!("unsupported file type '{name}'")))?;
            if text.trim_start().to_ascii_lowercase().starts_with("<!doctype html") || text.contains("<html") {
                ("html", html(&text))
            } else {
                ("txt", plain(&text))
            }
        }
    };
    Ok(done(blocks.0, blocks.1))
}

fn done(format: &'static str, blocks: Vec<Block>) -> Parsed {
    Parsed { format, blocks: blocks.into_iter().filter(|b| !b.text.trim().is_empty()).collect() }
}

/// Text in UTF-8 (with or without BOM), UTF-16 with BOM, or GB18030 (common for Chinese files).
pub fn decode(bytes: &[u8]) -> Result<String, ParseError> {
    if let Some((enc, _)) = encoding_rs::Encoding::for_bom(bytes) {
        let (s, _, bad) = enc.decode(bytes);
        return if bad { Err(err(format!("invalid {} text", enc.name()))) } else { Ok(s.into_owned()) };
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        return check_text(s.to_owned());
    }
    let (s, bad) = encoding_rs::GB18030.decode_without_bom_handling(bytes);
    if bad {
        return Err(err("not text: neither UTF-8 nor GB18030"));
    }
    check_text(s.into_owned())
}

fn check_text(s: String) -> Result<String, ParseError> {
    let control = s.chars().filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c')).count();
    if control * 100 > s.chars().count().max(1) {
        return Err(err("binary content, not text"));
    }
    Ok(s)
}

/// Paragraphs separated by blank lines; anchored by their first line number.
fn plain(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut para = String::new();
    let mut first = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            flush(&mut out, &mut para, format!("line {}", first + 1));
            continue;
        }
        if para.is_empty() {
            first = i;
        } else {
            para.push('\n');
        }
        para.push_str(line.trim_end());
    }
    flush(&mut out, &mut para, format!("line {}", first + 1));
    out
}

fn flush(out: &mut Vec<Block>, para: &mut String, anchor: String) {
    if !para.trim().is_empty() {
        out.push(Block { anchor, text: std::mem::take(para).trim().to_owned(), heading: false });
    }
    para.clear();
}

/// Heading path "A › B › C" from a stack of (level, title).
fn path(stack: &[(usize, String)]) -> String {
    stack.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" › ")
}

fn push_heading(stack: &mut Vec<(usize, String)>, level: usize, title: String) {
    while stack.last().is_some_and(|(l, _)| *l >= level) {
        stack.pop();
    }
    stack.push((level, title));
}

/// Markdown: ATX headings (`#`…`######`) set the anchor; fenced code stays whole.
fn markdown(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut para = String::new();
    let mut fence = false;
    let mut first = 0;
    let anchor = |stack: &[(usize, String)], line: usize| {
        if stack.is_empty() {
            format!("line {}", line + 1)
        } else {
            path(stack)
        }
    };
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fence = !fence;
        }
        let level = t.bytes().take_while(|&b| b == b'#').count();
        if !fence && (1..=6).contains(&level) && t[level..].starts_with([' ', '\t']) {
            flush(&mut out, &mut para, anchor(&stack, first));
            let title = t[level..].trim().trim_end_matches('#').trim().to_owned();
            push_heading(&mut stack, level, title.clone());
            out.push(Block { anchor: path(&stack), text: title, heading: true });
            continue;
        }
        if !fence && t.is_empty() {
            flush(&mut out, &mut para, anchor(&stack, first));
            continue;
        }
        if para.is_empty() {
            first = i;
        } else {
            para.push('\n');
        }
        para.push_str(line.trim_end());
    }
    flush(&mut out, &mut para, anchor(&stack, first));
    out
}

/// HTML: text of block elements in document order; h1–h6 set the heading path. Scripts,
/// styles and the head are skipped.
fn html(text: &str) -> Vec<Block> {
    use scraper::node::Node;
    let doc = scraper::Html::parse_document(text);
    let title = doc
        .select(&scraper::Selector::parse("title").expect("valid selector"))
        .next()
        .map(|t| t.text().collect::<String>().trim().to_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut para = String::new();
    let anchor = |stack: &[(usize, String)]| match (stack.is_empty(), title.is_empty()) {
        (false, _) => path(stack),
        (true, false) => title.clone(),
        (true, true) => "document".to_owned(),
    };
    // An explicit stack instead of recursion: deeply nested markup cannot overflow it.
    enum Step<'a> {
        Enter(ego_tree::NodeRef<'a, Node>),
        Leave(bool),
    }
    let mut todo = vec![Step::Enter(doc.tree.root())];
    while let Some(step) = todo.pop() {
        let node = match step {
            Step::Leave(block) => {
                if block {
                    flush(&mut out, &mut para, anchor(&stack));
                }
                continue;
            }
            Step::Enter(n) => n,
        };
        match node.value() {
            Node::Text(t) => {
                let s = t.text.split_whitespace().collect::<Vec<_>>().join(" ");
                if !s.is_empty() {
                    if !para.is_empty() && !para.ends_with([' ', '\n']) && t.text.starts_with(char::is_whitespace) {
                        para.push(' ');
                    }
                    para.push_str(&s);
                    if t.text.ends_with(char::is_whitespace) {
                        para.push(' ');
                    }
                }
            }
            Node::Element(e) => {
                let tag = e.name();
                if matches!(tag, "script" | "style" | "noscript" | "template" | "head" | "svg" | "iframe") {
                    continue;
                }
                if let Some(level) =
                    tag.strip_prefix('h').and_then(|l| l.parse::<usize>().ok()).filter(|l| (1..=6).contains(l))
                {
                    flush(&mut out, &mut para, anchor(&stack));
                    let title = scraper::ElementRef::wrap(node)
                        .map(|el| el.text().collect::<Vec<_>>().join(" "))
                        .unwrap_or_default()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ");
                    if !title.is_empty() {
                        push_heading(&mut stack, level, title.clone());
                        out.push(Block { anchor: path(&stack), text: title, heading: true });
                    }
                    continue;
                }
                if tag == "br" {
                    para.push('\n');
                    continue;
                }
                let block = matches!(
                    tag,
                    "p" | "div"
                        | "li"
                        | "ul"
                        | "ol"
                        | "table"
                        | "tr"
                        | "td"
                        | "th"
                        | "pre"
                        | "blockquote"
                        | "section"
                        | "article"
                        | "main"
                        | "header"
                        | "footer"
                        | "nav"
                        | "aside"
                        | "dd"
                        | "dt"
                        | "dl"
                        | "figcaption"
                        | "caption"
                        | "body"
                        | "form"
                        | "hr"
                );
                if block {
                    flush(&mut out, &mut para, anchor(&stack));
                }
                todo.push(Step::Leave(block));
                let children: Vec<_> = node.children().collect();
                todo.extend(children.into_iter().rev().map(Step::Enter));
            }
            _ => {
                let children: Vec<_> = node.children().collect();
                todo.extend(children.into_iter().rev().map(Step::Enter));
            }
        }
    }
    flush(&mut out, &mut para, anchor(&stack));
    out
}

/// PDF: the text layer, one block per page. A PDF without text (a scan) is an error.
fn pdf(bytes: &[u8]) -> Result<Vec<Block>, ParseError> {
    // pdf-extract panics on some malformed files; a bad upload must not take the job down.
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes))
        .map_err(|_| err("the PDF could not be read (malformed)"))?
        .map_err(|e| err(format!("the PDF could not be read: {e}")))?;
    let blocks: Vec<Block> = pages
        .into_iter()
        .enumerate()
        .map(|(i, text)| Block { anchor: format!("p. {}", i + 1), text: text.trim().to_owned(), heading: false })
        .filter(|b| !b.text.is_empty())
        .collect();
    if blocks.is_empty() {
        return Err(err("the PDF has no text layer (a scanned document needs OCR first)"));
    }
    Ok(blocks)
}

fn zip_has(bytes: &[u8], name: &str) -> bool {
    zip::ZipArchive::new(Cursor::new(bytes)).is_ok_and(|z| z.index_for_name(name).is_some())
}

fn zip_read(z: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>, ParseError> {
    let f = z.by_name(name).map_err(|_| err(format!("missing {name} in the archive")))?;
    let mut out = Vec::new();
    f.take(MAX_ENTRY).read_to_end(&mut out).map_err(|e| err(format!("reading {name}: {e}")))?;
    Ok(out)
}

fn attr(e: &quick_xml::events::BytesStart, key: &[u8]) -> Option<String> {
    e.attributes().flatten().find(|a| a.key.local_name().as_ref() == key).map(|a| {
        a.unescape_value().map(|v| v.into_owned()).unwrap_or_else(|_| String::from_utf8_lossy(&a.value).into_owned())
    })
}

fn xml_err(e: impl std::fmt::Display) -> ParseError {
    err(format!("malformed XML: {e}"))
}

/// DOCX: paragraphs of word/document.xml; paragraphs in a heading style (from styles.xml, or
/// an outline level) set the heading path.
fn docx(bytes: &[u8]) -> Result<Vec<Block>, ParseError> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| err(format!("not a valid DOCX: {e}")))?;
    let mut heading_styles: HashMap<String, usize> = HashMap::new();
    if let Ok(styles) = zip_read(&mut z, "word/styles.xml") {
        let mut r = Reader::from_reader(styles.as_slice());
        let mut id = None;
        loop {
            match r.read_event().map_err(xml_err)? {
                Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                    b"style" => id = attr(&e, b"styleId"),
                    b"name" => {
                        let name = attr(&e, b"val").unwrap_or_default().to_lowercase();
                        let level = name
                            .strip_prefix("heading")
                            .or_else(|| name.strip_prefix("标题"))
                            .and_then(|l| l.trim().parse::<usize>().ok());
                        if let (Some(id), Some(level)) = (&id, level) {
                            heading_styles.insert(id.clone(), level);
                        } else if let (Some(id), "title") = (&id, name.as_str()) {
                            heading_styles.insert(id.clone(), 0);
                        }
                    }
                    _ => {}
                },
                Event::Eof => break,
                _ => {}
            }
        }
    }
    let xml = zip_read(&mut z, "word/document.xml")?;
    let mut r = Reader::from_reader(xml.as_slice());
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let (mut para, mut level, mut in_text, mut n) = (String::new(), None::<usize>, false, 0usize);
    loop {
        match r.read_event().map_err(xml_err)? {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                b"p" => {
                    para.clear();
                    level = None;
                }
                b"pStyle" => {
                    let s = attr(&e, b"val").unwrap_or_default();
                    level = heading_styles
                        .get(&s)
                        .copied()
                        .or_else(|| s.to_lowercase().strip_prefix("heading").and_then(|l| l.parse().ok()));
                }
                b"outlineLvl" => {
                    level = level.or(attr(&e, b"val").and_then(|v| v.parse::<usize>().ok()).map(|l| l + 1));
                }
                b"t" => in_text = true,
                b"tab" => para.push('\t'),
                b"br" | b"cr" => para.push('\n'),
                _ => {}
            },
            Event::Text(t) if in_text => para.push_str(&t.unescape().map_err(xml_err)?),
            Event::End(e) => match e.local_name().as_ref() {
                b"t" => in_text = false,
                b"p" => {
                    n += 1;
                    let text = para.trim().to_owned();
                    if text.is_empty() {
                        continue;
                    }
                    match level {
                        Some(l) if l <= 9 => {
                            push_heading(&mut stack, l, text.clone());
                            out.push(Block { anchor: path(&stack), text, heading: true });
                        }
                        _ => {
                            let anchor = if stack.is_empty() { format!("paragraph {n}") } else { path(&stack) };
                            out.push(Block { anchor, text, heading: false });
                        }
                    }
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Resolve `loc` (OFD paths are relative to the referring file's folder, or absolute from the
/// package root when they start with '/').
fn ofd_path(base_dir: &str, loc: &str) -> String {
    let loc = loc.trim();
    let joined = match loc.strip_prefix('/') {
        Some(abs) => abs.to_owned(),
        None if base_dir.is_empty() => loc.to_owned(),
        None => format!("{base_dir}/{loc}"),
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in joined.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

/// OFD (GB/T 33190, the Chinese national e-document format): OFD.xml names the document root;
/// its Pages list gives the page order; each page's Content.xml holds TextObject/TextCode. Text
/// codes on one baseline are joined into a line. One block per page.
fn ofd(bytes: &[u8]) -> Result<Vec<Block>, ParseError> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| err(format!("not a valid OFD: {e}")))?;
    let root = zip_read(&mut z, "OFD.xml")?;
    let doc_root = xml_text_of(&root, b"DocRoot")?.ok_or_else(|| err("OFD.xml names no DocRoot"))?;
    let doc_path = ofd_path("", &doc_root);
    let doc = zip_read(&mut z, &doc_path)?;
    let mut pages = Vec::new();
    let mut r = Reader::from_reader(doc.as_slice());
    loop {
        match r.read_event().map_err(xml_err)? {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"Page" => {
                if let Some(loc) = attr(&e, b"BaseLoc") {
                    pages.push(ofd_path(dir_of(&doc_path), &loc));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if pages.is_empty() {
        return Err(err("the OFD document has no pages"));
    }
    let mut out = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        // A page's BaseLoc may name the folder or the Content.xml itself.
        let content = if page.ends_with(".xml") { page.clone() } else { format!("{page}/Content.xml") };
        let xml = zip_read(&mut z, &content)?;
        let text = ofd_page_text(&xml)?;
        if !text.trim().is_empty() {
            out.push(Block { anchor: format!("p. {}", i + 1), text, heading: false });
        }
    }
    if out.is_empty() {
        return Err(err("the OFD document has no text (TextCode)"));
    }
    Ok(out)
}

fn xml_text_of(xml: &[u8], tag: &[u8]) -> Result<Option<String>, ParseError> {
    let mut r = Reader::from_reader(xml);
    let mut inside = false;
    let mut s = String::new();
    loop {
        match r.read_event().map_err(xml_err)? {
            Event::Start(e) if e.local_name().as_ref() == tag => inside = true,
            Event::Text(t) if inside => s.push_str(&t.unescape().map_err(xml_err)?),
            Event::End(e) if inside && e.local_name().as_ref() == tag => return Ok(Some(s.trim().to_owned())),
            Event::Eof => return Ok(None),
            _ => {}
        }
    }
}

fn ofd_page_text(xml: &[u8]) -> Result<String, ParseError> {
    let mut r = Reader::from_reader(xml);
    let mut out = String::new();
    let (mut obj_y, mut code_y, mut last_y) = (0f64, 0f64, None::<f64>);
    let mut in_code = false;
    let num = |s: Option<String>, i: usize| -> f64 {
        s.and_then(|b| b.split_whitespace().nth(i).and_then(|v| v.parse().ok())).unwrap_or(0.0)
    };
    loop {
        match r.read_event().map_err(xml_err)? {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                b"TextObject" => obj_y = num(attr(&e, b"Boundary"), 1),
                b"TextCode" => {
                    in_code = true;
                    code_y = obj_y + num(attr(&e, b"Y"), 0);
                }
                _ => {}
            },
            Event::Text(t) if in_code => {
                let s = t.unescape().map_err(xml_err)?;
                if let Some(y) = last_y {
                    if (y - code_y).abs() > 0.5 {
                        out.push('\n');
                    }
                }
                last_y = Some(code_y);
                out.push_str(&s);
            }
            Event::End(e) if e.local_name().as_ref() == b"TextCode" => in_code = false,
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_headings_make_anchors() {
        let p = parse(
            "a.md",
            "intro\n\n# Install\n\ntext one\n\n## Linux\n\n```\n# not a heading\n```\n\n# Use\n\nrun".as_bytes(),
        )
        .unwrap();
        let got: Vec<_> = p.blocks.iter().map(|b| (b.anchor.as_str(), b.text.as_str(), b.heading)).collect();
        assert_eq!(
            got,
            [
                ("line 1", "intro", false),
                ("Install", "Install", true),
                ("Install", "text one", false),
                ("Install › Linux", "Linux", true),
                ("Install › Linux", "```\n# not a heading\n```", false),
                ("Use", "Use", true),
                ("Use", "run", false),
            ]
        );
    }

    #[test]
    fn gb18030_text_is_decoded() {
        let (bytes, _, _) = encoding_rs::GB18030.encode("知识库检索\n\n第二段");
        let p = parse("a.txt", &bytes).unwrap();
        assert_eq!(p.blocks[0].text, "知识库检索");
        assert_eq!(p.blocks[1].anchor, "line 3");
    }

    #[test]
    fn binary_is_refused() {
        let bytes: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 256) as u8).collect();
        assert!(parse("blob.bin", &bytes).is_err());
        assert!(parse("x.pdf", b"hello").unwrap_err().0.contains("not a PDF"));
    }

    #[test]
    fn html_skips_scripts_and_tracks_headings() {
        let p = parse(
            "a.html",
            b"<html><head><title>T</title><script>var x=1;</script></head><body><p>before</p><h1>Alpha</h1><p>one <b>bold</b> two</p><h2>Beta</h2><ul><li>x</li><li>y</li></ul><style>p{}</style></body></html>",
        )
        .unwrap();
        let got: Vec<_> = p.blocks.iter().map(|b| (b.anchor.as_str(), b.text.as_str())).collect();
        assert_eq!(
            got,
            [
                ("T", "before"),
                ("Alpha", "Alpha"),
                ("Alpha", "one bold two"),
                ("Alpha › Beta", "Beta"),
                ("Alpha › Beta", "x"),
                ("Alpha › Beta", "y")
            ]
        );
    }

    #[test]
    fn ofd_paths_resolve() {
        assert_eq!(ofd_path("Doc_0", "Pages/Page_0/Content.xml"), "Doc_0/Pages/Page_0/Content.xml");
        assert_eq!(ofd_path("Doc_0", "/Doc_0/Pages/P1.xml"), "Doc_0/Pages/P1.xml");
        assert_eq!(ofd_path("Doc_0/x", "../Res"), "Doc_0/Res");
    }
}
