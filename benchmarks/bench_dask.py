"""Featurize 20M transactions with the Dask engine (a LocalCluster of two single-threaded
worker processes) and with the local engine, on the same data: wall time, the largest peak
resident set among the processes, their ratio, and whether the outputs are byte-identical.

This machine has two cores, so the cluster cannot be faster than the local engine here (which
already uses both cores); the figure that carries to a real cluster is the throughput of one
worker, from which README projects a 1-billion-transaction day.
"""
from __future__ import annotations

import filecmp
import shutil
import tempfile
from pathlib import Path

from common import make_project, measure, report, run, write_params

CUSTOMERS = 57_000   # about 20M transactions over the default 183 days
WORKERS = 2


def main() -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "large")
        write_params(project, simulate={"n_customers": CUSTOMERS})
        run(["dvc", "repro", "ingest"], project)
        import pyarrow.parquet as pq
        rows = pq.ParquetFile(project / "data/interim/transactions.parquet").metadata.num_rows
        figures = {"rows": rows}
        out = project / "data/processed/features.parquet"
        for engine in ("local", "dask"):
            write_params(project, features={"engine": engine})
            wall, rss = measure(["aif", "featurize"], project)
            figures.update({f"{engine}_wall_s": round(wall, 1),
                            f"{engine}_rows_per_s": round(rows / wall),
                            f"{engine}_largest_process_peak_rss_mb": round(rss)})
            if engine == "local":
                shutil.move(out, Path(tmp) / "local")
        parts = sorted(p.name for p in (Path(tmp) / "local").iterdir())
        same = parts == sorted(p.name for p in out.iterdir()) and all(
            filecmp.cmp(Path(tmp) / "local" / p, out / p, shallow=False) for p in parts)
    figures.update({
        "dask_over_local_wall": round(figures["dask_wall_s"] / figures["local_wall_s"], 2),
        "dask_rows_per_s_per_worker": round(figures["dask_rows_per_s"] / WORKERS),
        "outputs_byte_identical": same, "output_parts": len(parts),
        "target": "equal outputs; figures for the README projection", "meets_target": same})
    print(f"dask: {rows:,} rows, {WORKERS} workers (python benchmarks/run.py dask)")
    report("dask", figures)
    return same


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
