"""report.html: one self-contained page per parity run, for people to look at before they read.

Everything is inline: images as PNG data URIs, plots as matplotlib SVG, one small stylesheet; the
page fetches nothing. ``parity.json`` stays the machine-readable form; this page only shows it
(plus the images, which the JSON does not carry).
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any, Iterable, Sequence

import numpy as np

from .report import fmt_num

__all__ = ["image_report_html", "vlm_report_html", "video_report_html", "svg_of",
           "png_data_uri", "page", "LOSSY_FORMATS"]

#: Output formats whose written file is not the array the comparison used.
LOSSY_FORMATS = ("jpeg", "jpg", "webp")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1280px;padding:0 16px;color:#1d1d1f}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f5f7}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}
.ok{background:#1a7f37}.warn{background:#b58100}.bad{background:#c62828}
.note{background:#fff8e1;border-left:4px solid #b58100;padding:6px 10px;margin:8px 0}
.imgs{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.imgs figure{margin:0}.imgs img{width:320px;height:auto;image-rendering:pixelated;
border:1px solid #ccc}
figcaption{font-size:12px;color:#555}pre{background:#f5f5f7;padding:8px;white-space:pre-wrap;
word-break:break-word}.diff{background:#ffebee}.mono{font-family:ui-monospace,monospace}
.plot svg{max-width:100%;height:auto}
"""


# -- building blocks ------------------------------------------------------------------------------
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def png_data_uri(array: np.ndarray) -> str:
    """A uint8 (H, W, 3) array as a PNG data URI (lossless: the pixels the comparison used)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def svg_of(fig) -> str:
    """A matplotlib figure as inline SVG markup (no XML prolog), then closed."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return '<div class="plot">' + text[text.index("<svg"):] + "</div>"


def _figure(w: float = 8.0, h: float = 3.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text (smaller, searchable)
    return plt.subplots(figsize=(w, h))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *,
          mark: Sequence[bool] | None = None) -> str:
    """An HTML table; cells through ``fmt_num``; rows flagged in ``mark`` get the diff colour."""
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="diff"' if mark is not None and mark[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{esc(fmt_num(v))}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def badge(verdict: str) -> str:
    base = verdict.replace(" (extension)", "")
    cls = "ok" if base in ("bitwise", "pass") else "warn" if base == "close" else "bad"
    return f'<span class="badge {cls}">{esc(verdict)}</span>'


def page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _kv_table(d: dict) -> str:
    return table(["", "value"], [[k, _short(v)] for k, v in d.items()])


def _short(v: Any) -> Any:
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return ", ".join(fmt_num(x) for x in v[:6]) + f", … ({len(v)} values)"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_num(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt_num(x)}" for k, x in v.items())
    return v


def _log_curve(series: dict[str, Sequence[float | None]], *, xlabel: str, ylabel: str,
               first: int | None, first_label: str, title: str) -> str:
    """Per-step differences on a log axis; exact zeros (bitwise steps) drawn as markers on the
    bottom edge, since log scales have no zero; the first divergent step as a dashed line."""
    fig, ax = _figure()
    positives = [v for s in series.values() for v in s if v is not None and v > 0]
    floor = min(positives) / 10 if positives else 1e-12
    for name, values in series.items():
        xs = np.arange(len(values))
        ys = np.array([np.nan if v is None else v for v in values], dtype=float)
        shown = np.where(ys > 0, ys, np.nan)
        (line,) = ax.plot(xs, shown, marker="o", ms=3, label=name)
        zero = np.flatnonzero(ys == 0)
        if zero.size:
            ax.scatter(zero, np.full(zero.size, floor), marker="v", s=18,
                       color=line.get_color(), label=f"{name}: exactly 0")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2)
    if first is not None:
        ax.axvline(first, color="#c62828", ls="--", lw=1)
        ax.text(first, ax.get_ylim()[1], f" {first_label} {first}", color="#c62828",
                va="top", fontsize=8)
    if not positives:
        title += ": every value is exactly 0"
    _integer_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return svg_of(fig)


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _environment(env: dict) -> str:
    return "<h2>Environment</h2>" + _kv_table(env)


