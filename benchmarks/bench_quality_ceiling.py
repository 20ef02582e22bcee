"""How far the model is from what the features could reach, on the four prequential test
weeks of `bench_quality.py`'s projects (run it first with `AIF_BENCH_QUALITY_DIR=dir`, then
this with the same variable): each fold refitted as the evaluate stage does, then AP and card
precision@100 of

- the model;
- the model with every fraud a feature could see ranked first: all of them but the frauds at
  a terminal compromised within the label delay (its first terminal fraud of the last
  `terminal_compromise_days` is newer than t - delay, so no label of it is known yet);
- every fraud ranked first (the metric's own ceiling: fraudulent cards a day over k).

The simulator's `tx_fraud_scenario` says which fraud is which; no model or feature reads it.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from common import report

HEADLINE = ("average_precision", "card_precision_at_k")
TERMINAL_FRAUD = 2   # the simulator's scenario code for a compromised terminal


def unseen_terminal_frauds(rows: pd.DataFrame, history: pd.DataFrame, delay_days: int,
                           compromise_days: int) -> np.ndarray:
    """True for rows that are terminal frauds whose terminal's first terminal fraud in the
    `compromise_days` before them came less than `delay_days` before them."""
    frauds = history[history.tx_fraud_scenario == TERMINAL_FRAUD][["terminal_id", "tx_datetime"]]
    frauds = frauds.sort_values(["terminal_id", "tx_datetime"])
    out = np.zeros(len(rows), bool)
    candidates = np.flatnonzero(rows.tx_fraud_scenario.to_numpy() == TERMINAL_FRAUD)
    by_terminal = {t: g.tx_datetime.to_numpy() for t, g in frauds.groupby("terminal_id")}
    times = rows.tx_datetime.to_numpy()
    terminals = rows.terminal_id.to_numpy()
    span, delay = np.timedelta64(compromise_days, "D"), np.timedelta64(delay_days, "D")
    for i in candidates:   # a few hundred rows a fold
        earlier = by_terminal[terminals[i]]
        first = earlier[np.searchsorted(earlier, times[i] - span, "left")]
        out[i] = first > times[i] - delay
    return out


def fold_ceilings(project: Path) -> dict[str, dict[str, float]]:
    os.chdir(project)
    from aif.config.params import load_params
    from aif.metrics import score_metrics
    from aif.modelling.evaluate import test_folds
    from aif.modelling.model import Model, fit_booster
    from aif.modelling.split import load_periods, split_frame, test_protocol

    params = load_params(project / "params.yaml")
    model = Model.load(project / "models")
    folds = test_folds(test_protocol(params.split, params.label_delay_days),
                       params.evaluate.test_folds, np.datetime64("2100-01-01"))
    frame = load_periods(project / "data/processed/features.parquet", folds,
                         [*model.features, "tx_fraud_scenario"])
    history = frame[frame.tx_fraud == 1]
    fraud = params.simulate.fraud
    found: dict[str, list[dict]] = {"model": [], "seen frauds first": [], "all frauds first": []}
    for fold in folds:   # the default data runs past the last test week
        train, test = split_frame(frame, fold)
        booster = fit_booster(model.matrix(train), train.tx_fraud.to_numpy(),
                              model.info["params"], model.info["num_boost_round"])
        score = booster.predict(model.matrix(test))
        y = test.tx_fraud.to_numpy() == 1
        seen = y & ~unseen_terminal_frauds(test, history, params.label_delay_days,
                                           fraud.terminal_compromise_days)
        for name, first in (("model", None), ("seen frauds first", seen),
                            ("all frauds first", y)):
            ranked = score if first is None else score + first   # scores are below 1
            m = score_metrics(test, ranked, params.evaluate)
            found[name].append({k: m[k] for k in HEADLINE}
                               | {"unseen_share": float(1 - seen.sum() / y.sum())})
    return {name: {k: statistics.mean(f[k] for f in per_fold) for k in per_fold[0]}
            for name, per_fold in found.items()}


def main() -> bool:
    root = os.environ.get("AIF_BENCH_QUALITY_DIR")
    if not root:
        sys.exit("set AIF_BENCH_QUALITY_DIR to the folder bench_quality.py kept its projects in")
    projects = sorted(Path(root).glob("pipeline-seed-[0-9]"))
    per_seed = {p.name: fold_ceilings(p) for p in projects}
    for name, figures in per_seed.items():
        print(name, json.dumps({k: {m: round(v, 4) for m, v in f.items()}
                                for k, f in figures.items()}))
    names = list(next(iter(per_seed.values())))
    report("quality_ceiling", {
        "protocol": "the four prequential test weeks, each fold refitted as evaluate does",
        "seeds": [p.name for p in projects],
        **{name: {k: {"mean": round(statistics.mean(s[name][k] for s in per_seed.values()), 4),
                      "per_seed": [round(s[name][k], 4) for s in per_seed.values()]}
                  for k in (*HEADLINE, "unseen_share")} for name in names}})
    return True


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
