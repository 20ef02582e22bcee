"""The Dask engine on a real LocalCluster (two worker processes) gives the local engine's
output byte for byte, across several output parts and kernel partitions."""
from __future__ import annotations

from pathlib import Path

from conftest import SMALL_SIMULATION, make_project, run, write_params

from aif.config import FeaturesParams
from aif.features.registry import build_registry

ROWS_PER_FILE = 5_000   # several output parts from a small stream


def test_dask_engine_writes_the_local_bytes(tmp_path: Path):
    project = make_project(tmp_path / "project")
    write_params(project, simulate=SMALL_SIMULATION)
    run(["dvc", "repro", "ingest"], project)
    source = project / "data/interim/transactions.parquet"
    from aif.features.dask_engine import featurize_dask
    from aif.features.engine import compute_features, features_table, read_columns, write_features

    params = FeaturesParams(groups=("baseline", "amount_profile", "velocity", "terminal_activity",
                                    "terminal_history", "card_history", "novelty"),
                            rows_per_partition=4_000)
    specs = build_registry(params, 7)
    columns, labels = read_columns(source)
    local = tmp_path / "local"
    write_features(features_table(columns, labels, compute_features(columns, specs, params)),
                   local, rows_per_file=ROWS_PER_FILE)
    distributed = tmp_path / "dask"
    written = featurize_dask(source, specs, params, distributed, rows_per_file=ROWS_PER_FILE)
    assert written == len(columns["transaction_id"])
    parts = sorted(p.name for p in local.iterdir())
    assert len(parts) >= 4 and parts == sorted(p.name for p in distributed.iterdir())
    for name in parts:
        assert (local / name).read_bytes() == (distributed / name).read_bytes(), name


def test_dask_engine_from_params(tmp_path: Path):
    "features.engine: dask through the CLI and DVC, same output as the local engine."
    project = make_project(tmp_path / "project")
    write_params(project, simulate=SMALL_SIMULATION)
    run(["dvc", "repro", "featurize"], project)
    local = (project / "data/processed/features.parquet/part-00000.parquet").read_bytes()
    write_params(project, features={"engine": "dask"})
    result = run(["dvc", "repro", "featurize"], project)
    assert "engine dask" in result.stdout + result.stderr
    assert (project / "data/processed/features.parquet/part-00000.parquet").read_bytes() == local
