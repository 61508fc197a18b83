r"""The paper ladder's targets, checked against the cross-run reports.

  python -m experiments.ladder_targets runs/ladder              # report.json + vs_grpo/
  python -m experiments.ladder_targets docs/results/ladder_followup \
      --names=grpo=grpo_mle,srpo=srpo_matched,agrl=agrl_mle [--out=DIR]

Reads report.json of every directory given (and of its vs_grpo/ when there is one), finds
for each target the report whose baseline is the target's baseline, and writes
targets.{md,json} into --out (default: the first directory): per target the measured
paired difference with its 95 % interval, met / not met / not measured, and by how much it
is missed. `experiments.ladder` writes them after its reports.

The targets (tiny, the ladder report; what the papers report in miniature): GRPO above SFT
and SRPO above GRPO on test_longtail and on the mean of the four hard-type splits, each
with the paired interval above 0, SRPO - GRPO >= +3 macro-F1 points on test_longtail; SRPO's
step accuracy >= GRPO's + 5 points and its discriminative hallucination rate <= GRPO's
(both over every test split); DPO >= SFT (macro-F1 over every test split); AGRL >= GRPO on
the rule-violation rate (lower is better, every test split) and on test_negation macro-F1.
"Above" needs the interval's lower bound > 0; ">=" / "<=" are on the point difference (the
interval is shown beside it). Settings are found by name: `--names=ROLE=SETTING` maps a
role (sft, dpo, grpo, srpo, agrl) to a setting of the reports (default: the same name).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("sft", "dpo", "grpo", "srpo", "agrl")
REPORT_FILE = "report.json"


@dataclasses.dataclass(frozen=True)
class Target:
    """setting - baseline (roles) on `where` (a split, or a group of report.json's
    'paired_groups'), `metric` in report.json's units (fractions); `rule`: 'above' (lower
    bound > 0, and diff >= `threshold` when it is > 0), 'at_least' (diff >= threshold),
    'at_most' (diff <= threshold)."""
    key: str
    text: str
    setting: str
    baseline: str
    where: str
    metric: str
    rule: str
    threshold: float = 0.0


TARGETS = (
    Target("grpo_sft_longtail", "GRPO > SFT on test_longtail", "grpo", "sft",
           "test_longtail", "macro_f1", "above"),
    Target("grpo_sft_hard", "GRPO > SFT on the hard types (mean of 4 splits)", "grpo", "sft",
           "hard_types", "macro_f1", "above"),
    Target("srpo_grpo_longtail", "SRPO > GRPO on test_longtail, by >= 3 points", "srpo",
           "grpo", "test_longtail", "macro_f1", "above", 0.03),
    Target("srpo_grpo_hard", "SRPO > GRPO on the hard types (mean of 4 splits)", "srpo",
           "grpo", "hard_types", "macro_f1", "above"),
    Target("srpo_step_accuracy", "SRPO step accuracy >= GRPO + 5 points (test splits)",
           "srpo", "grpo", "all_test", "step_accuracy", "at_least", 0.05),
    Target("srpo_hallucination", "SRPO hallucination rate <= GRPO (test splits)", "srpo",
           "grpo", "all_test", "hallucination_rate", "at_most"),
    Target("dpo_sft", "DPO >= SFT (macro-F1, test splits)", "dpo", "sft", "all_test",
           "macro_f1", "at_least"),
    Target("agrl_grpo_rules", "AGRL <= GRPO rule-violation rate (test splits)", "agrl",
           "grpo", "all_test", "rule_violation_rate", "at_most"),
    Target("agrl_grpo_negation", "AGRL >= GRPO on test_negation", "agrl", "grpo",
           "test_negation", "macro_f1", "at_least"),
)


def parse_names(text: str) -> dict[str, str]:
    """'grpo=grpo_mle,srpo=srpo_matched' -> {role: setting}, every role defaulting to itself."""
    names = {role: role for role in ROLES}
    for part in filter(None, (p.strip() for p in text.split(","))):
        role, sep, setting = part.partition("=")
        if not sep or not setting or role not in ROLES:
            raise ValueError(f"--names: {part!r} is not ROLE=SETTING with ROLE one of "
                             f"{', '.join(ROLES)}")
        names[role] = setting
    return names


def _cell(report: Mapping, where: str, setting: str, metric: str) -> Mapping | None:
    """report's paired cell for `where` (a split, else a split group), or None."""
    by_setting = report["paired"].get(where) or report.get("paired_groups", {}).get(where, {})
    entry = by_setting.get(setting)
    if not entry or "skipped" in entry:
        return None
    cell = entry.get("metrics", {}).get(metric)
    return cell if cell and cell.get("diff") is not None else None


