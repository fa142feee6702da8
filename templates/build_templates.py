"""Build the built-in .docx templates from their field maps (``<key>.toml``).

Run ``.venv/bin/python templates/build_templates.py`` after changing the layout; the .docx
files are committed. Each is an ordinary Word document (styles, letterhead in the page header,
a patient table, a footer with the signature status and page numbers) carrying docxtpl/Jinja
tags, so a practice can open it in Word and restyle it: change fonts and colours through the
styles ("Title", "Heading 2", "Body Text", "Field Label", "Missing"), add a logo to the page
header, move the paragraphs around. Keep the ``{{ ... }}`` / ``{% ... %}`` tags intact.

Variables a template can use (all always present; a missing value is an empty string):

- ``practice_name``, ``title``, ``document_type``, ``status_text``, ``is_final``,
  ``signature_text``, ``rendered_date``
- ``h.patient_name``, ``h.date_of_birth``, ``h.mrn``, ``h.date_of_service``, ``h.physician``,
  ``h.referring_physician``
- ``sections``: list of objects with ``key``, ``label``, ``text``, ``paragraphs`` (list),
  ``missing`` (bool), ``inline`` (bool)
- ``s_<field key>``: the text of each field of the field map ("" when not dictated)
- letters: ``salutation``, ``recipient``, ``patient_ref``, ``visit_date``, ``cc``,
  ``has_body`` (the physician dictated the letter's opening prose himself)
"""

from __future__ import annotations

import re
import sys
import tomllib
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from docx import Document
from docx.enum.section import WD_SECTION
from docx.enum.style import WD_STYLE_TYPE
from docx.enum.table import WD_TABLE_ALIGNMENT
from docx.enum.text import WD_ALIGN_PARAGRAPH, WD_COLOR_INDEX, WD_TAB_ALIGNMENT
from docx.oxml import OxmlElement
from docx.oxml.ns import qn
from docx.shared import Cm, Pt, RGBColor
from lxml import etree

HERE = Path(__file__).resolve().parent
FONT = "Calibri"
ACCENT = RGBColor(0x1F, 0x3A, 0x5F)  # dark navy
GREY = RGBColor(0x55, 0x5F, 0x6B)
LABEL_FILL = "E8EDF3"


def _shade(cell, fill: str) -> None:
    tc_pr = cell._tc.get_or_add_tcPr()
    shd = OxmlElement("w:shd")
    shd.set(qn("w:val"), "clear")
    shd.set(qn("w:color"), "auto")
    shd.set(qn("w:fill"), fill)
    tc_pr.append(shd)


def _border_bottom(paragraph, color: str = "1F3A5F", size: int = 12) -> None:
    p_pr = paragraph._p.get_or_add_pPr()
    borders = OxmlElement("w:pBdr")
    bottom = OxmlElement("w:bottom")
    bottom.set(qn("w:val"), "single")
    bottom.set(qn("w:sz"), str(size))
    bottom.set(qn("w:space"), "4")
    bottom.set(qn("w:color"), color)
    borders.append(bottom)
    p_pr.append(borders)


def _table_borders(table, color: str = "B8C4D2") -> None:
    tbl_pr = table._tbl.tblPr
    borders = OxmlElement("w:tblBorders")
    for edge in ("top", "left", "bottom", "right", "insideH", "insideV"):
        el = OxmlElement(f"w:{edge}")
        el.set(qn("w:val"), "single")
        el.set(qn("w:sz"), "4")
        el.set(qn("w:space"), "0")
        el.set(qn("w:color"), color)
        borders.append(el)
    tbl_pr.append(borders)


def _field(paragraph, instr: str) -> None:
    """Append a Word field (PAGE, NUMPAGES) to the paragraph."""
    run = paragraph.add_run()
    fld = OxmlElement("w:fldSimple")
    fld.set(qn("w:instr"), instr)
    r = OxmlElement("w:r")
    t = OxmlElement("w:t")
    t.text = "1"
    r.append(t)
    fld.append(r)
    run._r.addnext(fld)


