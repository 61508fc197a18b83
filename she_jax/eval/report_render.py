"""Rendering the cross-run report (she_jax.eval.compare): plots, report.json, markdown and
a self-contained HTML page, from the report dict `build_report` returns (or report.json).

`report_blocks` lays the report out once as blocks (headings, paragraphs, lists, tables,
images); `render_markdown` and `render_html` render those blocks; `write_report` writes
every file into the report's directory.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from she_jax.eval import report as eval_report
from she_jax.eval.runs_index import PRED_CLASSES
from she_jax.special_tokens import LABELS, STEP_NAMES

OUTPUT_FILES = ("report.json", "report.md", "report.html")
PLOTS_DIR = "plots"


# ----------------------------------------------------------------------------------------
# Output: plots, report.json, markdown, HTML.


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def plot_macro_f1(result: Mapping, path: str) -> str:
    """Grouped bars: macro-F1 (%) per split and setting, whiskers = the 95 % interval."""
    splits = list(result["splits"])
    names = [s["name"] for s in result["settings"]]
    fig = eval_report._new_figure(max(7.0, 4.0 + 0.25 * len(splits) * max(1, len(names))), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs, heights, err_lo, err_hi = [], [], [], []
        for i, split in enumerate(splits):
            cell = result["splits"][split].get(name, {}).get("metrics", {}).get("macro_f1")
            if cell is None or cell["mean"] is None:
                continue
            mean = 100 * cell["mean"]
            xs.append(i - 0.4 + width * (j + 0.5))
            heights.append(mean)
            has_ci = cell["lo"] is not None
            err_lo.append(mean - 100 * cell["lo"] if has_ci else 0.0)
            err_hi.append(100 * cell["hi"] - mean if has_ci else 0.0)
        ax.bar(xs, heights, width=width, yerr=[err_lo, err_hi], capsize=2, label=name)
    ax.set_xticks(range(len(splits)), splits, rotation=20, ha="right")
    ax.set_ylabel("macro-F1 (%)")
    ax.set_title("macro-F1 per split: mean over seeds, 95 % bootstrap interval")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return eval_report._save(fig, path)


def plot_curve(key: str, by_setting: Mapping[str, Mapping[str, list]], path: str) -> str:
    """One learning curve per setting: mean over seeds, shaded min-max band."""
    fig = eval_report._new_figure(6.0, 3.5)
    ax = fig.add_subplot()
    for name, curve in by_setting.items():
        steps = np.asarray(curve["step"], dtype=np.float64)
        line, = ax.plot(steps, np.asarray(curve["mean"], dtype=np.float64),
                        label=f"{name} ({max(curve['n_seeds'])} seeds)")
        ax.fill_between(steps, np.asarray(curve["min"], dtype=np.float64),
                        np.asarray(curve["max"], dtype=np.float64), color=line.get_color(),
                        alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{key}: mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return eval_report._save(fig, path)


def write_report(result: dict, out_dir: str) -> dict:
    """Writes plots/, report.json, report.md and report.html into out_dir; adds the
    relative paths to result['plots'] and result['files']."""
    os.makedirs(os.path.join(out_dir, PLOTS_DIR), exist_ok=True)
    plots: dict[str, Any] = {"macro_f1": None, "curves": {}}
    if result["splits"]:
        plots["macro_f1"] = f"{PLOTS_DIR}/compare_macro_f1.png"
        plot_macro_f1(result, os.path.join(out_dir, plots["macro_f1"]))
    for key, by_setting in result["curves"].items():
        if by_setting:
            rel = f"{PLOTS_DIR}/curve_{_slug(key)}.png"
            plot_curve(key, by_setting, os.path.join(out_dir, rel))
            plots["curves"][key] = rel
    result["plots"] = plots
    result["files"] = list(OUTPUT_FILES)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        f.write(json.dumps(result, indent=1, allow_nan=False) + "\n")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_markdown(result))
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(render_html(result, out_dir))
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _cell_text(cell: Mapping | None) -> str:
    if cell is None or cell.get("mean") is None:
        return "-"
    if cell["source"] != "bootstrap":
        return f"{_pct(cell['mean'])}†"
    if cell["lo"] is None:
        return _pct(cell["mean"])
    return f"{_pct(cell['mean'])} [{_pct(cell['lo'])}, {_pct(cell['hi'])}]"


def _diff_text(cell: Mapping | None) -> str:
    if cell is None or cell.get("diff") is None:
        return "-"
    text = f"{100 * cell['diff']:+.1f}"
    if cell["lo"] is not None:
        text += f" [{100 * cell['lo']:+.1f}, {100 * cell['hi']:+.1f}]"
    return text


def _mix_text(entry: Mapping) -> str:
    pred = "/".join(f"{100 * entry['pred_share'][c]:.0f}" for c in PRED_CLASSES)
    gold = "/".join(f"{100 * entry['gold_share'][c]:.0f}" for c in LABELS)
    return f"{pred} (gold {gold})"


_SPLIT_COLUMNS = (("macro_f1", "macro-F1"), ("accuracy", "acc"),
                  *((f"f1_{label}", f"F1 {label}") for label in LABELS),
                  ("step_accuracy", "step-acc"), ("hallucination_rate", "halluc."),
                  ("rule_violation_rate", "rule-viol."))
_PAIRED_COLUMNS = (("macro_f1", "Δ macro-F1"), ("accuracy", "Δ acc"), ("f1_L3", "Δ F1 L3"),
                   ("step_accuracy", "Δ step-acc"), ("hallucination_rate", "Δ halluc."),
                   ("rule_violation_rate", "Δ rule-viol."))


_STEP_COLUMNS = tuple((f"step_acc_{name}", name) for name in STEP_NAMES)


def _per_step_blocks(result: Mapping) -> list[tuple]:
    """'Step accuracy by step': each CoT step's accuracy per split and setting, and the paired
    differences against the baseline; nothing when no run has per-step results."""
    keys = [key for key, _ in _STEP_COLUMNS]
    rows = []
    for split, entries in result["splits"].items():
        for name, e in entries.items():
            cells = [e["metrics"].get(key) for key in keys]
            if any(c is not None and c.get("mean") is not None for c in cells):
                rows.append([split, name] + [_cell_text(c) for c in cells]
                            + [_cell_text(e["metrics"].get("step_accuracy"))])
    if not rows:
        return []
    blocks: list[tuple] = [("h", 2, "Step accuracy by step"),
                           ("p", "Each CoT step against its annotation, over the examples "
                            "annotated for it; 'all' = every annotated step right (step-acc "
                            "above).")]
    blocks.append(("table", ["split", "setting"] + [t for _, t in _STEP_COLUMNS] + ["all"],
                   rows))
    paired = [[split, name] + [_diff_text(entry["metrics"].get(key)) for key in keys]
              + [_diff_text(entry["metrics"].get("step_accuracy"))]
              for split, by_setting in result["paired"].items()
              for name, entry in by_setting.items()
              if "skipped" not in entry and any(k in entry["metrics"] for k in keys)]
    if paired:
        blocks.append(("p", f"Paired differences vs `{result['baseline']}`, in points."))
        blocks.append(("table", ["split", "setting"] + [f"Δ {t}" for _, t in _STEP_COLUMNS]
                       + ["Δ all"], paired))
    return blocks


def report_blocks(result: Mapping) -> list[tuple]:
    """The report as blocks, rendered by `render_markdown` and `render_html`:
    ('h', level, text), ('p', text), ('list', [text]), ('table', header, rows),
    ('img', alt, relative path)."""
    blocks: list[tuple] = [("h", 1, "Cross-run report")]
    blocks.append(("p", "Inputs: " + ", ".join(result["inputs"]) + f". Paired differences "
                   f"are against the baseline setting `{result['baseline']}`. Accuracy, F1 "
                   "and rates in %, 95 % bootstrap intervals in brackets; † = eval.json "
                   "aggregate, no interval (Methods)."))
    blocks.append(("table", ["setting", "config", f"seeds ({', '.join(result['seed_keys'])})",
                             "runs"],
                   [[s["name"], s["config_name"], ", ".join(r["seed"] for r in s["runs"]),
                     ", ".join(r["workdir"] for r in s["runs"])]
                    for s in result["settings"]]))
    if result["warnings"]:
        blocks.append(("h", 2, "Warnings"))
        blocks.append(("list", list(result["warnings"])))
    names = [s["name"] for s in result["settings"]]
    splits = list(result["splits"])
    blocks.append(("h", 2, "Macro-F1 per split"))
    blocks.append(("table", ["split"] + names,
                   [[split] + [_cell_text(result["splits"][split].get(n, {}).get(
                       "metrics", {}).get("macro_f1")) for n in names] for split in splits]))
    if result.get("plots", {}).get("macro_f1"):
        blocks.append(("img", "macro-F1 per split", result["plots"]["macro_f1"]))
    for split in splits:
        entries = result["splits"][split]
        blocks.append(("h", 2, f"Split {split}"))
        header = (["setting", "seeds", "n"] + [title for _, title in _SPLIT_COLUMNS]
                  + ["predicted L4/L3/L2/L1/invalid %"])
        rows = [[name, str(e["n_seeds"]), str(e["n_examples"])]
                + [_cell_text(e["metrics"][key]) for key, _ in _SPLIT_COLUMNS]
                + [_mix_text(e)] for name, e in entries.items()]
        blocks.append(("table", header, rows))
        notes = [f"{name}: {note}" for name, e in entries.items() for note in e["notes"]]
        if notes:
            blocks.append(("list", notes))
    if any(result["paired"].values()):
        blocks.append(("h", 2, f"Paired differences vs `{result['baseline']}`"))
        blocks.append(("p", "Setting minus baseline on the examples both evaluated, in "
                       "points; 95 % interval from the example bootstrap stratified by gold "
                       "label."))
        rows = []
        for split, by_setting in result["paired"].items():
            for name, entry in by_setting.items():
                if "skipped" in entry:
                    rows.append([split, name, "-", entry["skipped"]]
                                + ["-"] * len(_PAIRED_COLUMNS))
                    continue
                rows.append([split, name, str(entry["n_examples"]), entry["seeds"]]
                            + [_diff_text(entry["metrics"].get(key))
                               for key, _ in _PAIRED_COLUMNS])
        blocks.append(("table", ["split", "setting", "n", "seeds"]
                       + [title for _, title in _PAIRED_COLUMNS], rows))
    groups = result.get("paired_groups") or {}
    if groups:
        blocks.append(("h", 2, f"Paired differences vs `{result['baseline']}`, split groups"))
        blocks.append(("p", "The mean of the group's per-split differences (hard_types: "
                       "negation, alternative, QA, knowledge; all_test: every test split); "
                       "interval from the same example resamples, averaged over the splits."))
        rows = [[group, name, ", ".join(s.removeprefix("test_") for s in entry["splits"])]
                + [_diff_text(entry["metrics"].get(key)) for key, _ in _PAIRED_COLUMNS]
                for group, by_setting in groups.items() for name, entry in by_setting.items()]
        blocks.append(("table", ["group", "setting", "splits"]
                       + [title for _, title in _PAIRED_COLUMNS], rows))
    blocks += _per_step_blocks(result)
    curve_plots = result.get("plots", {}).get("curves", {})
    if curve_plots:
        blocks.append(("h", 2, "Learning curves"))
        blocks.append(("p", "From metrics.jsonl: the mean over a setting's seeds, the band "
                       "from the lowest to the highest seed at each step."))
        for key, rel in curve_plots.items():
            blocks.append(("img", f"learning curve: {key}", rel))
    blocks.append(("h", 2, "Methods"))
    blocks.append(("p", result["method"]["text"]))
    return blocks


_NUMERIC = re.compile(r"^[-+]?(\d|\.\d)|^-$")


def _right_aligned(rows: Sequence[Sequence[str]], num_columns: int) -> list[bool]:
    """Per column: every cell is a number (or '-'), so the column is right-aligned."""
    return [bool(rows) and all(_NUMERIC.match(row[j]) for row in rows)
            for j in range(num_columns)]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: Mapping, image_dir: str | None = None) -> str:
    """A report dict (build_report's return value, or report.json) as markdown. Images are
    referenced relative to the report's directory, or under `image_dir` (e.g. the report's
    directory as seen from a notebook)."""
    lines: list[str] = []
    for block in report_blocks(result):
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            align = _right_aligned(rows, len(header))
            lines.append("| " + " | ".join("---:" if a else "---" for a in align) + " |")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            path = block[2] if image_dir is None else os.path.join(image_dir, block[2])
            lines += [f"![{block[1]}]({path})", ""]
    return "\n".join(lines)


_CSS = ("body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0;font-size:0.85em}"
        "td,th{border:1px solid #ccc;padding:2px 6px}td.num{text-align:right}"
        "img{max-width:100%}")


def render_html(result: Mapping, out_dir: str) -> str:
    """The report as one HTML page with its plots (read from out_dir) embedded as base64:
    it references nothing outside itself."""
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             "<title>Cross-run report</title>", f"<style>{_CSS}</style></head><body>"]
    def esc(text: str) -> str:  # escaped, with markdown's `code` spans as <code>
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))

    for block in report_blocks(result):
        kind = block[0]
        if kind == "h":
            parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            align = _right_aligned(block[2], len(block[1]))
            head = "".join(f"<th>{esc(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(
                f"<td class='num'>{esc(c)}</td>" if a else f"<td>{esc(c)}</td>"
                for c, a in zip(row, align)) + "</tr>" for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            with open(os.path.join(out_dir, block[2]), "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            parts.append(f"<p><img alt='{esc(block[1])}' src='data:image/png;base64,{data}'>"
                         "</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
