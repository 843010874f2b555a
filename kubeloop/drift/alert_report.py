"""Drift alerts a person reads: a text report (`kubeloop alerts show ID`) and one
self-contained HTML page (`--html FILE`, and the drift service's GET /alerts/{id}/report).

The page needs nothing outside itself: the plots are inline SVG drawn here from what the
alert carries (its `details["summaries"]`: reference and window histograms or category
counts of the features that moved) and from the monitor's timeline (the label-free
estimate of every serving window, and estimate beside realized figures of every
labelled window). Evidently's per-column drift report is the model.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubeloop.alert import Alert

REF_COLOR = "#4c78a8"
WIN_COLOR = "#f58518"
REAL_COLOR = "#54a24b"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.{digits}g}"
    return str(value)


def moved_features(alert: Alert) -> list[str]:
    """The features (or metrics, or checks) that moved, strongest first."""
    return list(alert.features)


def _summary_line(name: str, summary: Mapping[str, Any]) -> str:
    ref, win = summary.get("reference", {}), summary.get("window", {})
    if ref.get("kind") == "categorical":

        def top(counts: Mapping[str, int]) -> str:
            total = sum(counts.values()) or 1
            items = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
            return ", ".join(f"{k} {v / total:.0%}" for k, v in items)

        return f"  {name}: reference [{top(ref.get('counts', {}))}] | window [{top(win.get('counts', {}))}]"
    rq, wq = ref.get("quantiles") or [], win.get("quantiles") or []
    return (
        f"  {name}: reference mean {_fmt(ref.get('mean'))} (p5/p50/p95 "
        f"{'/'.join(_fmt(q) for q in rq)}) | window mean {_fmt(win.get('mean'))} "
        f"({'/'.join(_fmt(q) for q in wq)})"
    )


def alert_text(alert: Alert) -> str:
    """The alert as a person reads it in a terminal."""
    w = alert.window
    d = alert.details
    lines = [
        f"alert {alert.id} ({alert.severity})",
        f"  model {alert.model}:{alert.version}  variant {alert.variant}  revision {alert.revision or '-'}",
        f"  detector {alert.detector}  raised {alert.time:%Y-%m-%d %H:%M:%S} UTC",
        f"  window #{w.index}: {w.start:%Y-%m-%d %H:%M} - {w.end:%Y-%m-%d %H:%M} UTC, {w.n} events",
        (
            f"  strongest: statistic {_fmt(alert.statistic)}, p-value {_fmt(alert.p_value)} "
            f"(threshold {_fmt(alert.threshold)})"
        ),
        f"  moved: {', '.join(alert.features) or '-'}",
    ]
    p_values = d.get("p_values") or {}
    if p_values:
        lines.append("  p-values (smallest first):")
        for name, p in sorted(p_values.items(), key=lambda kv: kv[1])[:10]:
            mark = " *" if name in alert.features else ""
            lines.append(f"    {name:28s} {_fmt(p)}{mark}")
    summaries = d.get("summaries") or {}
    shown = [f for f in alert.features if f in summaries] or list(summaries)[:3]
    if shown:
        lines.append("  reference vs window:")
        lines += [_summary_line(f, summaries[f]) for f in shown]
    if alert.detector == "data_quality":
        lines.append("  failed checks:")
        for c in d.get("failed", []):
            lines.append(
                f"    {c['feature']} {c['check']}: rate {c['rate']:.2%} (reference "
                f"{c['reference_rate']:.2%}, tolerance {c['tolerance']:.2%}), p {_fmt(c['p_value'])}"
            )
    for label, key in (("estimated", "estimated"), ("realized", "realized")):
        if isinstance(d.get(key), Mapping):
            fig = d[key]
            lines.append(
                f"  {label}: log loss {_fmt(fig.get('log_loss'))}, NE "
                f"{_fmt(fig.get('normalized_entropy'))}, AUC {_fmt(fig.get('auc'))}"
            )
    if isinstance(d.get("reference_estimated"), Mapping):
        fig = d["reference_estimated"]
        lines.append(
            f"  reference (estimated, same mix): NE {_fmt(fig.get('normalized_entropy'))}, "
            f"AUC {_fmt(fig.get('auc'))}"
        )
    return "\n".join(lines)


# -- SVG ------------------------------------------------------------------------------------


def _svg(width: int, height: int, body: Iterable[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="8" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )


def _legend(x: int, y: int, items: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for i, (label, color) in enumerate(items):
        out.append(
            f'<rect x="{x + i * 120}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + i * 120 + 14}" y="{y}" font-size="11">{html.escape(label)}</text>'
        )
    return out


def histogram_svg(
    name: str, summary: Mapping[str, Any], width: int = 460, height: int = 220
) -> str:
    """Reference vs window of one feature: side-by-side bars of the share per bin
    (numeric, on the summary's shared bins) or per category."""
    ref, win = summary.get("reference", {}), summary.get("window", {})
    if ref.get("kind") == "categorical":
        keys = sorted(
            set(ref.get("counts", {})) | set(win.get("counts", {})),
            key=lambda k: -(ref.get("counts", {}).get(k, 0) + win.get("counts", {}).get(k, 0)),
        )[:12]
        rc = [ref.get("counts", {}).get(k, 0) for k in keys]
        wc = [win.get("counts", {}).get(k, 0) for k in keys]
        labels = keys
    else:
        rc, wc = ref.get("hist") or [], win.get("hist") or []
        edges = summary.get("bins") or []
        labels = [_fmt(e, 2) for e in edges[:-1]]
    n = max(len(rc), 1)
    rt, wt = sum(rc) or 1, sum(wc) or 1
    rs, ws = [c / rt for c in rc], [c / wt for c in wc]
    top = max([*rs, *ws, 1e-9])
    left, right, y0, y1 = 40, width - 10, height - 40, 30
    step = (right - left) / n
    bar = step * 0.42
    body = [f'<line x1="{left}" y1="{y0}" x2="{right}" y2="{y0}" stroke="#999"/>']
    for i in range(len(rs)):
        x = left + i * step
        for j, (share, color) in enumerate(((rs[i], REF_COLOR), (ws[i], WIN_COLOR))):
            h = (y0 - y1) * share / top
            body.append(
                f'<rect class="bar" x="{x + j * bar:.1f}" y="{y0 - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{html.escape(str(labels[i]))}: '
                f"{share:.1%}</title></rect>"
            )
        if len(rs) <= 12 or i % max(1, len(rs) // 6) == 0:
            body.append(
                f'<text x="{x:.1f}" y="{y0 + 12}" font-size="9">{html.escape(str(labels[i])[:10])}</text>'
            )
    body.append(f'<text x="4" y="{y1 + 8}" font-size="9">{top:.0%}</text>')
    body += _legend(left, height - 8, [("reference", REF_COLOR), ("window", WIN_COLOR)])
    return _svg(width, height, body, name)


def line_chart_svg(
    title: str,
    series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]],
    width: int = 940,
    height: int = 260,
    marks: Sequence[float] = (),
) -> str:
    """Lines of (x = epoch seconds, y) points; `marks` draws a vertical rule per alert."""
    points = [p for _, _, pts in series for p in pts if p[1] is not None and math.isfinite(p[1])]
    if not points:
        return _svg(width, 40, ['<text x="8" y="34" font-size="11">no data yet</text>'], title)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.1 or 0.01
    y_lo, y_hi = y_lo - pad, y_hi + pad
    left, right, top, bottom = 50, width - 10, 28, height - 44

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    body = [
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>',
        f'<text x="4" y="{top + 8}" font-size="9">{_fmt(y_hi)}</text>',
        f'<text x="4" y="{bottom}" font-size="9">{_fmt(y_lo)}</text>',
        (
            f'<text x="{left}" y="{bottom + 14}" font-size="9">'
            f"{datetime.fromtimestamp(x_lo, UTC):%m-%d %H:%M}</text>"
        ),
        (
            f'<text x="{right - 60}" y="{bottom + 14}" font-size="9">'
            f"{datetime.fromtimestamp(x_hi, UTC):%m-%d %H:%M}</text>"
        ),
    ]
    for m in marks:
        if x_lo <= m <= x_hi:
            body.append(
                f'<line x1="{px(m):.1f}" y1="{top}" x2="{px(m):.1f}" y2="{bottom}" '
                'stroke="#d62728" stroke-dasharray="3,3"/>'
            )
    for name, color, pts in series:
        good = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        if not good:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good)
        body.append(
            f'<polyline class="series" data-name="{html.escape(name)}" fill="none" '
            f'stroke="{color}" stroke-width="1.6" points="{path}"/>'
        )
        body += [
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{color}"/>' for x, y in good
        ]
    body += _legend(left, height - 8, [(n, c) for n, c, _ in series])
    return _svg(width, height, body, title)