def _memory_section(memory: dict | None, modes: dict | None) -> str:
    """Per-phase memory figures (host peak RSS, CUDA peaks) and the workstation modes."""
    if not memory:
        return ""
    phases = {"load": memory.get("load") or {}, **(memory.get("phases") or {})}
    cols = [("peak_rss_mib", "peak host RSS (MiB)"),
            ("cuda_max_allocated_mib", "CUDA max allocated (MiB)"),
            ("cuda_max_reserved_mib", "CUDA max reserved (MiB)")]
    cols = [c for c in cols if any(c[0] in p for p in phases.values())]
    out = ["<h2>Memory</h2>"]
    if modes:
        out.append("<p>Modes: " + ", ".join(f"{esc(k)}={esc(v)}" for k, v in modes.items())
                   + ".</p>")
    out.append(table(["phase", *[c[1] for c in cols]],
                     [[name, *[p.get(c[0]) for c in cols]] for name, p in phases.items()]))
    if memory.get("rss_peak_reset_per_phase") is False:
        out.append("<p>The host peak could not be reset between phases here: each figure is the "
                   "process's peak so far.</p>")
    return "".join(out)


# -- image parity ----------------------------------------------------------------------------------
def _diff_heatmap(a: np.ndarray, b: np.ndarray, index: int) -> str:
    """|harness − reference| per pixel (max over RGB), amplified: the colour scale runs to the
    largest difference (at least 1 level), and its colorbar gives the scale in uint8 levels."""
    fig, ax = _figure(4.2, 3.6)
    if a.shape != b.shape:
        ax.text(0.5, 0.5, f"shapes differ:\n{a.shape} vs {b.shape}", ha="center", va="center")
        ax.set_axis_off()
        return svg_of(fig)
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1)
    vmax = max(1, int(d.max()))
    im = ax.imshow(d, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="|Δ| (uint8 levels)")
    amp = 255 / vmax
    ax.set_title(f"image {index}: |Δ| max {int(d.max())}, {np.count_nonzero(d)} px differ"
                 + (f" (×{amp:.0f} amplified)" if d.max() else " (identical)"), fontsize=9)
    ax.set_axis_off()
    return svg_of(fig)


def _timings_plot(harness: Sequence[float], reference: Sequence[float]) -> str:
    fig, ax = _figure(8, 2.8)
    for name, ys in (("harness", harness), ("reference", reference)):
        if ys:
            ax.plot(np.arange(len(ys)), np.asarray(ys) * 1e3, marker="o", ms=3, label=name)
    _integer_x(ax)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("ms per step")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Per-step time (step 0 includes first-call costs)", fontsize=10)
    return svg_of(fig)


def _fbc_timeline(fbc: dict) -> str:
    """Computed / reused per transformer call, one row per stream (cond, uncond)."""
    streams = fbc.get("streams") or {}
    fig, ax = _figure(8, 0.6 + 0.45 * max(1, len(streams)))
    names = list(streams)
    for row, name in enumerate(names):
        for i, d in enumerate(streams[name].get("decisions", "")):
            ax.broken_barh([(i, 0.9)], (row - 0.4, 0.8),
                           color="#1a7f37" if d == "C" else "#9e9e9e")
    ax.set_yticks(range(len(names)), names)
    _integer_x(ax)
    ax.set_xlabel("denoising step (green: computed, grey: reused from cache)")
    ax.set_xlim(0, max([len(s.get("decisions", "")) for s in streams.values()] or [1]))
    ax.set_title(f"First-block cache at threshold {fmt_num(fbc.get('threshold'))}: "
                 f"{fbc.get('computed')} computed, {fbc.get('reused')} reused", fontsize=10)
    return svg_of(fig)


def _settings_table(inputs: dict) -> str:
    rows, mark = [], []
    for r in inputs.get("settings", []):
        rows.append([r["setting"], _short(r.get("harness")), _short(r.get("reference")),
                     "yes" if r["equal"] else "NO"])
        mark.append(not r["equal"])
    return table(["setting", "harness", "reference", "equal"], rows, mark=mark)


