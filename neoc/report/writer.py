"""report.json / report.md / report.html for a run (CONTRACT "report.json keys")."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any


def empty_report(recipe: str, model: str) -> dict[str, Any]:
    """Every CONTRACT section present from the start; later stages fill them."""
    return {
        "recipe": recipe,
        "model": model,
        "status": "running",
        "passes": [],
        "target": {"name": None, "graphs": []},
        "quality": {"before": None, "after": None},
        "cost": {"before": None, "after": None},
        "latency": {"before_seconds": None, "after_seconds": None, "device": None},
        "lineage": [],
        "notes": [],
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in list(v.items())[:8])
    if isinstance(v, list):
        return f"[{len(v)} items]" if len(v) > 6 else ", ".join(_fmt(x) for x in v)
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# neoc run report", "", f"- recipe: `{report['recipe']}`", f"- model: `{report['model']}`",
             f"- status: **{report['status']}**", ""]
    lines += ["## Passes", ""]
    rows = [[p["name"], p["status"] + (" (cached)" if p.get("cached") else ""), p["seconds"], p.get("cpu_seconds"),
             p.get("reason") or _fmt(_headline(p.get("metrics") or {}))] for p in report["passes"]]
    lines += (_table(["pass", "status", "seconds", "CPU s", "metrics / reason"], rows) if rows
              else ["(no passes)"])
    timing = report.get("timing") or {}
    if timing.get("wall_seconds") is not None:
        lines += ["", f"Run wall time {timing['wall_seconds']:.1f} s (passes' recorded seconds, cached ones included: "
                      f"{timing.get('passes_seconds', 0):.1f} s), "
                      f"CPU time {timing.get('cpu_seconds') or 0:.1f} s; "
                      f"load average at start {_fmt(timing.get('load_start'))}, at end {_fmt(timing.get('load_end'))}."]
    lines += ["", "## Cost", ""]
    cost = report["cost"]
    if cost.get("before"):
        comps = sorted(set(cost["before"]["components"]) | set((cost.get("after") or {}).get("components", {})))
        rows = []
        for c in comps:
            b = cost["before"]["components"].get(c, {})
            a = (cost.get("after") or {}).get("components", {}).get(c, {})
            rows.append([c, b.get("params"), a.get("params") if cost.get("after") else None,
                         b.get("flops_per_video"), a.get("flops_per_video") if cost.get("after") else None])
        lines += _table(["component", "params before", "params after", "FLOPs/video before", "FLOPs/video after"],
                        rows)
        lines += ["", f"NFE: {cost['before'].get('nfe')} → {(cost.get('after') or {}).get('nfe')}"]
    else:
        lines += ["(not measured)"]
    lines += _trajectory_section(report)
    lines += ["", "## Quality", ""]
    q = report["quality"]
    if q.get("before") or q.get("after"):
        keys = ["total", "quality", "semantic"]
        lines += _table(["", *keys], [[k, *[(q.get(k) or {}).get(x) for x in keys]] for k in ("before", "after")])
        if q.get("before") and q.get("after"):
            delta = q["after"]["total"] - q["before"]["total"]
            lines += ["", f"Total after − before: {delta:+.4f} (toy-world instrument, {q['before'].get('num_videos')} "
                      "videos, same prompts and seeds)."]
    else:
        lines += [q.get("note", "(not measured)")]
    rows = quality_points(report)
    if rows:
        lines += ["", "### Quality at every measured point (the passes' own before/after measurements)", ""]
        lines += _table(["pass", "point", "total", "quality", "semantic", "videos"],
                        [[r["pass"], r["point"], r["total"], r["quality"], r["semantic"], r["num_videos"]]
                         for r in rows])
    lines += ["", "## Latency", ""]
    lat = report["latency"]
    lines += _table(["before (s)", "after (s)", "ratio", "device"],
                    [[lat.get("before_seconds"), lat.get("after_seconds"), lat.get("ratio"), lat.get("device")]])
    if lat.get("method"):
        lines += ["", f"Measured: {lat['method']}; {lat.get('prompts')} prompts; NFE {lat.get('nfe_before')} → "
                      f"{lat.get('nfe_after')}; load average at start/end {_fmt((lat.get('load_average') or {}).get('start'))}"
                      f" / {_fmt((lat.get('load_average') or {}).get('end'))}."]
    for name, other in (lat.get("others") or {}).items():
        lines += ["", f"Also timed in the same alternation, '{name}': {_fmt(other.get('after_seconds'))} s per video, "
                      f"ratio {_fmt(other.get('ratio'))}" + (f" ({other['form']})" if other.get("form") else "") + "."]
    if lat.get("compiled_form"):
        lines += ["", f"'Compiled' here is {lat['compiled_form']}."]
    if lat.get("baseline_form"):
        lines += ["", f"'Baseline' here is {lat['baseline_form']}."]
    host = lat.get("host") or {}
    if host:
        parity = host.get("parity_max_abs") or {}
        lines += ["", f"Host runtime: {host.get('graph_calls')} graph calls and {host.get('torch_fallback_calls')} torch "
                      f"fallback calls over the latency runs; largest |graph − torch| on a first call "
                      f"{_fmt(max(parity.values()) if parity else None)}; video max |host − torch| "
                      f"{_fmt(host.get('video_max_abs_diff_vs_torch'))}; intra-op threads per graph {host.get('threads')}."]
    lines += _sqnr_section(report)
    lines += ["", "## Target", ""]
    graphs = report["target"].get("graphs") or []
    if graphs:
        lines += _table(["graph", "soc", "cpu fallback", "SQNR dB", "prepare s", "path"],
                        [[g.get("name"), g.get("soc"), g.get("cpu_fallback_nodes"), g.get("sqnr_db"),
                          g.get("prepare_seconds"), g.get("path")] for g in graphs])
    else:
        lines += ["(no target graphs)"]
    for note in report["target"].get("notes") or []:
        lines += [f"- {note}"]
    if report.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({path})" for name, path in report["figures"].items()]
    lines += _pass_images_section(report)
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "## Lineage", ""]
    lines += [f"- `{x['pass']}` config {x['config_hash']} : {x['input'][:12]} → {x['output'][:12]}"
              for x in report.get("lineage", [])] or ["(none)"]
    return "\n".join(lines) + "\n"


def _headline(metrics: dict) -> dict:
    """The scalar metrics of a pass (eval dicts and long lists have their own tables and figures)."""
    return {k: v for k, v in metrics.items()
            if not (isinstance(v, dict) and "total" in v) and not (isinstance(v, list) and len(v) > 6)
            and k not in ("table",)}


def quality_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    from neoc.report.figures import quality_rows

    return quality_rows(report)


def _trajectory_section(report: dict[str, Any]) -> list[str]:
    points = report.get("trajectory") or []
    if not points:
        return []
    lines = ["", "## Trajectory through the passes", "",
             "Each row is the pipeline after that pass (a skipped pass repeats the row above); seconds = one "
             "generation of the same prompt and seed on this machine, float32 torch on the CPU (the last row, when "
             "present: the target's lowered graphs of the final pipeline, run by ONNX Runtime).", ""]
    lines += _table(["after", "params (generation)", "NFE", "FLOPs/video", "seconds/video"],
                    [[p["stage"] + (" (skipped)" if p.get("skipped") else ""), p.get("params"), p.get("nfe"),
                      p.get("flops_per_video"), p.get("seconds")] for p in points])
    return lines


def _sqnr_section(report: dict[str, Any]) -> list[str]:
    q = next((p for p in report.get("passes", []) if p["name"] == "quantize-w8a16" and p.get("status") == "done"),
             None)
    if q is None:
        return []
    m = q.get("metrics") or {}
    lines = ["", "## Quantisation (W8A16, AIMET QuantSim vs float, held-out calls)", ""]
    rows = [[role, v] for role, v in (m.get("sqnr_db") or {}).items()]
    rows += [[f"denoiser stage {s}", v] for s, v in (m.get("denoiser_stage_sqnr_db") or {}).items()]
    lines += _table(["graph", "SQNR dB"], rows)
    table = m.get("table")
    if isinstance(table, list) and table and isinstance(table[0], dict):
        keys = list(table[0])
        lines += ["", *_table(keys, [[r.get(k) for k in keys] for r in table])]
    if m.get("quality_float") and m.get("quality_quantized"):
        lines += ["", f"Toy-world total, float {m['quality_float']['total']:.4f} vs simulated W8A16 "
                      f"{m['quality_quantized']['total']:.4f}."]
    return lines


def _pass_images_section(report: dict[str, Any]) -> list[str]:
    """Images the passes wrote as artifacts (e.g. swap-decoder's original / native / new frames), paths
    relative to the run folder the report sits in."""
    images = [(p["name"], key, path) for p in report.get("passes", [])
              for key, path in (p.get("artifacts") or {}).items()
              if str(path).lower().endswith((".png", ".gif", ".jpg"))]
    if not images:
        return []
    return ["", "## Pass images", ""] + [f"![{name}: {key}]({path})" for name, key, path in images]


def render_html(markdown: str, title: str = "neoc report") -> str:
    """A dependency-free rendering of the report markdown (headings, lists, tables, images)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}</style></head><body>"]
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            alt, _, rest = line[2:].partition("](")
            out.append(f"<img alt='{html.escape(alt)}' src='{html.escape(rest.rstrip(')'))}'>")
        elif line.startswith("- "):
            out.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    for name, text in (("report.json", json.dumps(report, indent=2, default=str)),
                       ("report.md", render_markdown(report)),
                       ("report.html", render_html(render_markdown(report)))):
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)
