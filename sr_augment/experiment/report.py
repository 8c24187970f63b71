"""Outputs of `sr-augment experiment`: results.json, report.md, confusion-matrix PNGs, samples.png."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sr_augment.grid import comparison_grid
from sr_augment.images import resize


def report_markdown(results: dict) -> str:
    config, data = results["config"], results["data"]
    lines = [
        f"# sr-augment experiment: {config['data']}",
        "",
        f"Engine `{config['engine']}`, LR factor {config['lr_factor']}, {config['image_size']} px inputs, "
        f"{config['framework']}, {config['epochs']} epochs, {config['seeds']} seeds; {data['train']} training and "
        f"{data['test']} test images, classes {', '.join(data['classes'])} (train counts {data['train_counts']}, "
        f"class weights {[round(w, 3) for w in data['class_weights']]}); {data.get('layout', config.get('layout', ''))}.",
        "",
        "| arm | accuracy | precision (macro) | recall (macro) | F1 (macro) |",
        "|---|---|---|---|---|",
    ]
    for arm, r in results["arms"].items():
        cells = [f"{r['mean'][m]:.3f} ± {r['std'][m]:.3f}" for m in ("accuracy", "precision", "recall", "f1")]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample standard deviation over seeds.", "",
              "McNemar's exact test on paired test predictions (b = first right and second wrong, c = the reverse):",
              "", "| pair | " + " | ".join(f"seed {s['seed']}: p (b/c)" for s in next(iter(results["mcnemar"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(results["mcnemar"].values())))]
    for pair, tests in results["mcnemar"].items():
        lines.append(f"| {pair} | " + " | ".join(f"{t['p']:.3f} ({t['b']}/{t['c']})" for t in tests) + " |")
    significant = [pair for pair, tests in results["mcnemar"].items() if all(t["p"] < 0.05 for t in tests)]
    lines += ["", "Pairs significant at p < 0.05 in every seed: " + (", ".join(significant) if significant else "none") + ".",
              "(Uncorrected for the number of pairs; with 6 pairs, Bonferroni's threshold is p < 0.0083.)",
              "", f"Wall time: {results['wall_seconds']} s."]
    if data["skipped"]:
        lines += ["", "Skipped files:", ""] + [f"- {reason}" for reason in data["skipped"]]
    return "\n".join(lines) + "\n"


def confusion_png(confusion, classes, title: str, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot state: the caller's backend is left alone
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = Figure(figsize=(3.2 + 0.4 * len(classes), 3.0 + 0.4 * len(classes)), dpi=120)
    ax = fig.subplots()
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=classes).plot(ax=ax, colorbar=False, values_format="d")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def write_outputs(results: dict, arms: dict, out: Path, engine_name: str, samples: int = 4) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "report": out / "report.md", "samples": out / "samples.png"}
    paths["results"].write_text(json.dumps(results, indent=2))
    paths["report"].write_text(report_markdown(results))
    classes = results["data"]["classes"]
    for arm, r in results["arms"].items():
        total = np.sum([run["confusion"] for run in r["runs"]], axis=0)
        path = out / f"confusion_{arm.replace('+', '_')}.png"
        confusion_png(total, classes, f"{arm}: test predictions summed over {len(r['runs'])} seeds", path)
        paths[f"confusion {arm}"] = path
    size = arms["HR"][1].shape[1]
    tile = max(size, 128)
    rows = [[(name, resize(arms[arm][1][i], (tile, tile))) for name, arm in (("LR", "LR"), (engine_name, "SR"), ("HR", "HR"))]
            for i in range(min(samples, len(arms["HR"][1])))]
    comparison_grid(rows).save(paths["samples"])
    return paths
