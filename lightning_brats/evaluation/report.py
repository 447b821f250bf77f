"""``report.html``: one self-contained page of an ``eval.py`` output folder.

The page holds the summary table (``summary.csv``), the Dice box plot (``dice_boxplot.png``) and
a row per case (``metrics.csv``) with its picture (``pictures/<case>.png``); the pictures are
embedded as base64 ``data:`` URIs, so the file opens in any browser without W&B, a server or the
folder beside it. Clicking a column header sorts the case table (again: the other way); a link
ending in ``#sort=<column>`` (``#sort=-<column>`` for descending) opens the page sorted, e.g.
``report.html#sort=dice_et``. A few lines of inline JavaScript, no external assets. Hovering a
metric's column header shows what :mod:`lightning_brats.evaluation.registry` declares for it: label,
unit and which way is better (e.g. "HD95 (mm; lower is better), ET").
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime
from pathlib import Path

from lightning_brats.evaluation import registry as metric_registry
from lightning_brats.evaluation.scoring import read_csv
from lightning_brats.io import atomic_save

#: The file written into the evaluation folder.
REPORT_HTML = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; vertical-align: middle; }
th { background: #f0f0f0; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[data-sorted="asc"]::after { content: " \\25B2"; } th[data-sorted="desc"]::after { content: " \\25BC"; }
td.text, th.text { text-align: left; }
img.case { width: 260px; cursor: zoom-in; } img.case.big { width: 720px; cursor: zoom-out; }
.note { color: #a00; }
"""

_SCRIPT = """
function sortTable(table, col, desc) {
  const body = table.tBodies[0];
  const key = (row) => { const v = row.cells[col].dataset.value; const n = Number(v);
    return v === "" ? null : (isNaN(n) ? v : n); };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);  // empty cells last
    const c = (typeof x === "number" && typeof y === "number") ? x - y
      : String(x).localeCompare(String(y), undefined, {numeric: true});
    return desc ? -c : c; });
  rows.forEach((r) => body.appendChild(r));
  table.querySelectorAll("th").forEach((th, i) => { th.dataset.sorted = i === col ? (desc ? "desc" : "asc") : ""; });
}
document.querySelectorAll("table.sortable").forEach((table) => {
  table.querySelectorAll("th").forEach((th, i) => th.addEventListener("click",
    () => sortTable(table, i, th.dataset.sorted === "asc")));
});
document.querySelectorAll("img.case").forEach((img) => img.addEventListener("click", () => img.classList.toggle("big")));
const wanted = decodeURIComponent(location.hash).match(/^#sort=(-?)(.+)$/);
if (wanted) {
  const table = document.getElementById("cases");
  const col = Array.from(table.querySelectorAll("th")).findIndex((th) => th.dataset.column === wanted[2]);
  if (col >= 0) sortTable(table, col, wanted[1] === "-");
}
window.addEventListener("load", () => {
  const images = Array.from(document.querySelectorAll("img"));
  const shown = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.imagesShown = shown;
  if (shown < images.length) document.getElementById("status").textContent =
    (images.length - shown) + " of " + images.length + " pictures could not be shown.";
});
"""


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cell(value, column: str) -> str:
    """A ``<td>`` whose ``data-value`` is what sorting uses (empty for NaN) and whose text is rounded."""
    if isinstance(value, bool):
        return f'<td data-value="{int(value)}">{"yes" if value else ""}</td>'
    if isinstance(value, float):
        if math.isnan(value):
            return '<td data-value="">-</td>'
        return f'<td data-value="{value!r}">{value:.4g}</td>'
    text = html.escape(str(value))
    return f'<td class="text" data-value="{text}">{text}</td>'


def _header(columns: list[str], regions: list[str] = ()) -> str:
    """The header row; a ``<metric>_<region>`` column of a registered metric gets a ``title`` (the
    registry's label, unit and direction, then the region)."""

    def title(column: str) -> str:
        split = metric_registry.split_column(column, regions)
        if split is None:
            return ""
        return f' title="{html.escape(metric_registry.get(split[0]).describe())}, {html.escape(split[1].upper())}"'

    cells = "".join(
        f'<th data-column="{html.escape(c)}"{" class=text" if c in ("case_id", "metric", "region", "picture") else ""}'
        f"{title(c)}>{html.escape(c)}</th>"
        for c in columns
    )
    return f"<thead><tr>{cells}</tr></thead>"


def write_report(eval_dir: Path | str, embed: bool = True) -> Path:
    """Write ``report.html`` into an ``eval.py`` output folder (atomically) and return its path.

    Args:
        eval_dir: the folder holding ``metrics.csv``, ``summary.csv`` and, where ``eval.py`` wrote
            them, ``dice_boxplot.png`` and ``pictures/<case>.png``.
        embed: embed the pictures as base64 data URIs (the page stands alone); ``False`` links them
            relative to the folder instead (a smaller page that needs the folder beside it).

    Returns:
        ``<eval_dir>/report.html``.

    Raises:
        DataError: ``metrics.csv`` or ``summary.csv`` is missing or malformed (the message names it).
    """
    eval_dir = Path(eval_dir)
    rows = read_csv(eval_dir / "metrics.csv")
    summary = read_csv(eval_dir / "summary.csv")

    def picture(path: Path, alt: str, css: str) -> str:
        if not path.is_file():
            return ""
        src = _png_uri(path) if embed else html.escape(path.relative_to(eval_dir).as_posix())
        return f'<img class="{css}" alt="{html.escape(alt)}" src="{src}">'

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Evaluation {html.escape(eval_dir.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Evaluation {html.escape(eval_dir.name)}</h1>",
        (f"<p>{len(rows)} cases; written {datetime.now():%Y-%m-%d %H:%M} from <code>{html.escape(str(eval_dir))}</code>. "
         "Click a column header to sort.</p>"),
        '<p id="status" class="note"></p>',
    ]
    if summary:
        columns = list(summary[0])
        body = "".join("<tr>" + "".join(_cell(row[c], c) for c in columns) + "</tr>" for row in summary)
        parts += ["<h2>Summary</h2>", f'<table id="summary" class="sortable">{_header(columns)}<tbody>{body}</tbody></table>']
    boxplot = picture(eval_dir / "dice_boxplot.png", "Dice per case, box plot per region", "boxplot")
    if boxplot:
        parts += ["<h2>Dice per case</h2>", boxplot]
    columns = [c for c in (rows[0] if rows else {}) if c != "case_id"]
    regions = list(dict.fromkeys(str(row["region"]) for row in summary if "region" in row))
    body = []
    for row in rows:
        case = str(row.get("case_id", ""))
        image = picture(eval_dir / "pictures" / f"{case}.png", case, "case")
        cells = "".join(_cell(row[c], c) for c in columns)
        body.append(f'<tr data-case="{html.escape(case)}">{_cell(case, "case_id")}'
                    f'<td class="text" data-value="">{image or "no picture"}</td>{cells}</tr>')
    parts += [
        "<h2>Cases</h2>",
        f'<table id="cases" class="sortable">{_header(["case_id", "picture", *columns], regions)}<tbody>{"".join(body)}</tbody></table>',
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    path = eval_dir / REPORT_HTML
    text = "\n".join(parts)
    atomic_save(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path
