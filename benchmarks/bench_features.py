"""Featurize speed and memory, on the default data and on 20M transactions.

Targets (issue 3): default data, `dvc repro -f -s featurize` <= 4 s wall and the `aif featurize`
process <= 3 s, <= 1.5 GB peak RSS; 20M transactions <= 40 s and <= 8 GB.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import make_project, measure, report, run, write_params

DEFAULT = {"dvc_s": 4.0, "process_s": 3.0, "rss_mb": 1536}
LARGE = {"rows": 20_000_000, "customers": 57_000, "wall_s": 40.0, "rss_mb": 8192}


def median_runs(cmd: list[str], project: Path, repeats: int = 3) -> tuple[float, float, list]:
    runs = [measure(cmd, project) for _ in range(repeats)]
    walls = [w for w, _ in runs]
    return statistics.median(walls), max(r for _, r in runs), [round(w, 2) for w in walls]


def rows_of(project: Path) -> int:
    import pyarrow.parquet as pq
    return pq.ParquetFile(project / "data/interim/transactions.parquet").metadata.num_rows


def default_size(tmp: Path) -> bool:
    project = make_project(tmp / "default")
    run(["dvc", "repro", "featurize"], project)
    rows = rows_of(project)
    dvc_wall, dvc_rss, dvc_runs = median_runs(["dvc", "repro", "-f", "-s", "featurize"], project)
    wall, rss, runs = median_runs(["aif", "featurize"], project)
    ok = dvc_wall <= DEFAULT["dvc_s"] and wall <= DEFAULT["process_s"] and rss <= DEFAULT["rss_mb"]
    print(f"featurize, default data ({rows:,} rows)")
    report("features_default", {
        "rows": rows, "dvc_repro_wall_s_median": round(dvc_wall, 2), "dvc_repro_runs": dvc_runs,
        "aif_featurize_wall_s_median": round(wall, 2), "aif_featurize_runs": runs,
        "rows_per_s": round(rows / wall), "peak_rss_mb": round(max(rss, dvc_rss)),
        "target": "dvc <= 4 s, process <= 3 s, <= 1536 MB", "meets_target": ok})
    return ok


def large_size(tmp: Path) -> bool:
    project = make_project(tmp / "large")
    write_params(project, simulate={"n_customers": LARGE["customers"]})
    run(["dvc", "repro", "ingest"], project)
    rows = rows_of(project)
    figures, ok = {"rows": rows}, True
    for mode, limit in (("in_memory", rows + 1), ("out_of_core", rows // 2)):
        write_params(project, features={"max_rows_in_memory": limit})
        wall, rss = measure(["aif", "featurize"], project)
        figures.update({f"{mode}_wall_s": round(wall, 1), f"{mode}_rows_per_s": round(rows / wall),
                        f"{mode}_peak_rss_mb": round(rss)})
        ok &= wall <= LARGE["wall_s"] and rss <= LARGE["rss_mb"]
    hash_keys(project)   # as an export's card numbers and merchant names give them
    for mode, limit in (("hashed_keys_in_memory", rows + 1),
                        ("hashed_keys_out_of_core", rows // 2)):
        write_params(project, features={"max_rows_in_memory": limit})
        wall, rss = measure(["aif", "featurize"], project)
        figures.update({f"{mode}_wall_s": round(wall, 1), f"{mode}_peak_rss_mb": round(rss)})
        ok &= wall <= LARGE["wall_s"] and rss <= LARGE["rss_mb"]
    print(f"featurize, {rows:,} rows (simulate.n_customers={LARGE['customers']})")
    report("features_20m", {**figures, "target": "<= 40 s, <= 8192 MB (each mode)",
                            "meets_target": ok})
    return ok


def hash_keys(project: Path) -> None:
    "Replace the interim card and terminal ids by hashed keys (aif.keys): spread over 2^63."
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aif.keys import keys_of_text

    path = project / "data/interim/transactions.parquet"
    table = pq.read_table(path)
    for name, prefix in (("customer_id", "card-"), ("terminal_id", "merchant-")):
        ids = table.column(name).to_numpy()
        distinct = np.unique(ids)
        keys = keys_of_text(pd.Series([f"{prefix}{i}" for i in distinct]))
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(keys[np.searchsorted(distinct, ids)]))
    pq.write_table(table, path, compression="zstd")


def main() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        ok_default = default_size(Path(tmp))
        ok_large = large_size(Path(tmp))
    return ok_default and ok_large


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