def image_report_html(report: dict, ours_images: np.ndarray, ref_images: np.ndarray, *,
                      files: Sequence[str] = (), output_format: str = "png") -> str:
    """The image parity page: verdict, images side by side with the amplified |difference|, the
    per-step latent differences, both sides' resolved settings, per-step timings, the first-block
    cache timeline when it ran, the request and the environment."""
    verdict = report["verdict"]
    body = [f"<h1>Image parity: {esc(report['family'])} {badge(verdict)}</h1>"]
    if report.get("verdict_note"):
        body.append(f'<p class="note">{esc(report["verdict_note"])}</p>')
    ref = report["reference"]
    body.append(f"<p>Harness vs <span class=mono>{esc(ref['pipeline'])}</span> (diffusers "
                f"{esc(ref['diffusers_version'])}, reference inputs: {esc(ref['inputs'])}); "
                f"device {esc(report['device'])}, dtype {esc(report['dtype'])}, "
                f"{esc(report['torch_threads'])} torch thread(s).</p>")
    if ref.get("log"):
        body.append("<p>What diffusers / transformers logged during the reference run "
                    "(kept here, not printed):</p><pre>" + esc("\n".join(ref["log"])) + "</pre>")
    body.append(table(["metric", "value"], [
        ["final latents max |Δ|", report["final_latents_max_abs_diff"]],
        ["final latents mean |Δ|", report["final_latents_mean_abs_diff"]],
        ["image max |Δ| (uint8)", report["image_max_abs_diff"]],
        ["PSNR (dB)", "∞ (identical)" if report["images_bitwise"] else report["psnr_db"]],
        ["first divergent step", report["first_divergent_step"]],
        ["close tolerance", report["close_tolerance"]],
    ]))

    req = report.get("request") or {}
    given = [p for p in [req.get("input_image"), *(req.get("input_images") or [])] if p]
    thumbs = _input_thumbnails([str(p) for p in given])
    if thumbs:
        body.append("<h2>Input image(s), as given</h2><div class=\"imgs\">" + "".join(thumbs)
                    + "</div>")
    body.append("<h2>Images</h2>")
    if output_format.lower() in LOSSY_FORMATS:
        body.append(f'<p class="note">The written files ({esc(", ".join(files))}) are '
                    f"{esc(output_format.upper())}, a lossy format. Every comparison here uses "
                    f"the uint8 arrays before encoding, shown below as PNG.</p>")
    for i in range(max(len(ours_images), len(ref_images))):
        figs = []
        if i < len(ours_images):
            figs.append(f'<figure><img src="{png_data_uri(ours_images[i])}" alt="harness image '
                        f'{i}"><figcaption>harness {i}'
                        + (f" ({esc(files[i])})" if i < len(files) else "")
                        + "</figcaption></figure>")
        if i < len(ref_images):
            figs.append(f'<figure><img src="{png_data_uri(ref_images[i])}" alt="reference image '
                        f'{i}"><figcaption>reference {i} ({esc(ref["pipeline"])})</figcaption>'
                        "</figure>")
        if i < len(ours_images) and i < len(ref_images):
            figs.append("<figure>" + _diff_heatmap(ours_images[i], ref_images[i], i)
                        + "<figcaption>amplified |difference|</figcaption></figure>")
        body.append('<div class="imgs">' + "".join(figs) + "</div>")

    steps = report.get("steps") or []
    body.append("<h2>Per-step latents</h2>")
    if steps:
        body.append(_log_curve(
            {"max |Δ latents|": [s["latents_max_abs_diff"] for s in steps],
             "mean |Δ latents|": [s["latents_mean_abs_diff"] for s in steps]},
            xlabel="denoising step", ylabel="|harness − reference|",
            first=report.get("first_divergent_step"), first_label="first divergent step",
            title="Latents after each step"))
    else:
        body.append("<p>No per-step latents were recorded.</p>")

    inputs = report.get("input_comparison") or {}
    body.append("<h2>Resolved settings (each side from the user's request)</h2>")
    body.append(_settings_table(inputs))
    given = inputs.get("reference_given") or {}
    body.append("<p>The reference was called with: " + (", ".join(
        f"<span class=mono>{esc(k)}={esc(repr(v))}</span>" for k, v in given.items())
        or "its defaults only") + ".</p>")
    if inputs.get("extension"):
        body.append(f'<p class="note">Extension (the harness goes beyond the reference): '
                    f'{esc(inputs["extension"])}</p>')

    t = report.get("timings_s", {})
    h_steps = (t.get("harness") or {}).get("steps_s") or []
    r_steps = (t.get("reference") or {}).get("steps_s") or []
    body.append("<h2>Timings</h2>")
    body.append(table(["", "harness", "reference"], [
        ["total (s)", (t.get("harness") or {}).get("total_s"),
         (t.get("reference") or {}).get("total_s")],
        ["denoising steps (s)", sum(h_steps) if h_steps else None,
         sum(r_steps) if r_steps else None]]))
    if h_steps or r_steps:
        body.append(_timings_plot(h_steps, r_steps))

    body.append(_memory_section(report.get("memory"), report.get("modes")))

    fbc = report.get("first_block_cache")
    if fbc:
        body.append("<h2>First-block cache</h2>")
        body.append(_fbc_timeline(fbc))
        plain = fbc.get("vs_uncached_harness") or {}
        body.append(table(["against the uncached harness run", "value"], [
            ["final latents max |Δ|", plain.get("final_latents_max_abs_diff")],
            ["image max |Δ| (uint8)", plain.get("image_max_abs_diff")],
            ["PSNR (dB)", "∞ (identical)" if plain.get("images_bitwise") else
             plain.get("psnr_db")],
            ["speed-up of the steps", plain.get("speedup")]]))

    body.append("<h2>Request</h2>")
    presets = report.get("tiny_request_defaults")
    if presets:
        body.append('<p class="note">Filled in from the tiny model\'s recipe, as if given (both '
                    "sides got them): " + ", ".join(f"--{esc(k.replace('_', '-'))} {esc(v)}"
                                                    for k, v in presets.items()) + ".</p>")
    body.append(_kv_table(report.get("request") or {}))
    body.append(_environment(report.get("environment") or {}))
    return page(f"Image parity: {report['family']} — {verdict}", body)


