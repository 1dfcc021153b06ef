"""The comparison report: report.json (numbers), report.md (tables and verdicts), accuracy.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from openrft.config import RunConfig
from openrft.fsutil import atomic_file

LABELS: dict[str, str] = {"base": "base model", "sft": "SFT", "rft": "RFT (GRPO)", "sft_rft": "SFT then RFT"}


def build_report(
    cfg: RunConfig,
    results: list[dict[str, Any]],
    *,
    budget: dict[str, Any],
    sizes: list[int],
    methods: list[str],
    eval_file: str,
    eval_config: str,
    pool_size: int,
    command: str | None,
    session_time_s: float,
) -> dict[str, Any]:
    from openrft.data.targets import implied_completion_fn

    base = next(r for r in results if r["method"] == "base")
    temperature = cfg.eval.temperature
    k = base["samples_per_row"]
    return {
        "command": command,
        "model": cfg.model.name,
        "dtype": cfg.model.dtype,
        "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha, "target_modules": cfg.lora.target_modules},
        "success_reward": base["success_reward"],
        "reward_names": [r.name for r in cfg.rewards],
        "eval": {
            "rows": base["n"],
            "data": eval_file,
            "config": eval_config,
            "samples_per_row": k,
            "temperature": temperature if temperature is not None else (0.0 if k == 1 else 1.0),
            "max_new_tokens": cfg.eval.max_new_tokens or cfg.grpo.max_new_tokens,
        },
        "train": {
            "sizes": sizes,
            "source": cfg.data.train,
            "pool_rows": pool_size,
            "seed": cfg.seed,
            "sft_targets": implied_completion_fn(cfg) or "the rows' completion column",
        },
        "budget": budget,
        "methods": ["base", *methods],
        "results": results,
        "time": {
            "train_s": sum(r["train_time_s"] for r in results),
            "eval_s": sum(r["eval_time_s"] for r in results),
            "this_session_s": session_time_s,
        },
    }


# -- markdown -------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _ci(ci: list[float | None] | None) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'higher' / 'lower' when a's and b's 95% CIs do not overlap, else 'within the CIs'."""
    (alo, ahi), (blo, bhi) = a["accuracy_ci95"], b["accuracy_ci95"]
    if None in (alo, ahi, blo, bhi):
        return "not comparable"
    if alo > bhi:
        return "higher"
    if ahi < blo:
        return "lower"
    return "within the CIs"