def check(target: Target, reports: Sequence[Mapping], names: Mapping[str, str]
          ) -> dict[str, Any]:
    """One target's row: the measured difference (points), its interval, 'met' / 'not met'
    / 'not measured', and `shortfall` (points still missing; 0 when met)."""
    setting, baseline = names[target.setting], names[target.baseline]
    row: dict[str, Any] = {"key": target.key, "target": target.text,
                           "comparison": f"{setting} - {baseline}", "where": target.where,
                           "metric": target.metric, "rule": target.rule,
                           "threshold": 100 * target.threshold}
    cell = next((c for r in reports if r.get("baseline") == baseline
                 for c in [_cell(r, target.where, setting, target.metric)] if c), None)
    if cell is None:
        return {**row, "status": "not measured", "diff": None, "lo": None, "hi": None,
                "shortfall": None}
    diff, lo, hi = (None if cell.get(k) is None else 100 * cell[k] for k in ("diff", "lo", "hi"))
    threshold = 100 * target.threshold
    if target.rule == "above":
        met = lo is not None and lo > 0 and diff >= threshold
        shortfall = max(0.0, threshold - diff, 0.0 if lo is None else -lo)
    elif target.rule == "at_least":
        met, shortfall = diff >= threshold, max(0.0, threshold - diff)
    elif target.rule == "at_most":
        met, shortfall = diff <= threshold, max(0.0, diff - threshold)
    else:
        raise ValueError(f"target {target.key}: unknown rule {target.rule!r}")
    return {**row, "status": "met" if met else "not met", "diff": diff, "lo": lo, "hi": hi,
            "shortfall": 0.0 if met else shortfall}


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}"


def _needs(row: Mapping) -> str:
    if row["rule"] == "above":
        extra = f" and diff >= {row['threshold']:+.1f}" if row["threshold"] > 0 else ""
        return "lower bound > 0" + extra
    return f"diff {'>=' if row['rule'] == 'at_least' else '<='} {row['threshold']:+.1f}"


def render_markdown(rows: Sequence[Mapping], sources: Sequence[str]) -> str:
    lines = ["# Ladder targets", "",
             "Paired differences in points (rates in percentage points), 95 % interval, from "
             + ", ".join(sources) + ". `short by`: how many points the difference (or, for "
             "'>', its interval's lower bound) is from the target.", "",
             "| target | comparison | on | measured | needs | status | short by |",
             "| --- | --- | --- | ---: | --- | --- | ---: |"]
    for row in rows:
        measured = ("-" if row["diff"] is None else
                    f"{_num(row['diff'])} [{_num(row['lo'])}, {_num(row['hi'])}]")
        short = "-" if row["shortfall"] is None else f"{row['shortfall']:.1f}"
        lines.append(f"| {row['target']} | {row['comparison']} | {row['where']} "
                     f"({row['metric']}) | {measured} | {_needs(row)} | {row['status']} | "
                     f"{short} |")
    met = sum(r["status"] == "met" for r in rows)
    measured = sum(r["status"] != "not measured" for r in rows)
    lines += ["", f"{met} of {measured} measured targets met ({len(rows)} targets)."]
    return "\n".join(lines) + "\n"


def write(out_dir: str, reports: Sequence[Mapping], sources: Sequence[str],
          names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """targets.md and targets.json in out_dir; returns the rows."""
    names = dict(names or {role: role for role in ROLES})
    rows = [check(t, reports, names) for t in TARGETS]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "targets.json"), "w") as f:
        json.dump({"names": names, "sources": list(sources), "targets": rows}, f, indent=1)
    with open(os.path.join(out_dir, "targets.md"), "w") as f:
        f.write(render_markdown(rows, sources))
    return rows


def read_reports(dirs: Sequence[str]) -> tuple[list[dict], list[str]]:
    """report.json of each directory and of its vs_grpo/ (when present)."""
    reports, sources = [], []
    for d in dirs:
        paths = [os.path.join(d, REPORT_FILE)]
        if os.path.exists(os.path.join(d, "vs_grpo", REPORT_FILE)):
            paths.append(os.path.join(d, "vs_grpo", REPORT_FILE))
        for path in paths:
            try:
                with open(path) as f:
                    report = json.load(f)
            except FileNotFoundError:
                raise ValueError(f"{path}: no cross-run report here (python -m "
                                 "she_jax.eval.compare writes one)") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not JSON ({e})") from None
            if "paired" not in report or "baseline" not in report:
                raise ValueError(f"{path}: not a cross-run report (no 'paired' / "
                                 "'baseline' key)")
            reports.append(report)
            sources.append(path)
    return reports, sources


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.ladder_targets",
        description="Check the paper ladder's targets against cross-run reports.")
    parser.add_argument("dirs", nargs="+", help="directories holding report.json")
    parser.add_argument("--names", default="", help="ROLE=SETTING,... (roles: "
                        + ", ".join(ROLES) + ")")
    parser.add_argument("--out", default=None, help="where targets.{md,json} go")
    args = parser.parse_args(argv)
    try:
        names = parse_names(args.names)
        reports, sources = read_reports(args.dirs)
    except ValueError as e:
        print(f"ladder_targets: {e}", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    rows = write(out, reports, sources, names)
    print(render_markdown(rows, sources), end="")
    print(f"wrote {os.path.join(out, 'targets.md')} and targets.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