# -- VLM parity ------------------------------------------------------------------------------------
def _chunk_plan(chunks: Sequence[Sequence[int]], images: Sequence[Sequence[int]],
                prompt_length: int) -> str:
    """The prefill chunks drawn against the images' placeholder ranges along the prompt."""
    fig, ax = _figure(9, 1.8)
    for i, (a, b) in enumerate(chunks):
        ax.broken_barh([(a, b - a)], (1.1, 0.8), color="#1565c0" if i % 2 == 0 else "#64b5f6")
        ax.text((a + b) / 2, 1.5, str(i), ha="center", va="center", fontsize=7, color="white")
    for j, (a, b) in enumerate(images):
        ax.broken_barh([(a, b - a)], (0.1, 0.8), color="#ef6c00")
        ax.text((a + b) / 2, 0.5, f"image {j}", ha="center", va="center", fontsize=7)
    for a, _b in chunks[1:]:
        ax.axvline(a, color="#555", lw=0.6, ls=":")
    ax.set_yticks([0.5, 1.5], ["images", "chunks"])
    ax.set_xlim(0, max(prompt_length, max([b for _a, b in chunks] or [1])))
    ax.set_xlabel("prompt position")
    ax.set_title(f"Prefill plan: {len(chunks)} chunk(s), {len(images)} image range(s)",
                 fontsize=10)
    return svg_of(fig)


def _input_thumbnails(paths: Sequence[str], side: int = 320) -> list[str]:
    """The request's input images as inline PNG thumbnails (what the user gave, before any
    processor resized it); a file that cannot be read is named instead."""
    from PIL import Image

    out = []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                size = im.size
                im.thumbnail((side, side))
                arr = np.asarray(im)
        except (OSError, ValueError) as exc:
            out.append(f"<p>image {i}: {esc(path)} could not be read ({esc(exc)})</p>")
            continue
        out.append(f'<figure><img src="{png_data_uri(arr)}" alt="input image {i}"><figcaption>'
                   f"image {i}: {esc(path)} ({size[0]}×{size[1]})</figcaption></figure>")
    return out


def _top(entries) -> str:
    if not entries:
        return "—"
    return "; ".join(f"{e[1]!r} {fmt_num(e[2])}" for e in entries)


