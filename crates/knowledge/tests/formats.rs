//! Every parser against the sample documents in assets/samples (written by make.py).

use maasbox_knowledge::parse::{parse, Block};

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../../assets/samples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn blocks(name: &str) -> (String, Vec<Block>) {
    let p = parse(name, &sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    (p.format.to_owned(), p.blocks)
}

fn find<'a>(b: &'a [Block], needle: &str) -> &'a Block {
    b.iter().find(|b| b.text.contains(needle)).unwrap_or_else(|| panic!("no block with {needle:?} in {b:#?}"))
}

#[test]
fn pdf_text_layer_by_page() {
    let (f, b) = blocks("handbook.pdf");
    assert_eq!(f, "pdf");
    assert_eq!(find(&b, "nine in the morning").anchor, "p. 1");
    assert_eq!(find(&b, "Badges must be worn").anchor, "p. 2");
}

#[test]
fn docx_headings_from_styles() {
    let (f, b) = blocks("report.docx");
    assert_eq!(f, "docx");
    assert_eq!(find(&b, "twelve percent & margins").anchor, "Quarterly Report › Revenue");
    assert_eq!(find(&b, "国产加速卡").anchor, "Quarterly Report › Risks › 风险");
    assert!(b.iter().any(|x| x.heading && x.text == "风险"));
}

#[test]
fn ofd_pages_in_document_order_with_baselines_joined() {
    let (f, b) = blocks("contract.ofd");
    assert_eq!(f, "ofd");
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].anchor, "p. 1");
    assert_eq!(b[0].text, "技术服务合同\n第一条 甲方委托乙方提供私有化大模型服务。");
    assert!(b[1].text.starts_with("第二条 乙方应在三十日内完成模型部署。\n"));
}

#[test]
fn html_markdown_and_gb18030_text() {
    let (f, b) = blocks("notice.html");
    assert_eq!(f, "html");
    assert_eq!(find(&b, "inference cluster will be offline").anchor, "Maintenance window");
    assert_eq!(find(&b, "standby appliance").anchor, "Maintenance window › What to do");
    assert!(!b.iter().any(|x| x.text.contains("console.log") || x.text.contains("font-family")));
    let (f, b) = blocks("guide.md");
    assert_eq!(f, "md");
    assert_eq!(find(&b, "data directory lock").anchor, "maasbox guide › Troubleshooting");
    let (f, b) = blocks("zh.txt");
    assert_eq!(f, "txt");
    assert_eq!(find(&b, "倒数排名融合").anchor, "line 3");
}

#[test]
fn broken_files_fail_with_a_reason() {
    let mut pdf = sample("handbook.pdf");
    pdf.truncate(200);
    assert!(parse("handbook.pdf", &pdf).is_err());
    let mut docx = sample("report.docx");
    docx.truncate(300);
    assert!(parse("report.docx", &docx).is_err());
    let e = parse("x.ofd", &sample("report.docx")).unwrap_err();
    assert!(e.0.contains("OFD.xml"), "{e}");
}
