"""The template library: each document type is a ``<key>.docx`` plus a ``<key>.toml`` field map.

Built-in templates live in ``settings.templates_dir`` (the project's ``templates/``); a practice
adds or overrides one by dropping ``<key>.docx`` and ``<key>.toml`` into
``settings.user_templates_dir``. A user template with the same key replaces the built-in one.

The field map names the document's title, its LOINC document code, and its section fields in
print order, each with the headings a physician may say for it::

    key = "operative_report"
    title = "Operative Report"
    loinc = "11504-8"
    loinc_display = "Surgical operation note"
    letter = false                      # true: salutation / closing around the sections
    detect_phrases = ["operative report"]

    [[sections]]
    key = "estimated_blood_loss"
    label = "Estimated blood loss"
    headings = ["estimated blood loss", "ebl", "blood loss"]
    required = true                     # missing -> [MISSING: ...] and Document.missing
    inline = true                       # print "Heading: text" on one line
    alternatives = []                   # other fields that satisfy a required one
    overflow = ""                       # a second dictated section of this key goes there
    paragraphs = 0                      # letters: paragraphs after this many are letter prose

Letters (``letter = true``) keep the sections in the order they were dictated; reports print
them in the field map's order.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import TemplateFieldError, TemplateNotFoundError
from pipeline.core.settings import Settings

__all__ = [
    "DOCUMENT_TYPES",
    "FieldSpec",
    "TemplateSpec",
    "load_spec",
    "list_templates",
    "get_template",
]

log = logging.getLogger(__name__)

#: The built-in document type keys.
DOCUMENT_TYPES: tuple[str, ...] = (
    "operative_report",
    "consult_letter",
    "progress_note",
    "discharge_summary",
    "radiology_report",
    "referral_letter",
)


@dataclass(frozen=True)
class FieldSpec:
    """One section field of a template."""

    key: str
    label: str
    headings: tuple[str, ...]
    required: bool = False
    inline: bool = False
    alternatives: tuple[str, ...] = ()
    overflow: str | None = None
    paragraphs: int = 0  # letters: at most this many paragraphs; later ones are letter prose


@dataclass(frozen=True)
class TemplateSpec:
    """A template: its field map and the .docx it fills."""

    key: str
    title: str
    loinc: str
    loinc_display: str
    docx_path: Path
    toml_path: Path
    letter: bool = False
    detect_phrases: tuple[str, ...] = ()
    sections: tuple[FieldSpec, ...] = field(default_factory=tuple)
    source: str = "builtin"  # builtin or user

    def field(self, key: str) -> FieldSpec | None:
        """The field with this key, or None."""
        for f in self.sections:
            if f.key == key:
                return f
        return None


def _str_list(value: object, what: str, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TemplateFieldError(
            f"Template field map {path.name} has {what} of type {type(value).__name__}; "
            "expected a list of strings."
        )
    return tuple(v.strip() for v in value if v.strip())


def load_spec(toml_path: Path, source: str = "builtin") -> TemplateSpec:
    """Read and check one field map; the .docx must sit next to it with the same stem."""
    toml_path = Path(toml_path)
    docx_path = toml_path.with_suffix(".docx")
    if not docx_path.is_file():
        raise TemplateNotFoundError(
            f"Template field map {toml_path.name} has no {docx_path.name} next to it; "
            "expected both files in the same folder."
        )
    try:
        raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TemplateFieldError(
            f"Template field map {toml_path.name} is not valid TOML ({exc}); expected key, "
            "title, loinc and [[sections]] entries."
        ) from exc
    for name in ("title", "loinc"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise TemplateFieldError(
                f"Template field map {toml_path.name} lacks '{name}'; expected a non-empty string."
            )
    key = str(raw.get("key") or toml_path.stem)
    if key != toml_path.stem:
        raise TemplateFieldError(
            f"Template field map {toml_path.name} declares key '{key}'; expected the file "
            f"name's stem '{toml_path.stem}'."
        )
    sections: list[FieldSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw.get("sections") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise TemplateFieldError(
                f"Template field map {toml_path.name} section {i + 1} has no key; expected "
                "key, label and headings."
            )
        fkey = entry["key"].strip()
        if not fkey.isidentifier() or fkey in seen:
            raise TemplateFieldError(
                f"Template field map {toml_path.name} section key '{fkey}' is duplicated or not "
                "an identifier; expected unique snake_case keys."
            )
        seen.add(fkey)
        label = str(entry.get("label") or fkey.replace("_", " ").capitalize())
        headings = _str_list(entry.get("headings"), "headings", toml_path) or (label.lower(),)
        sections.append(
            FieldSpec(
                key=fkey,
                label=label,
                headings=tuple(h.lower() for h in headings),
                required=bool(entry.get("required", False)),
                inline=bool(entry.get("inline", False)),
                alternatives=_str_list(entry.get("alternatives"), "alternatives", toml_path),
                overflow=(str(entry["overflow"]) if entry.get("overflow") else None),
                paragraphs=int(entry.get("paragraphs", 0) or 0),
            )
        )
    if not sections:
        raise TemplateFieldError(
            f"Template field map {toml_path.name} has no [[sections]]; expected at least one."
        )
    return TemplateSpec(
        key=key,
        title=raw["title"].strip(),
        loinc=raw["loinc"].strip(),
        loinc_display=str(raw.get("loinc_display") or raw["title"]).strip(),
        docx_path=docx_path,
        toml_path=toml_path,
        letter=bool(raw.get("letter", False)),
        detect_phrases=tuple(p.lower() for p in _str_list(
            raw.get("detect_phrases"), "detect_phrases", toml_path)),
        sections=tuple(sections),
        source=source,
    )


def _scan(folder: Path, source: str) -> dict[str, TemplateSpec]:
    found: dict[str, TemplateSpec] = {}
    if not folder.is_dir():
        return found
    for toml_path in sorted(folder.glob("*.toml")):
        found[toml_path.stem] = load_spec(toml_path, source)
    return found


def _signature(folder: Path) -> tuple[tuple[str, float], ...]:
    if not folder.is_dir():
        return ()
    return tuple(
        sorted(
            (p.name, p.stat().st_mtime)
            for p in folder.iterdir()
            if p.suffix in (".toml", ".docx")
        )
    )


_CACHE: dict[tuple[object, ...], dict[str, TemplateSpec]] = {}


def list_templates(settings: Settings) -> dict[str, TemplateSpec]:
    """All templates by key: built-in ones, then the practice's own (which win on a clash).

    Cached per folder contents, so dropping a new template in is picked up without a restart.
    """
    builtin_dir = Path(settings.templates_dir)
    user_dir = Path(settings.user_templates_dir)
    cache_key = (str(builtin_dir), _signature(builtin_dir), str(user_dir), _signature(user_dir))
    cached = _CACHE.get(cache_key)
    if cached is not None:
        return cached
    templates = _scan(builtin_dir, "builtin")
    user = _scan(user_dir, "user")
    if user:
        log.info("user templates loaded count=%d", len(user))
    templates.update(user)
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[cache_key] = templates
    return templates


def get_template(key: str, settings: Settings) -> TemplateSpec:
    """The template for a document type key; raise ``TemplateNotFoundError`` if none exists."""
    templates = list_templates(settings)
    spec = templates.get(key)
    if spec is None:
        raise TemplateNotFoundError(
            f"No template for document type '{key}'; expected one of: "
            f"{', '.join(sorted(templates)) or '(none installed)'}."
        )
    return spec
