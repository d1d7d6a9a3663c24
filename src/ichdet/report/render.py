"""The report page: `Section`s rendered to ``report.md`` and a self-contained ``index.html``.

Paragraphs are plain text with two bits of Markdown understood in HTML: inline `code`
spans and blank lines (paragraph breaks; a single newline becomes ``<br>``). Everything
else is escaped. `notes` (e.g. "synthetic data") open both files as a warning banner.
"""
from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import quote

from ichdet.fileio import write_text_atomic
from ichdet.report.tables import Column, html_table, markdown_table


class Table(NamedTuple):
    """A named table: rows (dicts) and the columns to show."""

    name: str
    rows: Sequence[Mapping[str, Any]]
    columns: Sequence[Column]


class FigureRef(NamedTuple):
    """A figure file, given relative to the report folder, with its caption."""

    caption: str
    path: str | Path


@dataclass
class Section:
    """One titled part of the report: paragraphs, then tables, then figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)


CSS = """
:root { color-scheme: light; }
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1f2328; background: #fff; max-width: 62rem; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; }
h1 { font-size: 1.9rem; margin: 0.2rem 0 1rem; line-height: 1.2; }
h2 { font-size: 1.35rem; margin: 2.4rem 0 0.6rem; padding-bottom: 0.25rem; border-bottom: 1px solid #d8dee4; }
h3 { font-size: 1.05rem; margin: 1.6rem 0 0.4rem; }
p { margin: 0.6rem 0; }
code { font: 0.88em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: #f3f4f6; padding: 0.1em 0.3em; border-radius: 4px; }
.banner { background: #fff4ce; border: 1px solid #e3b341; border-left: 6px solid #d29922;
  border-radius: 6px; padding: 0.75rem 1rem; margin: 0 0 1.5rem; }
.banner p { margin: 0.25rem 0; font-weight: 600; }
nav.toc { font-size: 0.95rem; margin-bottom: 1rem; }
nav.toc a { color: #0969da; text-decoration: none; margin-right: 1rem; }
.table-wrap { overflow-x: auto; margin: 0.6rem 0 1.2rem; }
table.report-table { border-collapse: collapse; font-size: 0.92rem; font-variant-numeric: tabular-nums; }
table.report-table caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 0.4rem; }
table.report-table th, table.report-table td { padding: 0.35rem 0.75rem; border-bottom: 1px solid #e5e7eb;
  text-align: left; vertical-align: top; }
table.report-table thead th { background: #f0f3f6; border-bottom: 2px solid #c9d1d9; white-space: nowrap; }
table.report-table tbody tr:nth-child(even) { background: #f8fafc; }
table.report-table .right { text-align: right; }
table.report-table .center { text-align: center; }
figure { margin: 1.2rem 0 1.8rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e7eb; border-radius: 4px; }
figcaption { font-size: 0.9rem; color: #57606a; margin-top: 0.4rem; }
@media print { .table-wrap { overflow: visible; } body { max-width: none; } }
""".strip()

_CODE = re.compile(r"`([^`\n]+)`")


def inline_html(text: str) -> str:
    """Escape `text` for HTML, then turn `backtick` spans into ``<code>`` and newlines into ``<br>``."""
    escaped = _CODE.sub(r"<code>\1</code>", html.escape(text))
    return "<br>\n".join(line.strip() for line in escaped.split("\n"))


def _blocks(text: str) -> list[str]:
    """Split a paragraph string on blank lines into non-empty blocks."""
    return [b.strip("\n") for b in re.split(r"\n\s*\n", text) if b.strip()]


def _slug(title: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _figure_url(out_dir: Path, ref: FigureRef) -> str:
    """The figure's relative URL; it must be relative and exist under `out_dir`."""
    rel = Path(ref.path)
    if rel.is_absolute():
        raise ValueError(f"figure {ref.caption!r}: path must be relative to the report folder, got {rel}")
    if not (out_dir / rel).is_file():
        raise FileNotFoundError(f"figure {ref.caption!r}: {out_dir / rel} does not exist")
    return quote(PurePosixPath(*rel.parts).as_posix())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _as_notes(notes: str | Sequence[str] | None) -> list[str]:
    if notes is None:
        return []
    return [notes] if isinstance(notes, str) else [str(n) for n in notes]


def render_markdown(out_dir: Path, title: str, sections: Sequence[Section], notes: list[str]) -> str:
    """The report as Markdown text (figure paths checked against `out_dir`)."""
    out = [f"# {_one_line(title)}", ""]
    for note in notes:
        out += [f"> **⚠ {_one_line(note)}**", ">"]
    if notes:
        out[-1] = ""
    for sec in sections:
        out += [f"## {_one_line(sec.title)}", ""]
        for para in sec.paragraphs:
            for block in _blocks(para):
                out += [block, ""]
        for tab in sec.tables:
            if tab.name:
                out += [f"### {_one_line(tab.name)}", ""]
            out += [markdown_table(tab.rows, tab.columns)]
        for fig in sec.figures:
            alt = _one_line(re.sub(r"[\[\]]", " ", fig.caption))
            out += [f"![{alt}]({_figure_url(out_dir, fig)})", "", f"*{_one_line(fig.caption)}*", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def render_html(out_dir: Path, title: str, sections: Sequence[Section], notes: list[str]) -> str:
    """The report as one self-contained HTML page (inline CSS; images by relative path)."""
    used: set[str] = set()
    slugs = [_slug(s.title, used) for s in sections]
    body = [f"<h1>{html.escape(title)}</h1>"]
    if notes:
        body.append('<div class="banner" role="alert">'
                    + "".join(f"<p>⚠ {inline_html(n)}</p>" for n in notes) + "</div>")
    if len(sections) > 1:
        body.append('<nav class="toc">' + "".join(
            f'<a href="#{slug}">{html.escape(s.title)}</a>' for s, slug in zip(sections, slugs)) + "</nav>")
    for sec, slug in zip(sections, slugs):
        body.append(f'<section id="{slug}">\n<h2>{html.escape(sec.title)}</h2>')
        for para in sec.paragraphs:
            body += [f"<p>{inline_html(b)}</p>" for b in _blocks(para)]
        for tab in sec.tables:
            body.append(f'<div class="table-wrap">\n{html_table(tab.rows, tab.columns, tab.name or None)}</div>')
        for fig in sec.figures:
            src = html.escape(_figure_url(out_dir, fig))
            cap = html.escape(fig.caption)
            body.append(f'<figure>\n<img src="{src}" alt="{cap}" loading="lazy">\n'
                        f"<figcaption>{inline_html(fig.caption)}</figcaption>\n</figure>")
        body.append("</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section],
                 notes: str | Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``index.html`` atomically into `out_dir`; returns both paths.

    Figure paths are relative to `out_dir` and must already exist there.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    note_list = _as_notes(notes)
    md = render_markdown(out_dir, title, sections, note_list)
    page = render_html(out_dir, title, sections, note_list)
    return (write_text_atomic(out_dir / "report.md", md), write_text_atomic(out_dir / "index.html", page))
