"""Shared fixtures: small real projects that run the real CLI and real DVC."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A population small enough for seconds-long runs, large enough for every fraud scenario.
SMALL_SIMULATION = {"n_customers": 300, "n_terminals": 600, "n_days": 40, "seed": 7}
# A small modelling setup: 100 days, so two folds and a test week fit after 37 days of history.
SMALL_MODELLING = {
    "simulate": {**SMALL_SIMULATION, "n_days": 100},
    "split": {"train_start": "2018-06-10", "train_days": 7, "test_days": 7},
    "tune": {"n_folds": 2, "n_trials": 3, "max_boost_rounds": 60, "early_stopping_rounds": 10},
    "evaluate": {"k": 10, "alert_budget": 20, "shap_sample": 500},
    "monitor": {"reference": "2018-06-24:2018-07-01", "current": "2018-07-01:2018-07-10"},
}


def wait_until_up(get, proc: subprocess.Popen, log: Path, what: str, timeout: float = 90,
                  pause: float = 0.2) -> None:
    """Call `get()` (an HTTP GET) until it answers 200; fail with the end of `log` if the
    process `proc` exits first, or after `timeout` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if get().status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(pause)


def run_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_AUTHOR_NAME="aif tests", GIT_AUTHOR_EMAIL="tests@aif.invalid",
               GIT_COMMITTER_NAME="aif tests", GIT_COMMITTER_EMAIL="tests@aif.invalid",
               DVC_NO_ANALYTICS="1", WANDB_MODE="disabled", WANDB_SILENT="true")
    env.pop("AIF_ROOT", None)
    env.update(extra)
    return env


def run(cmd: list[str] | str, cwd: Path, check: bool = True, **env: str
        ) -> subprocess.CompletedProcess:
    "Run a command the way a user would, in `cwd`, capturing its output."
    result = subprocess.run(cmd, cwd=cwd, env=run_env(**env), capture_output=True, text=True,
                            shell=isinstance(cmd, str))
    if check and result.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def write_params(project: Path, **sections) -> dict:
    "Update sections of the project's params.yaml (nested dicts are merged)."
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(params, sections)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def make_project(dest: Path) -> Path:
    "A copy of the workspace (pipeline, params, package sources) as its own git + DVC repo."
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "aif", dest / "aif", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "nbs" / "monitoring", dest / "nbs" / "monitoring")
    (dest / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy(REPO / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "workspace"], dest)
    return dest


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    project = make_project(tmp_path / "project")
    write_params(project, simulate=SMALL_SIMULATION)
    return project


@pytest.fixture
def modelling_project(tmp_path: Path) -> Path:
    project = make_project(tmp_path / "project")
    write_params(project, **SMALL_MODELLING)
    return project


def build_trained_project(dest: Path) -> Path:
    "One full `dvc repro` on the small modelling config (W&B offline), committed."
    project = make_project(dest)
    write_params(project, **SMALL_MODELLING)
    run(["dvc", "repro"], project, WANDB_MODE="offline", WANDB_API_KEY="not-a-real-key-9f3b2c")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "pipeline"], project)
    return project


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """A trained small project for read-mostly tests, each test worker's own.

    Under pytest-xdist the first worker to ask builds it once for the run and the others wait,
    then each takes a copy: two builds side by side on two cores took twice as long each."""
    own = tmp_path_factory.mktemp("trained") / "project"
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build_trained_project(own)
    run_dir = tmp_path_factory.getbasetemp().parent   # this run's, shared by its workers
    built = run_dir / "trained-project"
    with open(run_dir / "trained-project.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file closes
        if not (run_dir / "trained-project.done").exists():
            shutil.rmtree(built, ignore_errors=True)   # a build that failed half way
            build_trained_project(built)
            (run_dir / "trained-project.done").touch()
    shutil.copytree(built, own, symlinks=True)
    return own
