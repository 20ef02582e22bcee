"""Train on the default data with LightGBM's Dask interface (a LocalCluster of two
single-threaded worker processes) and with the local engine: test-window metrics of each
model, wall time and peak memory of `aif train`.

The Dask fit is run three times: its model depends on which rows land on which LightGBM rank,
and that order varies between runs (nbs/34_train_dask), so the spread is part of the result.

Target: every Dask model's test average precision within 0.01 of the local model's.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import make_project, measure, report, run, write_params

DASK_RUNS = 3
METRICS = ("average_precision", "roc_auc", "card_precision_at_k")


def train_and_evaluate(project: Path, engine: str) -> dict:
    write_params(project, train={"engine": engine})
    wall, rss = measure(["aif", "train"], project)
    run(["aif", "evaluate"], project, WANDB_MODE="disabled")
    model = json.loads((project / "reports/metrics.json").read_text())["model"]
    return {"train_wall_s": round(wall, 1), "train_peak_rss_mb": round(rss),
            **{m: round(model[m], 4) for m in METRICS}}


def main() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "project")
        run(["dvc", "repro", "tune"], project, WANDB_MODE="disabled")
        local = train_and_evaluate(project, "local")
        dask = [train_and_evaluate(project, "dask") for _ in range(DASK_RUNS)]
    gaps = [abs(d["average_precision"] - local["average_precision"]) for d in dask]
    ok = max(gaps) <= 0.01
    print(f"dask_train: default data, local vs {DASK_RUNS} Dask fits on 2 workers "
          "(python benchmarks/run.py dask_train)")
    report("dask_train", {
        "local": local, "dask_runs": dask,
        "largest_ap_gap": round(max(gaps), 4),
        "target": "every Dask model's test AP within 0.01 of the local model's",
        "meets_target": ok})
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
