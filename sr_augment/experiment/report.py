"""Outputs of `sr-augment experiment`: results.json (every prediction), report.md, study.png (accuracy
per arm and differences from the baseline, with 95% CIs), curves.png (train and test curves per arm),
samples.png (one image in each representation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sr_augment.grid import comparison_grid
from sr_augment.images import resize


def _ci(value: dict, digits: int = 3, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value['estimate']:{sign}.{digits}f} [{value['low']:{sign}.{digits}f}, {value['high']:{sign}.{digits}f}]"


def report_markdown(results: dict) -> str:
    config, data, summary = results["config"], results["data"], results["summary"]
    protocol = config["protocol"]
    engines = ", ".join(f"`{e['label']}`" for e in config["engines"])
    lines = [
        f"# sr-augment experiment: {config['data']}",
        "",
        f"{data['images']} images, {len(data['classes'])} classes ({data['layout']}; per class {data['counts']}). "
        f"Repeated stratified {config['folds']}-fold cross-validation, {config['repeats']} repeat(s): every image "
        f"is tested once per repeat, every arm trains and tests on the same folds with the same seeds. "
        f"Inputs {config['image_size']} px; LR = {config['lr_size']} px (x{config['lr_factor']} down, antialiased "
        f"bicubic), shown to the CNN upscaled back to {config['image_size']} px. Engines: {engines}; SRAugment: "
        f"resynthesize, variants {config['variants']} (a deterministic engine: 1), p = {config['p']}.",
        "",
        *[line for warning in results.get("warnings", []) for line in (f"**Warning: {warning}**", "")],
        "![accuracy per arm and differences from the baseline](study.png)",
        "",
        "## Accuracy and macro-F1 per arm",
        "",
        "| arm | accuracy [95% CI] | macro-F1 [95% CI] | accuracy per repeat |",
        "|---|---|---|---|",
    ]
    for arm, s in summary.items():
        lines.append(f"| {arm} | {_ci(s['accuracy'])} | {_ci(s['macro_f1'])} | "
                     + ", ".join(f"{a:.3f}" for a in s["accuracy_per_repeat"]) + " |")
    lines += ["", "Predictions pooled over repeats; 95% percentile bootstrap intervals resampling images "
              "(2,000 resamples, seeded).", "",
              "## Differences between arms (A - B, accuracy)", "",
              "| A | B | difference [95% CI] | McNemar per repeat: p (b/c) | combined p | Holm p |",
              "|---|---|---|---|---|---|"]
    for pair in results["pairs"]:
        m = pair["mcnemar"]
        lines.append(f"| {pair['a']} | {pair['b']} | {_ci(pair['difference'], signed=True)} | "
                     + ", ".join(f"{t['p']:.3g} ({t['b']}/{t['c']})" for t in m["per_repeat"])
                     + f" | {m['combined']['p']:.3g} | {m['p_holm']:.3g} |")
    significant = [f"{p['a']} vs {p['b']}" for p in results["pairs"] if p["mcnemar"]["p_holm"] < 0.05]
    lines += ["", "The difference's interval is a paired bootstrap (the same resampled images in both arms). "
              "McNemar per repeat is the exact test (b = A right and B wrong, c = the reverse); combined is the "
              "chi-square test with continuity correction on the counts summed over repeats (repeats reuse the "
              "images, so it is optimistic). "
              f"Multiple comparisons: {len(results['pairs'])} pairs; Holm's step-down correction of the combined p "
              "controls the family-wise error at 5%. Significant after Holm: "
              + (", ".join(significant) if significant else "none") + ". The intervals are not adjusted.", "",
              "## Per-class accuracy", "",
              "Accuracy within each class (pooled predictions); the last column is the largest share of "
              "predictions any class receives (its share of labels is "
              f"{max(v['label_share'] for v in next(iter(summary.values()))['per_class'].values()):.2f} at most): "
              "far above it, a class swallows predictions.", "",
              "| arm | " + " | ".join(data["classes"]) + " | max predicted share |",
              "|---|" + "---|" * (len(data["classes"]) + 1)]
    for arm, s in summary.items():
        per = s["per_class"]
        lines.append(f"| {arm} | " + " | ".join(f"{per[c]['accuracy']:.2f}" for c in data["classes"])
                     + f" | {max(v['predicted_share'] for v in per.values()):.2f} |")
    last = {arm: [r for r in results["runs"] if r["arm"] == arm] for arm in results["arms"]}
    lines += ["", "## Training protocol", "",
              f"{protocol['model']}, width {protocol['width']}; {protocol['optimizer']} (lr {protocol['lr']}, "
              f"weight decay {protocol['weight_decay']}), {protocol['schedule']}, label smoothing "
              f"{protocol['label_smoothing']}, batch {protocol['batch_size']}, {protocol['epochs']} epochs, "
              f"{protocol['class_weights']} class weights; augmentation in every arm: {protocol['augmentation']}; "
              f"{config['framework']}. Hyperparameters: {protocol['chosen']}. The last epoch's model predicts.", "",
              "![train and test accuracy per epoch, mean over folds and repeats](curves.png)", "",
              "| arm | final train loss | final train accuracy (augmented batches) | final test accuracy | "
              "seconds per training |", "|---|---|---|---|---|"]
    for arm, runs in last.items():
        lines.append(f"| {arm} | {np.mean([r['curves']['train_loss'][-1] for r in runs]):.3f} | "
                     f"{np.mean([r['curves']['train_accuracy'][-1] for r in runs]):.3f} | "
                     f"{np.mean([r['test_accuracy'] for r in runs]):.3f} | {np.mean([r['seconds'] for r in runs]):.0f} |")
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines += ["", f"Seeds (repeat x 100 + fold, plus 1000 x --seed {config['seed']}): {seeds}; each sets the initial "
              "weights, the shuffling and the augmentation draws of every arm of its fold. The folds are drawn "
              f"with seed {config['seed']} (results.json keeps every fold's test images and every prediction).", "",
              "SR generated in this run: " + ", ".join(f"{k} {v}" for k, v in results["sr_generated"].items())
              + " (0 = everything came from the cache).", "",
              f"Trainings reused from an earlier run of this study (`trainings/`): "
              f"{results.get('trainings_resumed', 0)} of {len(results['runs'])}.", "",
              f"Wall time: {results['wall_seconds']:.0f} s (estimate at start, training only: "
              f"{results['estimate_seconds']:.0f} s).", "", "![one image in each representation](samples.png)"]
    if data["skipped"]:
        lines += ["", "Skipped files:", ""] + [f"- {reason}" for reason in data["skipped"]]
    return "\n".join(lines) + "\n"


def study_png(results: dict, path: Path) -> None:
    """Left: accuracy per arm with 95% CIs; right: each arm minus the baseline with 95% CIs."""
    from matplotlib.figure import Figure  # no pyplot state: the caller's backend is left alone

    summary, baseline = results["summary"], results["config"]["baseline"]
    arms = list(summary)
    others = [a for a in arms if a != baseline]
    diffs = {}
    for pair in results["pairs"]:
        if baseline in (pair["a"], pair["b"]):
            sign = 1 if pair["a"] != baseline else -1
            d = pair["difference"]
            values = sorted((sign * d["low"], sign * d["high"]))
            diffs[pair["a"] if sign == 1 else pair["b"]] = (sign * d["estimate"], *values)
    fig = Figure(figsize=(11, 1.0 + 0.45 * len(arms)), dpi=120)
    left, right = fig.subplots(1, 2, sharey=False)
    y = np.arange(len(arms))[::-1]
    acc = [summary[a]["accuracy"] for a in arms]
    left.errorbar([a["estimate"] for a in acc], y, xerr=[[a["estimate"] - a["low"] for a in acc],
                                                       [a["high"] - a["estimate"] for a in acc]],
                  fmt="o", capsize=4, color="tab:blue")
    left.set_yticks(y, arms)
    left.set_xlabel("accuracy (95% CI; dotted line: chance)")  # no legend box to hide a point
    left.axvline(1 / len(results["data"]["classes"]), color="grey", ls=":", lw=1)
    yd = np.arange(len(others))[::-1]
    d = [diffs[a] for a in others]
    right.errorbar([v[0] for v in d], yd, xerr=[[v[0] - v[1] for v in d], [v[2] - v[0] for v in d]], fmt="o",
                   capsize=4, color="tab:red")
    right.axvline(0, color="black", lw=1)
    right.set_yticks(yd, others)
    right.set_xlabel(f"accuracy minus {baseline} (paired, 95% CI)")
    fig.suptitle(f"{results['data']['images']} images, {results['config']['folds']}-fold x "
                 f"{results['config']['repeats']} repeats", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # long arm names: keep every label inside the picture


def curves_png(results: dict, path: Path) -> None:
    """Train and test accuracy per epoch, mean over the arm's trainings, one colour per arm."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=120)
    acc_ax, loss_ax = fig.subplots(1, 2)
    for i, arm in enumerate(results["arms"]):
        runs = [r["curves"] for r in results["runs"] if r["arm"] == arm]
        epochs = np.arange(1, len(runs[0]["train_accuracy"]) + 1)
        colour = f"C{i % 10}"
        acc_ax.plot(epochs, np.mean([c["train_accuracy"] for c in runs], 0), color=colour, ls="--")
        acc_ax.plot(epochs, np.mean([c["test_accuracy"] for c in runs], 0), color=colour, label=arm)
        loss_ax.plot(epochs, np.mean([c["train_loss"] for c in runs], 0), color=colour, label=arm)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (solid: test fold, dashed: train)")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss (label-smoothed)")
    loss_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def write_outputs(results: dict, arm_images: dict, out: Path, samples: int = 4) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("results.json", "report.md", "study.png", "curves.png", "samples.png")}
    paths["results.json"].write_text(json.dumps(results, indent=1))
    paths["report.md"].write_text(report_markdown(results))
    study_png(results, paths["study.png"])
    curves_png(results, paths["curves.png"])
    shown = [arm for arm in arm_images if not arm.startswith("HR+SRAugment")]
    tile = max(arm_images["HR"].shape[1], 128)
    count = min(samples, len(arm_images["HR"]))
    picks = np.linspace(0, len(arm_images["HR"]) - 1, count).round().astype(int)
    rows = [[(arm, resize(arm_images[arm][i], (tile, tile))) for arm in shown] for i in picks]
    comparison_grid(rows).save(paths["samples.png"])
    return paths