def _styles(doc) -> None:
    styles = doc.styles
    normal = styles["Normal"]
    normal.font.name = FONT
    normal.font.size = Pt(10.5)
    normal.element.rPr.rFonts.set(qn("w:eastAsia"), FONT)
    normal.paragraph_format.space_after = Pt(2)

    title = styles["Title"]
    title.font.name = FONT
    title.font.size = Pt(17)
    title.font.bold = True
    title.font.color.rgb = ACCENT
    title.font.all_caps = True
    title.paragraph_format.space_before = Pt(6)
    title.paragraph_format.space_after = Pt(8)
    # Word's built-in Title carries a bottom border and theme font: reset to ours
    title.element.get_or_add_rPr()

    h2 = styles["Heading 2"]
    h2.font.name = FONT
    h2.font.size = Pt(10.5)
    h2.font.bold = True
    h2.font.italic = False
    h2.font.all_caps = True
    h2.font.color.rgb = ACCENT
    h2.paragraph_format.space_before = Pt(9)
    h2.paragraph_format.space_after = Pt(2)
    h2.paragraph_format.keep_with_next = True

    body = styles["Body Text"]
    body.font.name = FONT
    body.font.size = Pt(10.5)
    body.paragraph_format.space_after = Pt(4)
    body.paragraph_format.line_spacing = 1.1

    label = styles.add_style("Field Label", WD_STYLE_TYPE.CHARACTER)
    label.font.bold = True
    label.font.all_caps = True
    label.font.color.rgb = ACCENT

    missing = styles.add_style("Missing", WD_STYLE_TYPE.CHARACTER)
    missing.font.bold = True
    missing.font.color.rgb = RGBColor(0x9C, 0x00, 0x06)
    missing.font.highlight_color = WD_COLOR_INDEX.YELLOW

    small = styles.add_style("Small", WD_STYLE_TYPE.PARAGRAPH)
    small.base_style = normal
    small.font.size = Pt(8.5)
    small.font.color.rgb = GREY


def _missing_run(paragraph, text: str):
    run = paragraph.add_run(text, style="Missing")
    run.font.highlight_color = WD_COLOR_INDEX.YELLOW  # direct too: survives style resets
    return run


def _value_or_missing(paragraph, expr: str, missing_text: str, required: bool) -> None:
    """``{{ expr }}`` or a highlighted marker / dash when the value is empty."""
    paragraph.add_run(f"{{%r if {expr} %}}")
    paragraph.add_run(f"{{{{ {expr} }}}}")
    paragraph.add_run("{%r else %}")
    if required:
        _missing_run(paragraph, missing_text)
    else:
        paragraph.add_run("—").font.color.rgb = GREY
    paragraph.add_run("{%r endif %}")


def _letterhead(section) -> None:
    header = section.header
    header.is_linked_to_previous = False
    p = header.paragraphs[0]
    p.alignment = WD_ALIGN_PARAGRAPH.LEFT
    run = p.add_run("{{ practice_name }}")
    run.font.size = Pt(15)
    run.font.bold = True
    run.font.color.rgb = ACCENT
    sub = header.add_paragraph()
    r = sub.add_run("{{ practice_subtitle }}")
    r.font.size = Pt(8.5)
    r.font.color.rgb = GREY
    _border_bottom(sub)


def _footer(section) -> None:
    footer = section.footer
    footer.is_linked_to_previous = False
    p = footer.paragraphs[0]
    p.style = "Small"
    p.paragraph_format.tab_stops.add_tab_stop(Cm(17.6), WD_TAB_ALIGNMENT.RIGHT)
    status = p.add_run("{{ status_text }}")
    status.bold = True
    p.add_run("   {{ title }} · {{ footer_patient }}")
    p.add_run("\tPage ")
    _field(p, "PAGE")
    p.add_run(" of ")
    _field(p, "NUMPAGES")


def _header_table(doc, key: str, letter: bool) -> None:
    third = (("Referred to", "recipient", False) if key == "referral_letter"
             else ("Referring physician", "h.referring_physician", letter))
    rows = [
        (("Patient", "h.patient_name", True), ("Date of birth", "h.date_of_birth", False)),
        (("MRN", "h.mrn", True), ("Date of service", "h.date_of_service", True)),
        (("Physician", "h.physician", True), third),
    ]
    table = doc.add_table(rows=len(rows), cols=4)
    table.alignment = WD_TABLE_ALIGNMENT.CENTER
    table.autofit = False
    _table_borders(table)
    widths = (Cm(3.2), Cm(5.6), Cm(3.6), Cm(5.2))
    for r, pair in enumerate(rows):
        for c, (label, expr, required) in enumerate(pair):
            lcell = table.cell(r, 2 * c)
            vcell = table.cell(r, 2 * c + 1)
            lcell.width, vcell.width = widths[2 * c], widths[2 * c + 1]
            _shade(lcell, LABEL_FILL)
            lp = lcell.paragraphs[0]
            lr = lp.add_run(label)
            lr.bold = True
            lr.font.size = Pt(9)
            lr.font.color.rgb = ACCENT
            vp = vcell.paragraphs[0]
            _value_or_missing(vp, expr, f"[MISSING: {label}]", required)
    doc.add_paragraph().paragraph_format.space_after = Pt(0)


