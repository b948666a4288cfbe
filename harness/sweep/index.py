"""``DIR/index.html``: one self-contained page over a sweep's results.

A grid of the cases coloured by verdict, a table sortable by worst |Δ| (or any column) linking
each case's ``report.html``, time per case and per model (matplotlib SVG), the errors, the
environments the workers reported, and the spec. Nothing is fetched: styles, plots and the few
lines of sorting script are inline.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

from harness.parity.html import esc, page, svg_of, table
from harness.parity.report import atomic_write_text, fmt_num

__all__ = ["write_index", "index_html", "VERDICT_COLOURS"]

#: Verdict → cell colour, worst first (the page's default order).
VERDICT_COLOURS = {"error": "#6a1b9a", "fail": "#b71c1c", "mismatch": "#c62828",
                   "input mismatch": "#e53935", "close": "#b58100", "pass": "#66bb6a",
                   "bitwise": "#1a7f37", "pending": "#bdbdbd"}

_CSS = """<style>
.grid{display:flex;flex-direction:column;gap:4px;margin:8px 0}
.grow{display:flex;align-items:center;gap:3px;flex-wrap:wrap}
.glabel{width:220px;font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.cell{display:inline-block;width:18px;height:18px;border-radius:3px}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;
vertical-align:-1px}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable th:after{content:" \\21C5";color:#aaa;font-size:11px}
td.v{color:#fff;font-weight:600;white-space:nowrap}
</style>"""

_SORT_JS = """<script>
function sortBy(th){
  const table=th.closest('table'), body=table.tBodies[0], col=th.cellIndex;
  const numeric=th.dataset.type==='num';
  const dir=th.dataset.dir==='desc'?'asc':'desc';
  table.querySelectorAll('th').forEach(h=>delete h.dataset.dir);
  th.dataset.dir=dir;
  const key=r=>{const v=r.cells[col].dataset.v;return numeric?parseFloat(v):v;};
  const rows=Array.from(body.rows).sort((a,b)=>{
    const x=key(a),y=key(b);
    const c=numeric?(x-y):String(x).localeCompare(String(y));
    return dir==='asc'?c:-c;});
  rows.forEach(r=>body.appendChild(r));
}
document.querySelectorAll('table.sortable th')
  .forEach(th=>th.addEventListener('click',()=>sortBy(th)));
</script>"""

_SEVERITY = {v: i for i, v in enumerate(VERDICT_COLOURS)}


def _colour(verdict: str | None) -> str:
    base = (verdict or "pending").replace(" (extension)", "")
    return VERDICT_COLOURS.get(base, "#c62828")


def _link(out: Path, record: dict | None, case_id: str) -> str | None:
    """The case's report.html when it exists, else its parity.md, else None."""
    for name in ("report.html", "parity.md"):
        if record and record.get("output") and (out / record["output"] / name).is_file():
            return f"{record['output']}/{name}"
    return None


def _label(values: dict, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={v if not isinstance(v, list) else '+'.join(map(str, v))}"
                     for k, v in values.items() if k in keys)


def _varying(cases) -> list[str]:
    """Spec keys whose value differs between cases (the rest is the same everywhere)."""
    keys: dict[str, set] = defaultdict(set)
    for case in cases:
        for k, v in case.values.items():
            keys[k].add(json.dumps(v, sort_keys=True))
    every = set.intersection(*(set(c.values) for c in cases)) if cases else set()
    return [k for k, vs in keys.items() if len(vs) > 1 or k not in every]


def _grid(out: Path, cases, records: dict) -> str:
    groups: dict[str, list] = defaultdict(list)
    for case in cases:
        groups[str(case.values.get("model", "tiny-flux1"))].append(case)
    keys = [k for k in _varying(cases) if k != "model"]
    rows = []
    for model, members in groups.items():
        cells = []
        for case in members:
            rec = records.get(case.id)
            verdict = rec["verdict"] if rec else "pending"
            worst = fmt_num(rec.get("worst_abs_diff")) if rec else "—"
            tip = f"{case.id}: {verdict}, worst |Δ| {worst}"
            tip += f" ({_label(case.values, keys)})" if keys else ""
            cell = (f'<span class="cell" style="background:{_colour(verdict)}" '
                    f'title="{esc(tip)}"></span>')
            href = _link(out, rec, case.id)
            cells.append(f'<a href="{esc(href)}">{cell}</a>' if href else cell)
        rows.append(f'<div class="grow"><span class="glabel" title="{esc(model)}">{esc(model)}'
                    f'</span>{"".join(cells)}</div>')
    seen = Counter((records[c.id]["verdict"] if c.id in records else "pending") for c in cases)
    legend = "".join(f'<span><i style="background:{_colour(v)}"></i>{esc(v)} {n}</span>'
                     for v, n in sorted(seen.items(), key=lambda kv: _rank(kv[0])))
    return (f'<div class="legend">{legend}</div><div class="grid">{"".join(rows)}</div>')


def _rank(verdict: str | None) -> int:
    return _SEVERITY.get((verdict or "pending").replace(" (extension)", ""), 0)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _sort_value(rec: dict | None) -> float:
    """The worst-|Δ| sort key: errors and missing values above every number, pending below."""
    if rec is None:
        return -1.0
    d = _num(rec.get("worst_abs_diff"))
    return 1e300 if d is None or not math.isfinite(d) else d


def _cases_table(out: Path, cases, records: dict) -> str:
    keys = _varying(cases)
    head = [("case", "str"), ("verdict", "num"), ("worst |Δ|", "num"), ("of", "str")]
    head += [(k, "str") for k in keys] + [("time (s)", "num"), ("model loaded", "str"),
                                          ("worker", "str")]
    rows = []
    for case in sorted(cases, key=lambda c: -_sort_value(records.get(c.id))):
        rec = records.get(case.id)
        verdict = rec["verdict"] if rec else "pending"
        href = _link(out, rec, case.id)
        name = f'<a href="{esc(href)}">{esc(case.id)}</a>' if href else esc(case.id)
        d = rec.get("worst_abs_diff") if rec else None
        cells = [(case.id, name),
                 (_rank(verdict), f'<td class="v" style="background:{_colour(verdict)}" '
                                  f'data-v="{_rank(verdict)}">{esc(verdict)}</td>'),
                 (_sort_value(rec), esc(fmt_num(d))),
                 ((rec or {}).get("diff_of") or "", esc((rec or {}).get("diff_of") or ""))]
        for k in keys:
            v = case.values.get(k, "")
            text = "+".join(map(str, v)) if isinstance(v, list) else str(v)
            cells.append((text, esc(text)))
        t = (rec or {}).get("case_s")
        worker = (rec or {}).get("worker") or {}
        where = f"{worker.get('executor', '')} {worker.get('host', '')}:{worker.get('pid', '')}"
        cells += [(t if t is not None else -1, _secs(t)),
                  ("yes" if (rec or {}).get("loaded_model") else "",
                   "yes" if (rec or {}).get("loaded_model") else ""),
                  (where, esc(where.strip(" :")))]
        tds = []
        for value, content in cells:
            if content.startswith("<td"):
                tds.append(content)
            else:
                tds.append(f'<td data-v="{esc(value)}">{content}</td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    ths = "".join(f'<th data-type="{t}"' + (' data-dir="desc"' if h == "worst |Δ|" else "")
                  + f">{esc(h)}</th>" for h, t in head)
    return (f'<table class="sortable" id="cases"><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"
    return plt.subplots(figsize=(w, h))


def _time_plots(cases, records: dict) -> list[str]:
    """Seconds per case (grouped by model; filled markers: the case that loaded the model) and
    per model (loading vs the rest)."""
    done = [(c, records[c.id]) for c in cases if c.id in records
            and _num(records[c.id].get("case_s")) is not None]
    if not done:
        return ["<p>No case has finished yet.</p>"]
    models = list(dict.fromkeys(str(r.get("model")) for _, r in done))
    fig, ax = _figure(9.0, 3.2)
    for i, m in enumerate(models):
        xs = [j for j, (_, r) in enumerate(done) if str(r.get("model")) == m]
        ys = [done[j][1]["case_s"] for j in xs]
        loaded = [bool(done[j][1].get("loaded_model")) for j in xs]
        colour = f"C{i % 10}"
        ax.scatter([x for x, ld in zip(xs, loaded) if not ld],
                   [y for y, ld in zip(ys, loaded) if not ld], s=16, color=colour, label=m)
        if any(loaded):
            ax.scatter([x for x, ld in zip(xs, loaded) if ld],
                       [y for y, ld in zip(ys, loaded) if ld], s=36, marker="D",
                       facecolor="none", edgecolor=colour, label=f"{m}: loaded the model")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("case (in spec order, grouped by model)")
    ax.set_ylabel("seconds")
    ax.set_title("Time per case", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    per_case = svg_of(fig)

    load = [sum(_num(r.get("load_s")) or 0.0 for _, r in done if str(r.get("model")) == m)
            for m in models]
    total = [sum(r["case_s"] for _, r in done if str(r.get("model")) == m) for m in models]
    fig, ax = _figure(9.0, 0.6 + 0.45 * len(models))
    ax.barh(models, load, color="#90a4ae", label="loading")
    ax.barh(models, [t - ld for t, ld in zip(total, load)], left=load, color="#1565c0",
            label="generating + reference + report")
    ax.invert_yaxis()
    ax.set_xlabel("seconds (all cases of the model)")
    ax.set_title("Time per model", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    return [per_case, svg_of(fig)]


def _model_table(cases, records: dict) -> str:
    by: dict[str, list] = defaultdict(list)
    for c in cases:
        by[str(c.values.get("model", "tiny-flux1"))].append(records.get(c.id))
    rows = []
    for model, recs in by.items():
        done = [r for r in recs if r]
        times = [r["case_s"] for r in done if _num(r.get("case_s")) is not None]
        rows.append([model, len(recs), len(done), sum(bool(r["accepted"]) for r in done),
                     sum(r["status"] == "error" for r in done),
                     sum(bool(r.get("loaded_model")) for r in done),
                     _secs(sum(_num(r.get("load_s")) or 0.0 for r in done)),
                     _secs(sum(times)), _secs(sum(times) / len(times) if times else None)])
    return table(["model", "cases", "done", "passed", "errors", "loads", "load (s)",
                  "total (s)", "mean per case (s)"], rows)


def _errors(cases, records: dict) -> str:
    errs = [(c, records[c.id]) for c in cases if c.id in records
            and records[c.id]["status"] == "error"]
    if not errs:
        return "<p>None.</p>"
    return table(["case", "model", "error"],
                 [[c.id, r.get("model"), r.get("error")] for c, r in errs])


def _environments(cases, records: dict, meta: dict) -> str:
    """One column per distinct environment the workers reported (versions, host, threads)."""
    envs: Counter = Counter()
    for c in cases:
        r = records.get(c.id)
        if r and r.get("versions"):
            worker = r.get("worker") or {}
            env = dict(r["versions"])
            env.update(executor=worker.get("executor"), host=worker.get("host"),
                       torch_threads=worker.get("torch_threads", env.get("torch_threads")))
            envs[json.dumps(env, sort_keys=True)] += 1
    parts = []
    if envs:
        columns = [(json.loads(text), n) for text, n in envs.most_common()]
        keys = list(dict.fromkeys(k for env, _ in columns for k in env))
        parts.append(table([""] + [f"{n} case{'s' if n != 1 else ''}" for _, n in columns],
                           [[k] + [env.get(k, "") for env, _ in columns] for k in keys]))
    runs = meta.get("runs", [])
    if runs:
        parts.append("<h3>Runs of this sweep</h3>" + table(
            ["started", "finished", "executor", "workers", "ran", "skipped", "wall (s)"],
            [[r.get("started"), r.get("finished"), r.get("executor"), r.get("workers"),
              r.get("ran"), r.get("skipped"), _secs(r.get("wall_s"))] for r in runs]))
    return "".join(parts) or "<p>No case has finished yet.</p>"


def _secs(x: Any) -> str:
    return "—" if _num(x) is None else f"{x:.2f}"


def index_html(out: Path, cases, records: dict, meta: dict) -> str:
    """The page's HTML for ``cases`` (spec order) and their ``records`` (by case id)."""
    verdicts = Counter(records[c.id]["verdict"] if c.id in records else "pending" for c in cases)
    passed = sum(bool(records[c.id]["accepted"]) for c in cases if c.id in records)
    title = f"Parity sweep: {passed} of {len(cases)} cases pass"
    summary = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items(), key=lambda kv:
                                                      _rank(kv[0])))
    tol = meta.get("tolerance")
    body = [_CSS, f"<h1>{esc(title)}</h1>",
            f"<p>{esc(summary)}. Spec <span class=\"mono\">{esc(meta.get('spec', ''))}</span>"
            + (f", --tolerance {esc(fmt_num(tol))}" if tol is not None else "")
            + ". Each case's folder <span class=\"mono\">cases/&lt;id&gt;/</span> is a "
            "<span class=\"mono\">generate --parity</span> output; click a cell or an id for "
            "its report.</p>",
            "<h2>Cases by model</h2>", _grid(out, cases, records),
            "<h2>Cases, worst |Δ| first</h2><p>Worst |Δ|: max |harness − reference| of the "
            "final latents (image models) or the logits (VLMs). Click a column to sort.</p>",
            _cases_table(out, cases, records),
            "<h2>Time</h2>", *_time_plots(cases, records), _model_table(cases, records),
            "<h2>Errors</h2>", _errors(cases, records),
            "<h2>Environment</h2>", _environments(cases, records, meta),
            "<h2>Spec</h2>", f"<pre>{esc(meta.get('spec_text', ''))}</pre>",
            _SORT_JS]
    return page(title, body)


def write_index(out: Path, cases, records: dict, run: dict | None = None) -> Path:
    """Write ``out/index.html`` (atomically); return its path."""
    try:
        meta = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        meta = {"runs": [run] if run else []}
    return atomic_write_text(out / "index.html", index_html(out, cases, records, meta))