def vlm_report_html(report: dict) -> str:
    """The VLM parity page: verdict, the prompt with special tokens visible, both texts, inputs,
    the per-token table with each side's top-5, the |Δlogit| curve, the prefill chunk plan
    against the image ranges, sampling and constraint settings, timings and versions."""
    verdict = report["verdict"]
    body = [f"<h1>VLM parity: {esc(report['family'])} {badge(verdict)}</h1>"]
    if report.get("verdict_note"):
        body.append(f'<p class="note">{esc(report["verdict_note"])}</p>')
    if report.get("sampling_note"):
        body.append(f'<p class="note">{esc(report["sampling_note"])}</p>')
    tol = report.get("tolerance") or {}
    body.append(f"<p>Device {esc(report.get('device'))}, dtype {esc(report.get('dtype'))}, "
                f"{esc(report.get('torch_threads'))} torch thread(s). Bound on max |Δlogit|: "
                f"{esc(fmt_num(tol.get('bound')))} = max({esc(fmt_num(tol.get('fixed')))}, "
                f"{esc(fmt_num(tol.get('floor_factor')))} × the reference's own chunked-prefill "
                f"floor {esc(fmt_num(tol.get('floor')))}).</p>")
    body.append(table(["metric", "value"], [
        ["tokens equal", report.get("tokens_equal")],
        ["max |Δlogit|", report.get("max_abs_logit_diff")],
        ["first divergent token", report.get("first_divergent_token")],
        ["output verdict", report.get("output_verdict")]]))

    thumbs = _input_thumbnails((report.get("request") or {}).get("images") or [])
    if thumbs:
        body.append("<h2>Input images (as given)</h2><div class=\"imgs\">" + "".join(thumbs)
                    + "</div>")
    if report.get("prompt_text") is not None:
        body.append("<h2>Prompt (special tokens visible)</h2>"
                    f"<pre>{esc(report['prompt_text'])}</pre>")
    texts = report.get("texts")
    if texts:
        body.append("<h2>Generated text</h2>" + table(
            ["harness", "reference (generate)"], [[texts.get("harness"),
                                                   texts.get("reference")]],
            mark=[texts.get("harness") != texts.get("reference")]))

    inputs = report.get("input_comparison")
    if inputs:
        ids = inputs["prompt_ids"]
        body.append("<h2>Inputs (harness vs the folder's processor)</h2>")
        rows = [["prompt ids", f"{ids['harness_length']} ids", f"{ids['processor_length']} ids",
                 "yes" if ids["equal"] else f"NO (first at {ids['first_difference']})"]]
        mark = [not ids["equal"]]
        for e in inputs.get("pixel_values", []):
            rows.append([f"image {e['index']} pixel values", e["harness_shape"],
                         e["processor_shape"],
                         "yes" if e["equal"] else f"NO (max |Δ| {fmt_num(e['max_abs_diff'])})"])
            mark.append(not e["equal"])
        body.append(table(["input", "harness", "processor", "equal"], rows, mark=mark))
    sampling = report.get("sampling")
    if sampling:
        body.append("<h2>Sampling</h2>")
        sides = [k for k in sampling if isinstance(sampling[k], dict)]
        if sides:
            keys = sorted({k for s in sides for k in sampling[s]})
            body.append(table(["setting", *sides], [[k, *[_short(sampling[s].get(k))
                                                          for s in sides]] for k in keys]))
        else:
            body.append(_kv_table(sampling))
    constraint = report.get("constraint")
    if constraint:
        body.append("<h2>Constraint</h2>" + table(["", "value"], [
            [k, v if k != "source" else str(v)[:2000]] for k, v in constraint.items()]))

    per_token = report.get("per_token") or []
    refs = report.get("reference") or {}
    series = {name: r.get("per_step_max_abs_logit_diff") or [] for name, r in refs.items()
              if not r.get("skipped")}
    body.append("<h2>Logits along the generated tokens</h2>")
    if any(series.values()):
        body.append(_log_curve({f"vs {k}": v for k, v in series.items()},
                               xlabel="generated position", ylabel="max |Δlogit|",
                               first=report.get("first_divergent_token"),
                               first_label="first divergent token",
                               title="max |harness logit − reference logit| per position"))
    if per_token:
        rows, mark = [], []
        for e in per_token:
            h, r = e.get("harness") or {}, e.get("reference") or {}
            rows.append([e.get("position"), f"{h.get('token')} {h.get('text')!r}",
                         f"{r.get('token')} {r.get('text')!r}", h.get("logit"), r.get("logit"),
                         e.get("max_abs_logit_diff"), _top(e.get("harness_top")),
                         _top(e.get("reference_top"))])
            mark.append(h.get("token") != r.get("token"))
        body.append(table(["pos", "harness token", "reference token", "harness logit",
                           "reference logit", "max |Δlogit|", "harness top-5",
                           "reference top-5"], rows, mark=mark))
    body.append(table(["reference", "prefill_chunk_size", "tokens equal", "max |Δlogit|",
                       "first divergent", "seconds"],
                      [[name, r.get("prefill_chunk_size"),
                        "not run" if r.get("skipped") else r.get("tokens_equal"),
                        r.get("max_abs_logit_diff"), r.get("first_divergent_token"),
                        r.get("seconds")] for name, r in refs.items()]))
    for name, r in refs.items():
        if r.get("skipped"):
            body.append(f'<p class="note">{esc(name)} was not run: {esc(r["skipped"])}</p>')
        if r.get("excluded_from_verdict"):
            body.append(f'<p class="note">{esc(name)} is reported, not judged: '
                        f'{esc(r["excluded_from_verdict"])}</p>')

    chunks = report.get("chunks") or {}
    ranges = chunks.get("ranges") or []
    if ranges:
        body.append("<h2>Prefill chunks and images</h2>")
        prompt_len = (inputs or {}).get("harness", {}).get("prompt_length") or max(
            b for _a, b in ranges)
        body.append(_chunk_plan(ranges, report.get("image_ranges") or [], prompt_len))
        body.append(f"<p>{chunks.get('count')} chunk(s) of size "
                    f"{esc(chunks.get('chunk_size') or 'whole prompt')}; chunks ending inside an "
                    f"image: {esc(chunks.get('inside_image'))}. Encoder calls: "
                    f"{esc((report.get('encoder_calls') or {}).get('harness'))} for "
                    f"{esc((report.get('encoder_calls') or {}).get('images'))} image(s).</p>")

    body.append("<h2>Timings (s)</h2>" + _kv_table(report.get("timings") or {}))
    body.append("<h2>Request</h2>" + _kv_table(report.get("request") or {}))
    body.append(_environment(report.get("versions") or {}))
    return page(f"VLM parity: {report['family']} — {verdict}", body)


