"""A small document model rendered twice: to Markdown (REPORT.md) and to PDF (REPORT.pdf, fpdf2).

Blocks: Heading, Para, Items (bullets or numbered), Table, Image, Code.  Inline markup in text:
**bold** and `code`.  Both renderers are deterministic: the PDF carries a fixed creation date, the
fonts are the DejaVu files matplotlib ships, and nothing depends on the clock or the machine.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

CREATION_DATE = datetime(2000, 1, 1, tzinfo=timezone.utc)   # fixed, so reruns give the same bytes
_INLINE = re.compile(r"(\*\*.+?\*\*|`[^`]+`)")


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Items:
    items: list
    ordered: bool = False


@dataclass
class Table:
    header: list
    rows: list
    align: str = ""            # one letter per column: l, r (default: l)
    widths: list | None = None  # relative column widths for the PDF (default: from the text lengths)
    size: float = 8.0          # PDF font size
    caption: str = ""


@dataclass
class Image:
    path: str                  # absolute path of a PNG
    alt: str
    width: float = 1.0         # share of the text width in the PDF


@dataclass
class Code:
    text: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, *blocks):
        self.blocks.extend(blocks)


# -------------------------------------------------------------------------------------------- Markdown

def to_markdown(doc: Document, md_dir: str) -> str:
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += ["#" * (b.level + 1) + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Items):
            out += [(f"{i}. " if b.ordered else "- ") + t for i, t in enumerate(b.items, 1)] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [b.caption, ""]
            al = (b.align or "l" * len(b.header)).ljust(len(b.header), "l")
            out.append("| " + " | ".join(b.header) + " |")
            out.append("|" + "|".join("---:" if a == "r" else "---" for a in al) + "|")
            out += ["| " + " | ".join(str(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Image):
            out += [f"![{b.alt}]({os.path.relpath(b.path, md_dir).replace(os.sep, '/')})", ""]
        elif isinstance(b, Code):
            out += ["```", b.text.rstrip("\n"), "```", ""]
        else:
            raise TypeError(b)
    return "\n".join(out).rstrip("\n") + "\n"


# -------------------------------------------------------------------------------------------- PDF

def _fonts() -> dict:
    import matplotlib
    d = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    return {("sans", ""): os.path.join(d, "DejaVuSans.ttf"), ("sans", "B"): os.path.join(d, "DejaVuSans-Bold.ttf"),
            ("sans", "I"): os.path.join(d, "DejaVuSans-Oblique.ttf"), ("mono", ""): os.path.join(d, "DejaVuSansMono.ttf"),
            ("mono", "B"): os.path.join(d, "DejaVuSansMono-Bold.ttf")}


def _plain(text: str) -> str:
    return _INLINE.sub(lambda m: m.group(0)[2:-2] if m.group(0).startswith("**") else m.group(0)[1:-1], text)


class _Writer:
    BODY = 9.5
    LINE = 4.6

    def __init__(self, title: str):
        from fpdf import FPDF

        class PDF(FPDF):
            def footer(self):
                self.set_y(-11)
                self.set_font("sans", "", 7.5)
                self.set_text_color(110)
                self.cell(0, 5, f"{title}   ·   page {self.page_no()} / {{nb}}", align="C")
                self.set_text_color(0)

        self.pdf = pdf = PDF(format="A4", unit="mm")
        pdf.set_creation_date(CREATION_DATE)
        pdf.set_title(title)
        pdf.set_author("mbz report")
        pdf.set_creator("mbz report")
        pdf.set_margins(15, 14, 15)
        pdf.set_auto_page_break(True, margin=16)
        for (fam, style), path in _fonts().items():
            pdf.add_font(fam, style, path)
        pdf.add_page()

    @property
    def epw(self) -> float:
        return self.pdf.epw

    def room(self, mm: float) -> None:
        """Start a new page unless `mm` millimetres are left above the bottom margin."""
        p = self.pdf
        if p.get_y() + mm > p.h - p.b_margin:
            p.add_page()

    def rich(self, text: str, size: float | None = None, lh: float | None = None) -> None:
        p = self.pdf
        size = size or self.BODY
        lh = lh or self.LINE
        for part in _INLINE.split(text):
            if not part:
                continue
            if part.startswith("**") and part.endswith("**") and len(part) > 4:
                p.set_font("sans", "B", size)
                p.write(lh, part[2:-2])
            elif part.startswith("`") and part.endswith("`") and len(part) > 2:
                p.set_font("mono", "", size * 0.92)
                p.write(lh, part[1:-1])
            else:
                p.set_font("sans", "", size)
                p.write(lh, part)
        p.set_font("sans", "", size)
        p.ln(lh)

    def title(self, text: str) -> None:
        p = self.pdf
        p.set_font("sans", "B", 15)
        p.multi_cell(0, 7, text)
        p.ln(2)

    def heading(self, h: Heading) -> None:
        p = self.pdf
        size = {1: 13, 2: 11}.get(h.level, 10)
        self.room(28)
        p.ln(2.5 if h.level == 1 else 1.5)
        p.set_font("sans", "B", size)
        p.multi_cell(0, size * 0.5, _plain(h.text))
        p.ln(1.2)

    def para(self, b: Para) -> None:
        self.rich(b.text)
        self.pdf.ln(1.6)

    def items(self, b: Items) -> None:
        p = self.pdf
        left = p.l_margin
        for i, t in enumerate(b.items, 1):
            self.room(self.LINE * 2)
            mark = f"{i}." if b.ordered else "•"
            p.set_font("sans", "", self.BODY)
            p.set_x(left + 1.5)
            p.cell(5, self.LINE, mark)
            p.set_left_margin(left + 6.5)
            p.set_x(left + 6.5)
            self.rich(t)
            p.set_left_margin(left)
            p.ln(0.6)
        p.ln(1.2)

    def table(self, b: Table) -> None:
        from fpdf.enums import TableBordersLayout, TableCellFillMode
        from fpdf.fonts import FontFace
        p = self.pdf
        if b.caption:
            self.room(b.size * 0.48 * 4 + 12)
            self.rich(b.caption)
            p.ln(0.5)
        n = len(b.header)
        al = (b.align or "l" * n).ljust(n, "l")
        if b.widths:
            widths = b.widths
        else:   # width from the longest text of each column, within limits
            widths = [min(max([len(_plain(str(r[j]))) for r in b.rows] + [len(_plain(b.header[j])) * 0.8, 3]), 60)
                      for j in range(n)]
        self.room(b.size * 2.2)
        p.set_font("sans", "", b.size)
        lh = b.size * 0.48
        with p.table(col_widths=widths, text_align=[{"r": "RIGHT", "l": "LEFT"}[a] for a in al], line_height=lh,
                     headings_style=FontFace(emphasis="BOLD", fill_color=(225, 230, 240)),
                     borders_layout=TableBordersLayout.HORIZONTAL_LINES, cell_fill_color=(246, 247, 250),
                     cell_fill_mode=TableCellFillMode.ROWS, padding=(0.6, 1.0), width=p.epw) as t:
            for row in [b.header] + list(b.rows):
                r = t.row()
                for c in row:
                    c = str(c)
                    bold = c.startswith("**") and c.endswith("**")
                    r.cell(_plain(c), style=FontFace(emphasis="BOLD") if bold else None)
        p.ln(2.5)

    def image(self, b: Image) -> None:
        from PIL import Image as PILImage
        p = self.pdf
        with PILImage.open(b.path) as im:
            w_px, h_px = im.size
        w = self.epw * b.width
        h = w * h_px / w_px
        max_h = p.h - p.t_margin - p.b_margin - 2
        if h > max_h:
            h, w = max_h, max_h * w_px / h_px
        left = p.h - p.b_margin - p.get_y() - 3
        if h > left >= 0.9 * h:   # shrink a little rather than leave a page mostly empty
            h, w = left, left * w_px / h_px
        self.room(h + 2)
        x = p.l_margin + (self.epw - w) / 2
        p.image(b.path, x=x, y=p.get_y(), w=w, h=h)
        p.set_y(p.get_y() + h + 3)

    def code(self, b: Code) -> None:
        p = self.pdf
        p.set_font("mono", "", 7.2)
        lines = b.text.rstrip("\n").split("\n")
        self.room(min(len(lines), 6) * 3.5 + 3)
        p.set_fill_color(244, 244, 244)
        p.multi_cell(0, 3.5, b.text.rstrip("\n"), fill=True, padding=(1.5, 2))
        p.ln(2.5)


def to_pdf(doc: Document, path: str) -> str:
    w = _Writer(doc.title)
    w.title(doc.title)
    for b in doc.blocks:
        {Heading: w.heading, Para: w.para, Items: w.items, Table: w.table, Image: w.image, Code: w.code}[type(b)](b)
    tmp = path + ".tmp"
    w.pdf.output(tmp)
    os.replace(tmp, path)
    return path
