"""Optuna workers in several processes sharing one study: through a journal file (no server)
and through a real PostgreSQL server; train then uses the study's best parameters."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from conftest import SMALL_MODELLING, make_project, run, run_env, write_params

WORKERS = 3
TRIALS = 9


def tune_in_parallel(project: Path, storage: str) -> optuna.Study:
    "Three `aif tune --worker` processes, then `aif tune` and `aif train`; return the study."
    write_params(project, tune={"storage": storage, "n_trials": TRIALS})
    run(["dvc", "repro", "featurize"], project)
    workers = [subprocess.Popen(["aif", "tune", "--worker", str(i)], cwd=project,
                                env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(1, WORKERS + 1)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    run(["aif", "tune"], project)
    run(["aif", "train"], project)
    best = json.loads((project / "models/best_params.json").read_text())
    from aif.modelling.tune import open_storage
    return optuna.load_study(study_name=best["study"], storage=open_storage(storage))


def check_shared_study(project: Path, study: optuna.Study) -> None:
    finished = [t for t in study.trials if t.state.is_finished()]
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)), "a trial was recorded twice"
    # the budget is shared: at most one trial in flight per other worker past it
    assert TRIALS <= len(finished) <= TRIALS + WORKERS - 1
    assert len({t.datetime_start for t in finished}) == len(finished)
    best = json.loads((project / "models/best_params.json").read_text())
    assert best["trial"] == study.best_trial.number and best["params"] == study.best_params
    model = json.loads((project / "models/model.json").read_text())
    assert model["tuned"]["trial"] == study.best_trial.number
    assert all(model["params"][k] == v for k, v in study.best_params.items())
    report = json.loads((project / "reports/tuning.json").read_text())
    assert report["n_trials"] == len(study.trials)


def test_workers_share_a_journal_file(tmp_path: Path):
    project = make_project(tmp_path / "project")
    write_params(project, **SMALL_MODELLING)
    study = tune_in_parallel(project, f"journal://{project}/models/optuna-journal.log")
    check_shared_study(project, study)


@pytest.fixture
def postgres():
    "A throwaway PostgreSQL server (Debian's package), run as the postgres user."
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not binaries:
        pytest.skip("PostgreSQL server is not installed (Debian: apt-get install postgresql; "
                    ".ci/run installs it)")
    bin_dir = binaries[-1].parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    # pytest's temporary folders are private to their owner; the server needs its own
    home = Path(tempfile.mkdtemp(prefix="aif-pg-"))
    os.chmod(home, 0o755)
    data = home / "data"
    data.mkdir()
    if as_postgres:
        shutil.chown(data, "postgres")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "aif", "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(data / "server.log"), "-o", f"-p {port} -k {data} -h 127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p",
                              str(port)], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.2)
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "aif", "optuna"], check=True, capture_output=True)
        yield f"postgresql://aif@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_workers_share_a_postgresql_study(tmp_path: Path, postgres: str):
    project = make_project(tmp_path / "project")
    write_params(project, **SMALL_MODELLING)
    study = tune_in_parallel(project, postgres)
    check_shared_study(project, study)
