"""A built table: its numbers, its cells in the paper's layout, footnotes, the paper's block; rendered
to markdown, LaTeX and HTML (a notebook shows the HTML)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

LATEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "−": "-"}


@dataclass
class ResultTable:
    """`frame`: one row per table row, numeric columns (means, `<label> std`, `n`, differences to
    the paper `Δ <label>`); `display`: the same rows as strings in the paper's layout;
    `footnotes`: what was left out or is missing, and why; `paper`: the published rows, as strings."""

    title: str
    frame: pd.DataFrame
    display: pd.DataFrame
    footnotes: list[str] = field(default_factory=list)
    paper_title: str | None = None
    paper: pd.DataFrame | None = None
    findings_title: str | None = None
    findings: pd.DataFrame | None = None  # the paper's findings with our paired differences and verdicts
    findings_frame: pd.DataFrame | None = None  # their numbers (per-seed differences included)

    def blocks(self) -> list[tuple[str, pd.DataFrame, list[str]]]:
        """(title, cells, footnotes) of our block, the paper's block when there is one, then the findings
        (the table ends with what can be quoted)."""
        blocks = [(self.title, self.display, self.footnotes)]
        if self.paper is not None:
            blocks.append((self.paper_title or "Paper", self.paper, []))
        if self.findings is not None:
            blocks.append((self.findings_title or "Findings", self.findings, []))
        return blocks

    def to_markdown(self) -> str:
        return "\n\n".join(_markdown_block(*block) for block in self.blocks()) + "\n"

    def to_latex(self) -> str:
        return "\n".join(_latex_block(*block) for block in self.blocks())

    def to_html(self) -> str:
        return "\n".join(_html_block(*block) for block in self.blocks())

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, directory: str | Path, name: str) -> list[Path]:
        """Writes `<name>.csv` (the numbers), `.md`, `.tex` and `.html`; returns their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / f"{name}.{suffix}" for suffix in ("csv", "md", "tex", "html")]
        self.frame.to_csv(paths[0])
        if self.findings_frame is not None:
            self.findings_frame.to_csv(directory / f"{name}_findings.csv")
        for path, text in zip(paths[1:], (self.to_markdown(), self.to_latex(), self.to_html())):
            path.write_text(text)
        return paths


def _markdown_block(title: str, cells: pd.DataFrame, footnotes: list[str]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(str(value).replace("|", r"\|") for value in values) + " |"

    lines = [f"**{title}**", "", line(list(cells.columns)), line(["---"] * len(cells.columns))]
    lines += [line(list(row)) for row in cells.itertuples(index=False)]
    if footnotes:
        lines += ["", *(f"- *Note:* {note}" for note in footnotes)]
    return "\n".join(lines)


def _latex_text(text: str) -> str:
    for symbol, command in LATEX_SYMBOLS.items():
        text = text.replace(symbol, command)
    return text


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char if char != "\\" else r"\textbackslash{}")
    return text.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def _latex_block(title: str, cells: pd.DataFrame, footnotes: list[str]) -> str:
    width = len(cells.columns)
    alignment = "l" + "r" * (width - 1)
    rows = [" & ".join(_latex_escape(str(value)) for value in cells.columns) + r" \\", r"\midrule"]
    rows += [" & ".join(_latex_escape(str(value)) for value in row) + r" \\" for row in cells.itertuples(index=False)]
    if footnotes:
        rows.append(r"\midrule")
        rows += [
            rf"\multicolumn{{{width}}}{{p{{0.95\linewidth}}}}{{\footnotesize {_latex_escape(note)}}} \\"
            for note in footnotes
        ]
    body = "\n".join(rows)
    return _latex_text(
        "\\begin{table}[ht]\n\\centering\n"
        f"\\caption{{{_latex_escape(title)}}}\n"
        f"\\begin{{tabular}}{{{alignment}}}\n\\toprule\n{body}\n\\bottomrule\n\\end{{tabular}}\n\\end{{table}}\n"
    )


def _html_block(title: str, cells: pd.DataFrame, footnotes: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in cells.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(value))}</td>" for value in row) + "</tr>"
        for row in cells.itertuples(index=False)
    )
    foot = "".join(
        f'<tr><td colspan="{len(cells.columns)}"><em>Note:</em> {html.escape(note)}</td></tr>' for note in footnotes
    )
    return (
        f'<table><caption style="caption-side: top; text-align: left"><strong>{html.escape(title)}</strong></caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>" + (f"<tfoot>{foot}</tfoot>" if foot else "") + "</table>"
    )