def _sections_loop(doc) -> None:
    doc.add_paragraph("{%p for s in sections %}")
    doc.add_paragraph("{%p if s.inline %}")
    p = doc.add_paragraph(style="Body Text")
    p.paragraph_format.space_before = Pt(5)
    p.add_run("{{ s.label }}: ", style="Field Label")
    p.add_run("{%r if s.missing %}")
    _missing_run(p, "[MISSING: {{ s.label }}]")
    p.add_run("{%r else %}")
    p.add_run("{{ s.text }}")
    p.add_run("{%r endif %}")
    doc.add_paragraph("{%p else %}")
    doc.add_paragraph("{%p if s.label %}")
    doc.add_paragraph("{{ s.label }}", style="Heading 2")
    doc.add_paragraph("{%p endif %}")
    doc.add_paragraph("{%p if s.missing %}")
    mp = doc.add_paragraph(style="Body Text")
    _missing_run(mp, "[MISSING: {{ s.label }}]")
    doc.add_paragraph("{%p else %}")
    doc.add_paragraph("{%p for para in s.paragraphs %}")
    doc.add_paragraph("{{ para }}", style="Body Text")
    doc.add_paragraph("{%p endfor %}")
    doc.add_paragraph("{%p endif %}")
    doc.add_paragraph("{%p endif %}")
    doc.add_paragraph("{%p endfor %}")


def _signature(doc, letter: bool) -> None:
    if letter:
        p = doc.add_paragraph("Sincerely,", style="Body Text")
        p.paragraph_format.space_before = Pt(12)
        doc.add_paragraph().paragraph_format.space_after = Pt(14)
    p = doc.add_paragraph(style="Body Text")
    if not letter:
        p.paragraph_format.space_before = Pt(14)
        _border_bottom(p, color="B8C4D2", size=4)
    r = p.add_run("{{ h.physician }}")
    r.bold = True
    doc.add_paragraph("{%p if is_final %}")
    doc.add_paragraph("{{ signature_text }}", style="Small")
    doc.add_paragraph("{%p else %}")
    sp = doc.add_paragraph(style="Small")
    draft = sp.add_run("{{ signature_text }}")
    draft.bold = True
    draft.font.color.rgb = RGBColor(0x9C, 0x00, 0x06)
    doc.add_paragraph("{%p endif %}")
    doc.add_paragraph("{%p if cc %}")
    cp = doc.add_paragraph(style="Small")
    cp.add_run("cc: ").bold = True
    cp.add_run("{{ cc }}")
    doc.add_paragraph("{%p endif %}")


def _letter_opening(doc, key: str) -> None:
    p = doc.add_paragraph("{{ rendered_date }}", style="Body Text")
    p.paragraph_format.space_before = Pt(4)
    p.paragraph_format.space_after = Pt(8)
    doc.add_paragraph("{{ recipient }}", style="Body Text")
    p = doc.add_paragraph(style="Body Text")
    p.paragraph_format.space_before = Pt(8)
    p.add_run("Re: ").bold = True
    p.add_run("{{ patient_ref }}")
    p.add_run("{%r if h.date_of_birth %}")
    p.add_run(", date of birth {{ h.date_of_birth }}")
    p.add_run("{%r endif %}")
    p.add_run("{%r if h.mrn %}")
    p.add_run(", MRN {{ h.mrn }}")
    p.add_run("{%r endif %}")
    p = doc.add_paragraph("Dear {{ salutation }},", style="Body Text")
    p.paragraph_format.space_before = Pt(8)
    if key == "consult_letter":
        text = (
            "Thank you for referring {{ patient_ref }}, whom I saw in consultation on "
            "{{ visit_date }}. My findings and recommendations are summarised below."
        )
    else:
        text = (
            "I would be grateful if you could see {{ patient_ref }}. The reason for referral "
            "and the relevant history are summarised below."
        )
    doc.add_paragraph("{%p if not has_body %}")
    doc.add_paragraph(text, style="Body Text")
    doc.add_paragraph("{%p endif %}")