def performance_series(
    timeline: Sequence[Mapping[str, Any]], key: Sequence[str] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """From the monitor's timeline, the NE series a page plots: the label-free estimate
    of every serving window and of its matched reference, and the estimate and realized
    value of every labelled window (x = the window's end)."""
    out: dict[str, list[tuple[float, float]]] = {
        "estimated NE (serving windows)": [],
        "reference, estimated NE": [],
        "estimated NE (labelled windows)": [],
        "realized NE (labelled windows)": [],
    }
    for r in timeline:
        if key is not None and list(r.get("key", [])) != list(key):
            continue
        det = r.get("detector") or r.get("kind")
        t = float(r["end"])
        est = (r.get("estimated") or {}).get("normalized_entropy")
        if det in ("estimated_performance", "serve"):
            out["estimated NE (serving windows)"].append((t, est))
            ref = (r.get("reference_estimated") or {}).get("normalized_entropy")
            out["reference, estimated NE"].append((t, ref))
        elif det in ("performance", "labels"):
            out["estimated NE (labelled windows)"].append((t, est))
            out["realized NE (labelled windows)"].append(
                (t, (r.get("realized") or {}).get("normalized_entropy"))
            )
    return out


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def alert_html(
    alert: Alert,
    history: Sequence[Alert] = (),
    timeline: Sequence[Mapping[str, Any]] = (),
) -> str:
    """One self-contained HTML page for `alert`: summary, a plot per moved feature,
    performance over time (estimated and realized), and the alert history of its key."""
    d = alert.details
    summaries = d.get("summaries") or {}
    plotted = [f for f in alert.features if f in summaries] or list(summaries)[:3]
    plots = "".join(f'<div class="plot">{histogram_svg(f, summaries[f])}</div>' for f in plotted)
    key = [alert.model, alert.version, alert.variant]
    series = performance_series(timeline, key)
    if not any(series.values()):
        # No timeline at hand: the labelled windows' figures the alerts themselves carry.
        for a in history or [alert]:
            if a.detector == "performance" and isinstance(a.details.get("realized"), Mapping):
                t = a.window.end.timestamp()
                series["estimated NE (labelled windows)"].append(
                    (t, a.details.get("estimated", {}).get("normalized_entropy"))
                )
                series["realized NE (labelled windows)"].append(
                    (t, a.details["realized"].get("normalized_entropy"))
                )
            if a.detector == "estimated_performance":
                t = a.window.end.timestamp()
                series["estimated NE (serving windows)"].append(
                    (t, a.details.get("estimated", {}).get("normalized_entropy"))
                )
    colors = [WIN_COLOR, REF_COLOR, "#b279a2", REAL_COLOR]
    chart = line_chart_svg(
        "normalized entropy over time: label-free estimate and realized",
        [(name, colors[i], pts) for i, (name, pts) in enumerate(series.items())],
        marks=[a.window.end.timestamp() for a in history],
    )
    perf_rows = [
        (
            datetime.fromtimestamp(float(r["end"]), UTC).strftime("%m-%d %H:%M"),
            r.get("detector"),
            r.get("n"),
            (r.get("estimated") or {}).get("normalized_entropy"),
            (r.get("realized") or {}).get("normalized_entropy"),
            (r.get("estimated") or {}).get("auc"),
            (r.get("realized") or {}).get("auc"),
        )
        for r in timeline
        if r.get("detector") == "performance" and list(r.get("key", [])) == key
    ]
    p_rows = sorted((d.get("p_values") or {}).items(), key=lambda kv: kv[1])
    hist_rows = [
        (
            a.window.start.strftime("%m-%d %H:%M"),
            a.detector,
            a.severity,
            ", ".join(a.features[:4]),
            a.p_value,
            a.threshold,
            "this alert" if a.id == alert.id else a.id,
        )
        for a in sorted(history, key=lambda a: a.window.start)
    ]
    dq_rows = [
        (c["feature"], c["check"], c["rate"], c["reference_rate"], c["tolerance"], c["p_value"])
        for c in d.get("failed", [])
    ]
    w = alert.window
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>kubeloop drift alert {e(alert.id)}</title>",
        (
            "<style>body{font-family:sans-serif;margin:24px;max-width:1000px}"
            "table{border-collapse:collapse;font-size:12px;margin:8px 0}"
            "td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}"
            ".plot{display:inline-block;margin:4px}.crit{color:#d62728}</style></head><body>"
        ),
        (
            f"<h1>Drift alert: {e(alert.detector)} on {e(alert.model)}:{e(alert.version)} "
            f"({e(alert.variant)})</h1>"
        ),
        (
            f"<p class='{'crit' if alert.severity == 'critical' else ''}'>"
            f"<b>{e(alert.severity)}</b> - window #{w.index}, {w.start:%Y-%m-%d %H:%M} to "
            f"{w.end:%Y-%m-%d %H:%M} UTC, {w.n} events; revision {e(alert.revision or '-')}; "
            f"id <code>{e(alert.id)}</code></p>"
        ),
        (
            f"<p>Moved: <b>{e(', '.join(alert.features) or '-')}</b>. Strongest: statistic "
            f"{e(_fmt(alert.statistic))}, p-value {e(_fmt(alert.p_value))} against the threshold "
            f"{e(_fmt(alert.threshold))}.</p>"
        ),
        "<h2>What moved: reference vs window</h2>",
        plots or "<p>No per-feature picture for this detector.</p>",
    ]
    if dq_rows:
        parts += [
            "<h2>Data-quality checks that failed</h2>",
            _table(["feature", "check", "rate", "reference rate", "tolerance", "p-value"], dq_rows),
        ]
    if p_rows:
        parts += ["<h2>p-values</h2>", _table(["feature", "p-value"], p_rows[:30])]
    parts += [
        "<h2>Performance over time</h2>",
        (
            "<p>The estimate assumes the model's scores are still calibrated (it follows covariate "
            "shift, not concept drift); realized figures arrive with the delayed labels.</p>"
        ),
        f'<div class="plot">{chart}</div>',
    ]
    if perf_rows:
        parts.append(
            _table(
                [
                    "labelled window end",
                    "detector",
                    "n",
                    "estimated NE",
                    "realized NE",
                    "estimated AUC",
                    "realized AUC",
                ],
                perf_rows,
            )
        )
    parts += [
        "<h2>Alert history</h2>",
        _table(
            ["window start", "detector", "severity", "moved", "p-value", "threshold", "alert"],
            hist_rows,
        )
        if hist_rows
        else "<p>Only this alert.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
