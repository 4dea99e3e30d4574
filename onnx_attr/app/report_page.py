"""The HTML of the dataset run report (`report_html.py` gathers what it shows).

One static page: inline CSS, an inline script for the gallery's sort and filters, charts as inline
SVG, maps and thumbnails as PNG data URIs. Every text that comes from the data (source names,
error messages, settings) is HTML-escaped. The gallery is plain HTML with the sort keys in data
attributes, so the page reads without the script; the script only reorders and hides cards.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any, Optional, Sequence

import numpy as np

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222;
  padding: 0 1em; }
h1 { font-size: 1.45em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: .88em; }
td, th { padding: 2px 9px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
.muted { color: #666; } .pass { color: #1a7f37; font-weight: 600; } .fail { color: #c62828; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.map { text-align: center; font-size: .8em; }
.map img { width: 80px; height: 80px; image-rendering: pixelated; border: 1px solid #333; }
.controls { position: sticky; top: 0; background: #fff; padding: 6px 0; z-index: 2; border-bottom: 1px solid #eee;
  font-size: .9em; }
.controls button { margin: 2px; padding: 3px 8px; border: 1px solid #999; background: #f7f7f7; border-radius: 4px;
  cursor: pointer; }
.controls button.active { background: #244f8f; color: #fff; border-color: #244f8f; }
.controls input { width: 6em; } .controls label { margin-right: 10px; }
#gallery { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px; }
.card { border: 1px solid #ccc; border-radius: 5px; padding: 5px; width: 150px; font-size: .76em; line-height: 1.35; }
.card.error { border-color: #c62828; background: #fff5f5; }
.card img.thumb { width: 138px; height: 138px; image-rendering: pixelated; border: 1px solid #333;
  display: block; }
.pos { color: #b71c1c; } .neg { color: #1f5f9f; }
.tokens { display: block; }
.tok { display: inline-block; margin: 1px; padding: 0 2px; border-radius: 3px; font-family: monospace; }
.bar { fill: #4a78b5; } .bar.over { fill: #c62828; } svg text { font-size: 10px; fill: #333; }
.err { color: #c62828; white-space: pre-wrap; }
"""