def _verdicts(report: dict[str, Any]) -> list[str]:
    by = {(r["method"], r["train_size"]): r for r in report["results"]}
    base = by[("base", None)]
    lines = []
    for n in report["train"]["sizes"]:
        present = [m for m in report["methods"][1:] if (m, n) in by]
        if not present:
            continue
        top = max(by[(m, n)]["accuracy"] or 0.0 for m in present)
        best = [LABELS[m] for m in present if (by[(m, n)]["accuracy"] or 0.0) == top]
        parts = [f"highest accuracy: {' = '.join(best)} ({_pct(top)})"]
        for a, b in (("rft", "sft"), ("sft_rft", "sft"), ("sft_rft", "rft")):
            if (a, n) in by and (b, n) in by:
                ra, rb = by[(a, n)], by[(b, n)]
                parts.append(
                    f"{LABELS[a]} vs {LABELS[b]}: {_pct(ra['accuracy'])} vs {_pct(rb['accuracy'])}, "
                    f"{verdict(ra, rb)}"
                )
        for m in present:
            parts.append(f"{LABELS[m]} vs base: {verdict(by[(m, n)], base)}")
        lines.append(f"- **{n} rows**: " + "; ".join(parts) + ".")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    names = report["reward_names"]
    b, ev, tr = report["budget"], report["eval"], report["train"]
    out = ["# RFT vs SFT: " + (report["model"] or ""), ""]
    if report.get("command"):
        out += ["Produced by:", "", "```", report["command"], "```", ""]
    out += [
        f"- Model: `{report['model']}` ({report['dtype']}), LoRA r={report['lora']['r']}, "
        f"alpha={report['lora']['alpha']}.",
        f"- Held-out: the same {ev['rows']} rows (`{ev['data']}`) for every model; "
        f"{ev['samples_per_row']} sample(s) per row at temperature {ev['temperature']}, "
        f"at most {ev['max_new_tokens']} new tokens. Accuracy = mean of `{report['success_reward']}`.",
        f"- Training rows: for each size N, N rows drawn with seed {tr['seed']} from the "
        f"{tr['pool_rows']} rows of `{tr['source']}` (a larger N contains the smaller draws). "
        f"SFT targets: {tr['sft_targets']}.",
        "- Brackets: 95% percentile-bootstrap confidence intervals over the held-out samples.",
        "",
        "## Compute budget",
        "",
        f"Every method trains on the same budget of **{b['sequences']} training sequences** "
        "(completions that receive a gradient) at every size:",
        "",
        "| method | training | sequences |",
        "|---|---|---|",
    ]
    recipes = {
        "sft": f"SFT: {b['sft_steps']} steps x {b['sft_per_step']} demonstrations",
        "rft": f"GRPO: {b['rft_steps']} steps x {b['grpo_per_step']} sampled completions",
        "sft_rft": f"SFT {b['sft_rft_sft_steps']} steps x {b['sft_per_step']}, then GRPO "
        f"{b['sft_rft_rft_steps']} steps x {b['grpo_per_step']}",
    }
    for m in report["methods"][1:]:
        out.append(f"| {LABELS[m]} | {recipes[m]} | {b.get(m, '')} |")
    out += [
        "",
        "An SFT step only scores given demonstrations, while a GRPO step first samples its completions, "
        "so equal sequences are not equal wall time: the measured training time of each cell is in the "
        "table below (training steps and checkpoints only; loading and evaluation excluded).",
        "",
        "## Results",
        "",
        "![accuracy by training size](accuracy.png)",
        "",
        "| train rows | method | accuracy | " + " | ".join(f"{n} (mean)" for n in names) + " | train time |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for r in report["results"]:
        rewards = " | ".join(_num(r["rewards"][n]["mean"]) + _ci_num(r["rewards"][n]["ci95"]) for n in names)
        size = "-" if r["train_size"] is None else str(r["train_size"])
        train = "-" if r["method"] == "base" else _minutes(r["train_time_s"])
        out.append(
            f"| {size} | {LABELS[r['method']]} | {_pct(r['accuracy'])}{_ci(r['accuracy_ci95'])} | "
            f"{rewards} | {train} |"
        )
    out += ["", "## What it shows", "", *_verdicts(report), ""]
    out += [
        "'higher'/'lower' means the two 95% CIs do not overlap; 'within the CIs' means this "
        "evaluation cannot tell the two apart.",
        "",
        "## Reproduce one number",
        "",
        "Each cell's `eval_command` in report.json re-evaluates its adapter with `openrft eval`, e.g.:",
        "",
        "```",
        next((r["eval_command"] for r in report["results"] if r["method"] != "base"), ""),
        "```",
        "",
        f"Total training time {_minutes(report['time']['train_s'])}, evaluation "
        f"{_minutes(report['time']['eval_s'])}.",
        "",
    ]
    return "\n".join(out)


def _ci_num(ci: list[float | None]) -> str:
    return "" if not ci or ci[0] is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


# -- plot -----------------------------------------------------------------------------------------


def plot_accuracy(report: dict[str, Any], path: Path) -> None:
    """Accuracy by training size, one line per method with 95% CI error bars; the base model
    is a dashed line with its CI as a band. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["train"]["sizes"]
    by = {(r["method"], r["train_size"]): r for r in report["results"]}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    log = len(sizes) > 1 and max(sizes) / min(sizes) >= 4
    base = by[("base", None)]
    lo, hi = (v if v is not None else math.nan for v in base["accuracy_ci95"])
    ax.axhline(100 * (base["accuracy"] or 0.0), color="gray", linestyle="--", label=LABELS["base"])
    ax.axhspan(100 * lo, 100 * hi, color="gray", alpha=0.15)
    methods = report["methods"][1:]
    for j, m in enumerate(methods):
        pts = [(n, by[(m, n)]) for n in sizes if (m, n) in by]
        if not pts:
            continue
        shift = (j - (len(methods) - 1) / 2) * 0.04  # side by side, so error bars do not hide each other
        xs = [n * (1 + shift) if log else n + shift * max(sizes) for n, _ in pts]
        ys = [100 * (r["accuracy"] or 0.0) for _, r in pts]
        err_lo = [y - 100 * (r["accuracy_ci95"][0] or 0.0) for y, (_, r) in zip(ys, pts, strict=True)]
        err_hi = [100 * (r["accuracy_ci95"][1] or 0.0) - y for y, (_, r) in zip(ys, pts, strict=True)]
        ax.errorbar(xs, ys, yerr=[err_lo, err_hi], marker="o", capsize=4, label=LABELS[m])
    if log:
        ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training rows")
    ax.set_ylabel(f"accuracy (% {report['success_reward']}), 95% CI")
    ax.set_title(f"{report['model']}: {report['eval']['rows']} held-out rows", fontsize=10)
    highs = [100 * (r["accuracy_ci95"][1] or 0.0) for r in report["results"] if r["accuracy_ci95"]]
    ax.set_ylim(0, max(10.0, 1.15 * max(highs, default=0.0)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)