def build(key: str, spec: dict[str, object], out: Path) -> Path:
    """Write one template .docx for a field map."""
    letter = bool(spec.get("letter"))
    doc = Document()
    _styles(doc)
    section = doc.sections[0]
    section.page_height, section.page_width = Cm(27.94), Cm(21.59)  # US Letter
    section.left_margin = section.right_margin = Cm(2.0)
    section.top_margin = Cm(2.2)
    section.bottom_margin = Cm(2.0)
    section.header_distance = Cm(0.9)
    section.footer_distance = Cm(0.9)
    section.start_type = WD_SECTION.NEW_PAGE
    _letterhead(section)
    _footer(section)
    doc.add_paragraph("{{ title }}", style="Title")
    _header_table(doc, key, letter)
    if letter:
        _letter_opening(doc, key)
    _sections_loop(doc)
    _signature(doc, letter)
    core = doc.core_properties
    core.title = str(spec["title"])
    core.author = "dictation"
    core.comments = f"Template {key}; field map {key}.toml"
    core.created = core.modified = datetime(2026, 1, 1, tzinfo=UTC)
    core.last_modified_by = "dictation"
    core.revision = 1
    path = out / f"{key}.docx"
    doc.save(str(path))
    _slim(path)
    return path


_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_DROP_PARTS = ("word/stylesWithEffects.xml", "docProps/thumbnail.jpeg", "customXml/")


def _slim(path: Path) -> None:
    """Drop what python-docx's default template carries and we do not use (790 KB of style
    definitions, a thumbnail, custom XML): rendering parses and writes every part, so the
    template's size is most of the render time. Word re-adds built-in styles on demand."""
    with zipfile.ZipFile(path) as zin:
        items = {name: zin.read(name) for name in zin.namelist()}
    items = {n: d for n, d in items.items() if not n.startswith(_DROP_PARTS)}
    root = etree.fromstring(items["word/styles.xml"])
    ns = {"w": _W}
    for latent in root.findall("w:latentStyles", ns):
        root.remove(latent)
    by_id = {s.get(f"{{{_W}}}styleId"): s for s in root.findall("w:style", ns)}
    keep: set[str] = set()
    wanted = {"Normal", "Title", "Heading 2", "Body Text", "Field Label", "Missing", "Small",
              "Header", "Footer", "Default Paragraph Font", "Normal Table", "No List",
              "Table Grid"}
    stack = [sid for sid, s in by_id.items()
             if s.find("w:name", ns) is not None
             and s.find("w:name", ns).get(f"{{{_W}}}val") in wanted]
    used = set(re.findall(rb'w:(?:pStyle|rStyle|tblStyle) w:val="([^"]+)"',
                          b"".join(d for n, d in items.items() if n.startswith("word/"))))
    stack += [u.decode() for u in used]
    while stack:
        sid = stack.pop()
        if sid in keep or sid not in by_id:
            continue
        keep.add(sid)
        for tag in ("basedOn", "link", "next"):
            ref = by_id[sid].find(f"w:{tag}", ns)
            if ref is not None:
                stack.append(ref.get(f"{{{_W}}}val"))
    for sid, style in by_id.items():
        if sid not in keep:
            root.remove(style)
    items["word/styles.xml"] = etree.tostring(root, xml_declaration=True, encoding="UTF-8",
                                              standalone=True)
    for rels in ("_rels/.rels", "word/_rels/document.xml.rels"):
        xml = items[rels].decode("utf-8")
        xml = re.sub(r'<Relationship [^>]*Target="[^"]*(?:stylesWithEffects|thumbnail|'
                     r'customXml/)[^"]*"/>', "", xml)
        items[rels] = xml.encode("utf-8")
    ct = items["[Content_Types].xml"].decode("utf-8")
    ct = re.sub(r'<Override PartName="/(?:word/stylesWithEffects\.xml|customXml/[^"]*)"[^>]*/>',
                "", ct)
    ct = re.sub(r'<Default Extension="jpeg"[^>]*/>', "", ct)
    items["[Content_Types].xml"] = ct.encode("utf-8")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in items.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))  # reproducible build
            info.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(info, data)


def main(argv: list[str]) -> int:
    """Build every template whose field map is in this folder (or the named keys)."""
    keys = argv or sorted(p.stem for p in HERE.glob("*.toml"))
    for key in keys:
        spec = tomllib.loads((HERE / f"{key}.toml").read_text(encoding="utf-8"))
        path = build(key, spec, HERE)
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