SCRIPT = """
(function () {
  const gallery = document.getElementById('gallery');
  const cards = Array.from(gallery.querySelectorAll('.card'));
  const state = {key: 'row', descending: false};
  const firstDescending = {row: false, cls: false, score: true, delta: true, rel: true};
  const field = (id) => document.getElementById(id);
  function number(card, key) {
    const v = parseFloat(card.dataset[key]);
    return Number.isFinite(v) ? v : null;
  }
  function bound(id) {
    const v = parseFloat(field(id).value);
    return Number.isFinite(v) ? v : null;
  }
  function keep(card) {
    const cls = field('filter-class').value, status = field('filter-status').value;
    if (cls !== '' && card.dataset.cls !== cls) return false;
    if (status !== '' && card.dataset.status !== status) return false;
    const checks = [['score', 'score-min', 'score-max'], ['absdelta', 'delta-min', 'delta-max']];
    for (const [key, low, high] of checks) {
      const v = number(card, key), lo = bound(low), hi = bound(high);
      if ((lo !== null || hi !== null) && v === null) return false;
      if (lo !== null && v < lo) return false;
      if (hi !== null && v > hi) return false;
    }
    return true;
  }
  function apply() {
    const key = state.key, sign = state.descending ? -1 : 1;
    const shown = cards.filter(keep);
    shown.sort((a, b) => {
      const x = number(a, key), y = number(b, key);
      if (x === null && y === null) return number(a, 'row') - number(b, 'row');
      if (x === null) return 1;
      if (y === null) return -1;
      return sign * (x - y) || number(a, 'row') - number(b, 'row');
    });
    for (const card of cards) card.hidden = true;
    for (const card of shown) { card.hidden = false; gallery.appendChild(card); }
    field('shown').textContent = shown.length + ' of ' + cards.length + ' shown';
    for (const button of document.querySelectorAll('button.sort')) {
      const active = button.dataset.key === key;
      button.classList.toggle('active', active);
      button.querySelector('.dir').textContent = active ? (state.descending ? ' \\u2193' : ' \\u2191') : '';
    }
  }
  for (const button of document.querySelectorAll('button.sort')) {
    button.addEventListener('click', () => {
      const key = button.dataset.key;
      state.descending = state.key === key ? !state.descending : firstDescending[key];
      state.key = key;
      apply();
    });
  }
  for (const id of ['filter-class', 'filter-status', 'score-min', 'score-max', 'delta-min', 'delta-max']) {
    field(id).addEventListener('input', apply);
    field(id).addEventListener('change', apply);
  }
  field('reset').addEventListener('click', () => {
    for (const id of ['filter-class', 'filter-status', 'score-min', 'score-max', 'delta-min', 'delta-max']) {
      field(id).value = '';
    }
    state.key = 'row'; state.descending = false; apply();
  });
  apply();
})();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return format(value, spec) if isinstance(value, (int, float)) else esc(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw` (cells already HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def bars_svg(bins: Sequence[tuple[str, int]], over_from: Optional[int] = None, width: int = 540,
             height: int = 150) -> str:
    """A bar chart of counts with a label under each bar; bars from index `over_from` in red."""
    n = max(1, len(bins))
    top = max([c for _, c in bins] + [1])
    step = (width - 20) / n
    parts = [f'<svg width="{width}" height="{height}" role="img">']
    for i, (label, count) in enumerate(bins):
        h = (height - 40) * count / top
        x = 10 + i * step
        cls = "bar over" if over_from is not None and i >= over_from else "bar"
        parts.append(f'<rect class="{cls}" x="{x:.1f}" y="{height - 25 - h:.1f}" width="{step * 0.8:.1f}" '
                     f'height="{h:.1f}"><title>{esc(label)}: {count}</title></rect>')
        parts.append(f'<text x="{x + step * 0.4:.1f}" y="{height - 12}" text-anchor="middle">{esc(label)}</text>')
        if count:
            parts.append(f'<text x="{x + step * 0.4:.1f}" y="{height - 28 - h:.1f}" '
                         f'text-anchor="middle">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def lines_svg(series: dict[str, Sequence[float]], width: int = 420, height: int = 180) -> str:
    """Profiles (one line per series) against ring index, shared y axis from 0."""
    longest = max((len(v) for v in series.values()), default=0)
    top = max((max(v) for v in series.values() if len(v)), default=1.0) or 1.0
    left, bottom = 48, 28
    xs = lambda i: left + (width - left - 10) * (i / max(1, longest - 1))  # noqa: E731
    ys = lambda v: (height - bottom) - (height - bottom - 10) * v / top  # noqa: E731
    parts = [f'<svg width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#999"/>',
             f'<line x1="{left}" y1="10" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
             f'<text x="{left - 4}" y="14" text-anchor="end">{top:.3g}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>',
             f'<text x="{left}" y="{height - 8}">border</text>',
             f'<text x="{width - 10}" y="{height - 8}" text-anchor="end">centre</text>']
    palette = ["#111", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    legend = []
    for k, (name, values) in enumerate(series.items()):
        points = " ".join(f"{xs(i):.1f},{ys(v):.1f}" for i, v in enumerate(values))
        wide, colour = 2.6 if k == 0 else 1.2, palette[k % len(palette)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{wide}" '
                     f'points="{points}"><title>{esc(name)}</title></polyline>')
        legend.append(f"<span style='color: {colour}'>&#9644; {esc(name)}</span>")
    parts.append("</svg>")
    return "<div>" + "".join(parts) + "<br><small>" + " ".join(legend) + "</small></div>"


# -- sections --------------------------------------------------------------------------------------------------

def render(run, collected, gallery: Sequence, notes: Sequence[str], options) -> str:
    sections = [_summary(run, collected), _deltas(collected, run.manifest.get("method")), _errors(collected)]
    for column in run.columns:
        if column.kind == "image":
            sections.append(_image_maps(column, collected.images[column.name]))
        elif column.kind == "bars":
            sections.append(_feature_importance(column, collected.features[column.name]))
    sections.append(_gallery(run, collected, gallery, options))
    if notes:
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    model = run.manifest.get("execution", {}).get("model") or "model"
    title = f"onnx-attr dataset report: {run.manifest.get('method')} on {model}"
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(sections) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def _summary(run, collected) -> str:
    manifest, summary = run.manifest, run.summary
    execution = manifest.get("execution", {})
    baseline = manifest.get("baseline", {})
    rows = [
        ("model", f"{execution.get('model') or '(in memory)'} — sha256 "
                  f"{str(manifest.get('model_sha256', ''))[:16]}…"),
        ("method", manifest.get("method")),
        ("target", manifest.get("target") or "each row's predicted class"),
        ("baseline", baseline.get("spec") if isinstance(baseline, dict) else baseline),
        ("output", manifest.get("output") or "the first"),
        ("rows", f"{collected.rows} ({collected.ok} ok, {collected.error_count} error rows) in "
                 f"{len(run.shards)} shards"),
        ("engine", f"{execution.get('engine')} — batch {execution.get('batch_size')}, "
                   f"device {execution.get('device')}"),
    ]
    if summary.get("seconds") is not None:
        rows.append(("last run", f"{summary.get('rows_computed')} rows computed in {summary.get('seconds')} s"
                                 f" ({fmt(summary.get('rows_per_second'))} rows/s), {summary.get('shards_kept')} "
                                 "shards kept from earlier"))
    versions = manifest.get("versions", {})
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    predicted = ", ".join(f"{k}: {v}" for k, v in sorted(collected.predictions.items()))
    if predicted:
        rows.append(("predicted classes (ok rows)", predicted))
    out = [f"<h1>Dataset run report</h1><p class='muted'>{esc(str(run.folder))}</p>", "<h2>Summary</h2>",
           table(("", ""), rows)]
    out.append(_verify(summary.get("verify")))
    return "\n".join(out)


def _verify(verify: Optional[dict]) -> str:
    if not verify:
        return "<p class='muted'>verify: not recorded for this run (the report was built without the model)</p>"
    if "error" in verify:
        return f"<p>verify against onnxruntime: <span class='fail'>not run</span> — {esc(verify['error'])}</p>"
    verdict = "<span class='pass'>PASSED</span>" if verify.get("passed") else "<span class='fail'>FAILED</span>"
    rows = [(esc(o["name"]), fmt(o["max_abs"], ".3e"), fmt(o["max_rel"], ".3e"),
             "ok" if o["passed"] else "<span class='fail'>FAIL</span>") for o in verify.get("outputs", [])]
    return (f"<p id='verify'>verify against onnxruntime on the first {verify.get('rows')} rows of "
            f"{esc(verify.get('source'))}: {verdict} (|ours − ort| ≤ {verify.get('atol'):g} + "
            f"{verify.get('rtol'):g}·|ort|)</p>" + table(("output", "max abs err", "max rel err", ""), rows, raw=True))


def _deltas(collected, method: Optional[str]) -> str:
    from onnx_attr.app.dataset_job import DELTA_TOLERANCE
    from onnx_attr.methods.registry import REGISTRY

    found = REGISTRY.get(method or "")
    meaning = found.delta_meaning if found is not None else None

    over = 2 + list(range(-12, 3)).index(-4)  # bins at and above 1e-4 (after "0" and "<1e-12")
    return "\n".join([
        "<h2>Convergence deltas</h2>",
        f"<p id='delta-stats'>ok rows: {collected.relative.n}; relative delta (|Σ attributions − (f(x) − f(x0))| "
        f"/ |f(x) − f(x0)|): largest {fmt(collected.relative.largest, '.3e')}, mean "
        f"{fmt(collected.mean_relative(), '.3e')}, "
        f"<b>{collected.above_tolerance}</b> rows above {DELTA_TOLERANCE:g}. |delta|: largest "
        f"{fmt(collected.deltas.largest, '.3e')}.</p>",
        *([f"<p id='delta-meaning'>The delta is {esc(meaning)}.</p>"] if meaning else []),
        "<div class='grid'><div><b>relative delta</b> (rows per decade: e-7 is [1e-7, 1e-6); red: ≥ 1e-4)<br>"
        + bars_svg(collected.relative.bins(), over_from=over) + "</div>",
        "<div><b>|convergence delta|</b> (rows per decade)<br>" + bars_svg(collected.deltas.bins()) + "</div></div>",
    ])


def _errors(collected) -> str:
    if not collected.error_count:
        return "<h2>Error rows</h2><p id='errors'>none: every row was attributed.</p>"
    grouped = table(("rows", "message"), [(n, m) for m, n in collected.messages.most_common()])
    listed = table(("row", "source", "source row", "error"),
                   [(r.row_id, r.source, fmt(r.source_row), r.error) for r in collected.errors])
    more = collected.error_count - len(collected.errors)
    return (f"<h2>Error rows</h2><p id='errors'>{collected.error_count} row(s) failed; the run went on.</p>"
            + grouped + "<h3>Rows</h3>" + listed
            + (f"<p class='muted'>… and {more} more (all are in the shards, status = error)</p>" if more > 0 else ""))


def _class_label(key: Any) -> str:
    return "all rows" if key == "all" else f"class {key}"


def _image_maps(column, aggregate) -> str:
    from onnx_attr.app.report_html import border_profile, magnitude_data_uri

    maps = aggregate.mean_maps()
    if not maps:
        return f"<h2>Mean |attribution| per class — {esc(column.input)}</h2><p>no ok rows.</p>"
    cells, profiles, rows = [], {}, []
    for key, mean_map in maps.items():
        count = sum(aggregate.counts.values()) if key == "all" else aggregate.counts[key]
        cells.append(f"<div class='map'><img alt='{esc(_class_label(key))}' src='{magnitude_data_uri(mean_map)}'><br>"
                     f"{esc(_class_label(key))} ({count} rows)<br>max {mean_map.max():.3g}</div>")
        profile = border_profile(mean_map)
        profiles[_class_label(key)] = profile
        ratio = profile[0] / profile[-1] if profile[-1] > 0 else math.inf
        rows.append([_class_label(key), count] + [f"{v:.4g}" for v in profile] + [f"{ratio:.3g}"])
    rings = len(next(iter(profiles.values())))
    header = ["class", "rows"] + [f"ring {d}" for d in range(rings)] + ["border / centre"]
    return "\n".join([
        f"<h2>Mean |attribution| per class — input {esc(column.input)}</h2>",
        "<p class='muted'>|attribution| summed over channels, averaged over the ok rows of each class (the target "
        "when it is one class, else the prediction); white 0, red the map's largest value."
        + _other_shapes(aggregate) + "</p>",
        f"<div class='grid'>{''.join(cells)}</div>",
        "<h3>Border versus centre</h3>",
        "<p class='muted'>Mean |attribution| by distance from the nearest border (ring 0: the outermost pixels). "
        "A profile rising toward ring 0, or a border / centre ratio well above 1, shows attribution on the "
        "padding.</p>",
        lines_svg(profiles),
        f"<div id='profile-{esc(column.input)}'>{table(header, rows)}</div>",
    ])


def _other_shapes(aggregate) -> str:
    """What a mean over rows leaves out: rows of another length or size than the first ones."""
    return f" {aggregate.other_shapes} ok rows of another shape are left out of it." if aggregate.other_shapes else ""


def _feature_importance(column, aggregate) -> str:
    if not aggregate.n:
        return f"<h2>Feature importance — {esc(column.input)}</h2><p>no ok rows.</p>"
    magnitude = aggregate.magnitude / aggregate.n
    signed = aggregate.signed / aggregate.n
    order = np.argsort(-magnitude, kind="stable")
    top = float(magnitude[order[0]]) or 1.0
    rows = []
    for j in order:
        name = column.features[j] if j < len(column.features) else f"{column.input}[{j}]"
        width = 300 * magnitude[j] / top
        rows.append((esc(name), f"{magnitude[j]:.4g}",
                     f"<svg width='300' height='10'><rect class='bar' width='{width:.1f}' height='10'/></svg>",
                     f"<span class='{'pos' if signed[j] > 0 else 'neg'}'>{signed[j]:+.4g}</span>"))
    return "\n".join([
        f"<h2>Global feature importance — input {esc(column.input)}</h2>",
        f"<p class='muted'>mean |attribution| per feature over {aggregate.n} ok rows, largest first; the mean signed "
        "attribution beside it." + _other_shapes(aggregate) + "</p>",
        f"<div id='features-{esc(column.input)}'>"
        + table(("feature", "mean |attr|", "", "mean attr"), rows, raw=True) + "</div>",
    ])


def _card(row, columns) -> str:
    data = {"row": row.row_id, "cls": "" if row.prediction is None else row.prediction,
            "score": _data_number(row.output), "delta": _data_number(row.delta),
            "absdelta": _data_number(abs(row.delta)), "rel": _data_number(row.relative), "status": row.status}
    attributes = " ".join(f'data-{k}="{esc(v)}"' for k, v in data.items())
    body = [f"<b>row {row.row_id}</b> <span class='muted'>{esc(row.source)}:{fmt(row.source_row)}</span>"]
    if row.status == "ok":
        body += [f"predicted {fmt(row.prediction)}, target {esc(json.dumps(row.target))}",
                 f"score {fmt(row.output)}", f"delta {fmt(row.delta, '+.2e')}", f"rel {fmt(row.relative, '.2e')}"]
        body += [row.thumbnails[c.name] for c in columns if c.name in row.thumbnails]
        if row.picture:
            body.append(f"<a href='{esc(row.picture)}'>full picture</a>")
    else:
        body.append(f"<span class='err'>{esc(row.error or 'error')}</span>")
    return f'<div class="card{" error" if row.status != "ok" else ""}" {attributes}>' + "<br>".join(body) + "</div>"


def _data_number(value: Optional[float]) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _gallery(run, collected, gallery: Sequence, options) -> str:
    classes = sorted({r.prediction for r in gallery if r.prediction is not None})
    class_options = "".join(f"<option value='{c}'>{c}</option>" for c in classes)
    sort_buttons = "".join(
        f"<button class='sort' id='sort-{key}' data-key='{key}'>{label}<span class='dir'></span></button>"
        for key, label in (("row", "row"), ("cls", "predicted class"), ("score", "target score"),
                           ("delta", "delta"), ("rel", "relative delta")))
    picked = (f"{len(gallery)} of {collected.rows} rows: the {len(collected.worst)} of largest relative delta, then "
              f"every {collected.stride}th row" if collected.stride > 1 else f"{len(gallery)} rows")
    return "\n".join([
        "<h2>Gallery</h2>",
        f"<p class='muted'>{esc(picked)} (at most {options.gallery_rows}: `--gallery-rows`); full pictures for "
        f"{sum(1 for r in gallery if r.picture)} of them (`--pictures {options.pictures}`).</p>",
        "<div class='controls'>sort: " + sort_buttons
        + f" <label>class <select id='filter-class'><option value=''>all</option>{class_options}</select></label>"
        + "<label>status <select id='filter-status'><option value=''>all</option><option value='ok'>ok</option>"
          "<option value='error'>error</option></select></label>"
        + "<label>score <input id='score-min' type='number' step='any' placeholder='min'> – "
          "<input id='score-max' type='number' step='any' placeholder='max'></label>"
        + "<label>|delta| <input id='delta-min' type='number' step='any' placeholder='min'> – "
          "<input id='delta-max' type='number' step='any' placeholder='max'></label>"
        + "<button id='reset'>reset</button> <span id='shown' class='muted'></span></div>",
        "<div id='gallery'>" + "".join(_card(r, run.columns) for r in sorted(gallery, key=lambda r: r.row_id))
        + "</div>",
    ])