# -- video parity ----------------------------------------------------------------------------------
def _frame_strip(video: np.ndarray, picks: Sequence[int], max_side: int = 160) -> np.ndarray:
    """The picked frames of one uint8 (F, H, W, 3) video side by side (2 px white gaps), each
    shrunk by an integer step to at most ``max_side`` pixels high (exact pixels, no filter)."""
    step = max(1, -(-video.shape[1] // max_side))
    frames = [video[f, ::step, ::step] for f in picks]
    gap = np.full((frames[0].shape[0], 2, 3), 255, np.uint8)
    parts = [p for f in frames for p in (f, gap)][:-1]
    return np.concatenate(parts, axis=1)


def video_report_html(report: dict, ours_frames: np.ndarray, ref_frames: np.ndarray, *,
                      files: Sequence[str] = ()) -> str:
    """The video parity page: the image page over frame strips of both sides (at most 9 frames
    evenly spread, first and last included) with their amplified |difference|, plus the
    per-frame difference plot (uint8 max / mean |Δ| on a log axis, exact zeros marked)."""
    ours, ref = np.asarray(ours_frames), np.asarray(ref_frames)
    count = min(ours.shape[1], ref.shape[1])
    picks = sorted({int(round(x)) for x in np.linspace(0, count - 1, min(count, 9))})
    strips_ours = np.stack([_frame_strip(v, picks) for v in ours])
    strips_ref = np.stack([_frame_strip(v, picks) for v in ref])
    html_text = image_report_html(report, strips_ours, strips_ref, files=files,
                                  output_format="png")
    frames = report.get("frames") or {}
    rows = frames.get("per_frame") or []
    section = [f"<h2>Frames</h2><p>Frame strips above: frames {', '.join(map(str, picks))} of "
               f"{count} at {esc(report.get('frame_rate'))} fps; every comparison uses the uint8 "
               f"frames before encoding (frames.npy, reference_frames.npy).</p>"]
    if report.get("lossy_note"):
        section.append(f'<p class="note">{esc(report["lossy_note"])}.</p>')
    if rows:
        first = frames.get("first_differing_frame")
        series = {}
        for b in sorted({r["video"] for r in rows}):
            mine = [r for r in rows if r["video"] == b]
            tag = f" (video {b})" if ours.shape[0] > 1 else ""
            series[f"max |Δ|{tag}"] = [r["max_abs_diff"] for r in mine]
            series[f"mean |Δ|{tag}"] = [r["mean_abs_diff"] for r in mine]
        section.append(_log_curve(series, xlabel="frame", ylabel="|harness − reference| (uint8)",
                                  first=None if first is None else first[1],
                                  first_label="first differing frame",
                                  title="Per-frame differences"))
        section.append(table(["video", "frame", "max |Δ|", "mean |Δ|", "PSNR (dB)", "bitwise"],
                             [[r["video"], r["frame"], r["max_abs_diff"], r["mean_abs_diff"],
                               "∞" if r["bitwise"] else r["psnr_db"], r["bitwise"]]
                              for r in rows], mark=[not r["bitwise"] for r in rows]))
    html_text = html_text.replace("<h2>Per-step latents</h2>",
                                  "\n".join(section) + "<h2>Per-step latents</h2>", 1)
    return (html_text.replace("<h1>Image parity:", "<h1>Video parity:", 1)
            .replace("<title>Image parity:", "<title>Video parity:", 1)
            .replace("<h2>Images</h2>", "<h2>Frame strips</h2>", 1))

