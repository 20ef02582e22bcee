"""The DVC pipeline end to end on a small config: real `dvc repro`, reruns of exactly what
changed, and a push / pull round trip through the default local remote."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, run, write_params

# The data half of the pipeline (simulate, ingest, featurize); modelling is tested on its own
# small config in test_model.py.
DATA_STAGES = ["dvc", "repro", "featurize"]


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def commit_all(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", message], project)


def test_the_committed_lock_is_the_one_the_committed_code_and_params_give():
    """`dvc status` finds nothing changed in what git holds (code, params, dvc.yaml's
    commands, outputs kept in git): a lock left behind by a code change would make a fresh
    clone's `make repro` rerun stages and leave `git status` dirty. Data DVC keeps outside
    git may be absent (a fresh clone: deleted, not in cache)."""
    in_git = set(run(["git", "ls-files"], REPO).stdout.splitlines())
    status = json.loads(run(["dvc", "status", "--json"], REPO).stdout or "{}")
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):   # "changed command"
                stale.append(f"{stage}: {change}")
                continue
            stale += [f"{stage}: {kind} {path}: {what}" for kind, files in change.items()
                      for path, what in files.items()
                      if path in in_git or what not in ("deleted", "not in cache")]
    assert not stale, f"dvc.lock is stale (run `make repro`, commit dvc.lock): {stale}"


def test_repro_runs_then_does_nothing_then_reruns_what_changed(small_project: Path):
    first = run(DATA_STAGES, small_project)
    assert ran_stages(first.stdout) == ["simulate", "ingest", "featurize"]
    transactions = pd.read_parquet(small_project / "data/interim/transactions.parquet")
    report = json.loads((small_project / "reports/ingest.json").read_text())
    assert report["rows_read"] == report["rows_written"] == len(transactions) > 10_000
    assert (small_project / "dvc.lock").exists()

    second = run(DATA_STAGES, small_project)
    assert ran_stages(second.stdout) == []
    assert "up to date" in second.stdout

    write_params(small_project, simulate={"n_days": 35})
    third = run(DATA_STAGES, small_project)
    assert ran_stages(third.stdout) == ["simulate", "ingest", "featurize"]

    # Same validated rows: ingest reruns, its output is unchanged, so featurize does not.
    write_params(small_project, ingest={"max_invalid_fraction": 0.01})
    fourth = run(DATA_STAGES, small_project)
    assert ran_stages(fourth.stdout) == ["ingest"]

    write_params(small_project, features={"groups": ["baseline", "velocity"]})
    fifth = run(DATA_STAGES, small_project)
    assert ran_stages(fifth.stdout) == ["featurize"]

    metrics = run(["dvc", "metrics", "show", "--json"], small_project)
    assert "rows_written" in metrics.stdout


def test_outputs_are_git_ignored_and_tracked_by_dvc(small_project: Path):
    run(DATA_STAGES, small_project)
    ignored = run(["git", "check-ignore", "data/raw/transactions",
                   "data/interim/transactions.parquet"], small_project)
    assert len(ignored.stdout.split()) == 2
    status = run(["dvc", "status", "--json", "--with-deps", "featurize"], small_project)
    assert json.loads(status.stdout) == {}


def test_push_then_pull_in_a_fresh_clone(small_project: Path, tmp_path: Path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "modify", "local", "url", str(remote)], small_project)
    run(DATA_STAGES, small_project)
    commit_all(small_project, "pipeline run")
    run(["dvc", "push"], small_project)
    assert any(remote.rglob("*"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(small_project), str(clone)], tmp_path)
    assert not (clone / "data/interim/transactions.parquet").exists()
    run(["dvc", "pull", "--with-deps", "featurize"], clone)
    for path in ("data/interim/transactions.parquet", "data/interim/quarantine.parquet"):
        assert (clone / path).read_bytes() == (small_project / path).read_bytes()
    originals = sorted((small_project / "data/raw/transactions").iterdir())
    assert [p.read_bytes() for p in originals] == \
        [(clone / "data/raw/transactions" / p.name).read_bytes() for p in originals]
    status = run(["dvc", "status", "--json", "--with-deps", "featurize"], clone)
    assert json.loads(status.stdout) == {}


def test_default_remote_is_a_local_folder_beside_the_repo(small_project: Path):
    url = run(["dvc", "remote", "list"], small_project).stdout.split()
    assert url[0] == "local" and not re.match(r"^\w+://", url[1])


def test_a_fresh_clone_reproduces_the_committed_outputs_and_a_pulled_one_reruns_nothing(
        trained_project: Path, tmp_path: Path):
    """What a new user does: clone, `dvc repro` from nothing (no cache, no remote), and find
    `git status` clean (every tracked output byte-identical, timings kept out of them); a
    second `dvc repro` runs nothing; a clone that pulls from the remote runs nothing either."""
    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(trained_project), str(fresh)], tmp_path)
    assert not (fresh / "models/model.txt").exists()
    first = run(["dvc", "repro"], fresh)
    # evaluate's and monitor's outputs are in git: their inputs came out byte-identical, so
    # DVC has nothing to rerun there
    assert ran_stages(first.stdout) == ["simulate", "ingest", "featurize", "tune", "train"]
    assert run(["git", "status", "--porcelain"], fresh).stdout == ""
    assert (fresh / "reports/timings/tune.json").exists()    # kept, but outside git and DVC
    assert ran_stages(run(["dvc", "repro"], fresh).stdout) == []

    remote = tmp_path / "remote"
    run(["dvc", "remote", "modify", "--local", "local", "url", str(remote)], fresh)
    run(["dvc", "push"], fresh)
    pulled = tmp_path / "pulled"
    run(["git", "clone", "-q", str(trained_project), str(pulled)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "local", "url", str(remote)], pulled)
    run(["dvc", "pull"], pulled)
    assert ran_stages(run(["dvc", "repro"], pulled).stdout) == []
    assert run(["git", "status", "--porcelain"], pulled).stdout == ""


def test_a_stage_stops_when_the_process_that_started_it_is_killed(small_project: Path):
    "As when `dvc repro` is killed: its `aif` child must not go on and write outputs later."
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import run_env

    write_params(small_project, simulate={"n_customers": 5000, "n_terminals": 10000,
                                          "n_days": 183})   # a few seconds of work
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "p = subprocess.Popen(['aif', 'simulate']); print(p.pid, flush=True); time.sleep(60)"],
        cwd=small_project, env=run_env(), stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)              # still there?
        except ProcessLookupError:
            break
        try:
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().split()[2] == "Z":   # gone, waiting to be reaped
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the stage went on after its parent was killed")
    assert not (small_project / "data/raw/transactions").exists()


def featurize_outputs(project: Path) -> dict[str, str]:
    "md5 of every file the featurize stage writes, by path."
    import hashlib

    import yaml

    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["featurize"]
    files = {}
    for out in lock["outs"]:
        path = project / out["path"]
        for f in ([path] if path.is_file() else sorted(path.rglob("*")) if path.exists() else []):
            if f.is_file():
                files[str(f.relative_to(project))] = hashlib.md5(f.read_bytes()).hexdigest()
    return files


def is_featurize_stage(argv: list[str]) -> bool:
    "Whether `argv` is the `aif featurize` process itself, not a shell or `dvc` around it."
    return "featurize" in argv and any(Path(arg).name == "aif" for arg in argv)


def test_the_stage_process_is_told_from_its_shell_and_dvc():
    assert is_featurize_stage(["/venv/bin/python", "/venv/bin/aif", "featurize"])
    assert is_featurize_stage(["aif", "featurize"])
    assert not is_featurize_stage(["/bin/sh", "-c", "aif featurize"])
    assert not is_featurize_stage(["/venv/bin/python", "/venv/bin/dvc", "repro", "featurize"])


def test_a_failed_stage_leaves_its_outputs_and_a_killed_one_is_put_back_by_dvc_checkout(
        small_project: Path):
    """DVC deletes a stage's outputs before running it. A stage that fails puts them back as
    dvc.lock records them; one killed with SIGKILL leaves them absent or whole, never half
    written, and `dvc checkout` restores them."""
    import os
    import signal
    import subprocess
    import time

    import psutil
    from conftest import run_env

    run(DATA_STAGES, small_project)
    commit_all(small_project, "data")
    before = featurize_outputs(small_project)
    assert len(before) >= 2

    write_params(small_project, features={"groups": ["baseline", "no_such_group"]})
    failed = run(["dvc", "repro", "featurize"], small_project, check=False)
    assert failed.returncode != 0 and "no_such_group" in failed.stderr
    assert "previous outputs are back" in failed.stderr
    assert featurize_outputs(small_project) == before
    run(["git", "checkout", "params.yaml"], small_project)

    repro = subprocess.Popen(["dvc", "repro", "-f", "featurize"], cwd=small_project,
                             env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processed = small_project / "data/processed"
    deadline = time.monotonic() + 60
    while not list(processed.glob(".*.tmp-*")):   # mid-write: its temporary is there
        assert repro.poll() is None and time.monotonic() < deadline, "featurize ended first"
        time.sleep(0.001)
    # the stage is this repro's own child: another test's `aif featurize` on the other worker
    # must not be the one killed (CI once killed it and failed both tests)
    stage = next(child for child in psutil.Process(repro.pid).children(recursive=True)
                 if is_featurize_stage(child.cmdline()))
    os.kill(stage.pid, signal.SIGKILL)
    assert repro.wait(timeout=60) != 0
    after = featurize_outputs(small_project)
    assert all(before[path] == md5 for path, md5 in after.items())   # absent or whole
    run(["dvc", "checkout", "featurize"], small_project)          # the cached outputs
    run(["git", "checkout", "--", "reports/features.json"], small_project)   # cache: false
    assert featurize_outputs(small_project) == before
    assert "up to date" in run(["dvc", "status", "featurize"], small_project).stdout
    run(["dvc", "repro", "-f", "featurize"], small_project)   # its next run clears the rest
    assert not list(processed.glob(".*.tmp-*")) and featurize_outputs(small_project) == before
    # without the cache (a clone that never ran or pulled the stage) what git holds is put
    # back and the rest left as the failed run left it, without a second error (it was
    # "outputs not restored ([Errno 2] ...tmp-...)", a temporary never written)
    lock = yaml.safe_load((small_project / "dvc.lock").read_text())
    [features] = [o for o in lock["stages"]["featurize"]["outs"] if o["path"].endswith("parquet")]
    md5 = features["md5"]
    (small_project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()   # its manifest
    write_params(small_project, features={"groups": ["baseline", "no_such_group"]})
    failed = run(["dvc", "repro", "featurize"], small_project, check=False)
    assert failed.returncode != 0 and "not restored" not in failed.stderr, failed.stderr
    assert "previous outputs are back as dvc.lock records them (reports/features.json)" in \
        failed.stderr
