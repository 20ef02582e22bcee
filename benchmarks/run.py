"""Run every benchmark (`make bench`), or the ones named: `python benchmarks/run.py simulate`."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHMARKS = ["simulate", "features", "quality", "drift", "detection", "lifecycle", "serve",
              "serve_export", "dask", "dask_train"]

if __name__ == "__main__":
    chosen = sys.argv[1:] or BENCHMARKS
    results = {name: importlib.import_module(f"bench_{name}").main() for name in chosen}
    missed = [name for name, ok in results.items() if not ok]
    print(f"\n{len(results) - len(missed)} of {len(results)} benchmarks met their targets"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    sys.exit(1 if missed else 0)
