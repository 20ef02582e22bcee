"""Helpers for benchmarks: a scratch copy of the workspace and whole-command measurements."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from conftest import make_project, run, run_env, write_params  # noqa: E402,F401

# Runs the command in a child and reports the largest resident set among it and its
# descendants (getrusage of waited-for children), in a fresh process per measurement.
_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def measure(cmd: list[str], cwd: Path) -> tuple[float, float]:
    "Wall seconds and peak RSS (MB) of one run of `cmd` in `cwd`."
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=cwd, env=run_env(),
                         capture_output=True, text=True, check=True)
    wall, rss_kb, code = out.stdout.split()
    if code != "0":
        raise RuntimeError(f"{cmd} exited {code}: {out.stderr[-2000:]}")
    return float(wall), int(rss_kb) / 1024


def report(name: str, figures: dict) -> None:
    "Print figures and keep them in benchmarks/out/<name>.json."
    out = BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    figures = {"measured_at": time.strftime("%Y-%m-%d %H:%M"), **figures}
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")
