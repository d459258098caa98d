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
    rows = [[p["name"], p["status"] + (" (cached)" if p.get("cached") else ""), p["seconds"],
             _fmt(p.get("metrics") or {})] for p in report["passes"]]
    lines += _table(["pass", "status", "seconds", "metrics"], rows) if rows else ["(no passes)"]
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
    lines += ["", "## Quality", ""]
    q = report["quality"]
    if q.get("before") or q.get("after"):
        keys = ["total", "quality", "semantic"]
        lines += _table(["", *keys], [[k, *[(q.get(k) or {}).get(x) for x in keys]] for k in ("before", "after")])
    else:
        lines += [q.get("note", "(not measured)")]
    lines += ["", "## Latency", ""]
    lat = report["latency"]
    lines += _table(["before (s)", "after (s)", "ratio", "device"],
                    [[lat.get("before_seconds"), lat.get("after_seconds"), lat.get("ratio"), lat.get("device")]])
    lines += ["", "## Target", ""]
    graphs = report["target"].get("graphs") or []
    if graphs:
        lines += _table(["graph", "soc", "cpu fallback", "SQNR dB", "prepare s", "path"],
                        [[g.get("name"), g.get("soc"), g.get("cpu_fallback_nodes"), g.get("sqnr_db"),
                          g.get("prepare_seconds"), g.get("path")] for g in graphs])
    else:
        lines += ["(no target graphs)"]
    if report.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({path})" for name, path in report["figures"].items()]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "## Lineage", ""]
    lines += [f"- `{x['pass']}` config {x['config_hash']} : {x['input'][:12]} → {x['output'][:12]}"
              for x in report.get("lineage", [])] or ["(none)"]
    return "\n".join(lines) + "\n"


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
