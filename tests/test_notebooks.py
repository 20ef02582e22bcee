"""The notebooks are the source: their examples pass, and the committed package and notebooks
are exactly what nbdev-export and nbdev-clean produce."""
from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, run, wait_until_up

NOTEBOOKS = sorted(p.relative_to(REPO / "nbs") for p in (REPO / "nbs").rglob("*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
# Papermill templates (folders holding a .notest file) are run by their own tests instead.
TESTED_BY_NBDEV = [p for p in NOTEBOOKS
                   if not (REPO / "nbs" / p).parent.joinpath(".notest").exists()]


def test_notebook_examples_pass_and_show_what_is_committed():
    """Every notebook's examples run as `nbdev-test` runs them, and what they print and show is
    what the committed notebook shows a reader (text outputs; no paths, addresses or timings
    in them, figures small). One `aif examples --check` for all: each notebook in a process of
    its own, and the failure names every notebook that differs and how."""
    result = run(["aif", "examples", "--check"], REPO, check=False)
    assert result.returncode == 0, result.stderr[-8000:]
    assert f"{len(TESTED_BY_NBDEV)} notebooks: outputs as committed" in result.stderr


def test_a_notebook_whose_process_dies_is_named_and_the_others_still_checked(tmp_path: Path):
    """A crash in one notebook's examples (here an exit) breaks the pool of processes they run
    in, which does not say whose process it was: the check names that notebook, and only it."""
    for name in ("pyproject.toml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "nbs").mkdir()
    for name, code in (("a_fine", "x = 1"), ("b_exits", "import os\nos._exit(3)"),
                       ("c_fine", "y = 2")):
        (tmp_path / "nbs" / f"{name}.ipynb").write_text(json.dumps({
            "cells": [{"cell_type": "code", "execution_count": None, "id": "c1",
                       "metadata": {}, "outputs": [], "source": [code]}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    result = run(["aif", "examples", "--check", *sorted(map(str, (tmp_path / "nbs").iterdir()))],
                 tmp_path, check=False)
    assert result.returncode != 0
    assert "b_exits.ipynb: its process died" in result.stderr
    assert "a_fine" not in result.stderr and "c_fine" not in result.stderr


def test_the_examples_are_the_notebooks_nbdev_tests():
    from aif.examples import example_notebooks

    assert [p.relative_to(REPO / "nbs") for p in example_notebooks(REPO / "nbs")] == \
        TESTED_BY_NBDEV


def test_no_committed_output_shows_a_card_number_or_personal_data():
    """The card export's example (nbs/12) makes card numbers, names, streets, SSNs and dates of
    birth; none of its values is in any output of any committed notebook."""
    import re

    from aif.config.params import SimulateParams
    from aif.data.card_export import export_frame

    export = export_frame(SimulateParams(n_customers=50, n_terminals=80, n_days=20, seed=3))
    personal = [c for c in ("first", "last", "street", "ssn", "dob") if c in export]
    assert personal, "the export makes personal data (or this test checks nothing)"
    values = {str(v) for c in ["cc_num", *personal] for v in export[c].unique() if str(v)}
    pattern = re.compile("|".join(rf"(?<!\w){re.escape(v)}(?!\w)"
                                  for v in sorted(values, key=len, reverse=True)))
    for path in sorted((REPO / "nbs").rglob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            text = json.dumps(cell.get("outputs", []))
            found = pattern.search(text)
            assert not found, f"{path.name} cell {cell['id']} shows {found.group(0)!r}"


def test_examples_show_their_results():
    "A reader sees what the examples compute: most notebooks show outputs, none shows a path."
    shown = {p: [c for c in json.loads((REPO / "nbs" / p).read_text())["cells"]
                 if c["cell_type"] == "code" and c.get("outputs")] for p in TESTED_BY_NBDEV}
    without = sorted(str(p) for p, cells in shown.items() if not cells)
    assert len(without) <= len(shown) // 5, f"notebooks showing no output: {without}"


# Sections that show what the pipeline made of the workspace's data (`#| workspace` cells):
# skipped by a plain `nbdev-test`, run here on the tests' small trained project.
def _starts_with(directive: str):
    return lambda cell: cell["cell_type"] == "code" and "".join(cell["source"]).startswith(
        f"#| {directive}")


WITH_WORKSPACE_SECTIONS = [p for p in TESTED_BY_NBDEV if any(map(
    _starts_with("workspace"), json.loads((REPO / "nbs" / p).read_text())["cells"]))]


@pytest.mark.parametrize("notebook", WITH_WORKSPACE_SECTIONS, ids=str)
def test_workspace_sections_run_on_a_trained_project(notebook: Path, trained_project: Path,
                                                     tmp_path: Path):
    """The notebook's definitions (its `#| export` cells) and its workspace section, on the
    small trained project: its examples have their own test above."""
    import nbformat

    path = REPO / "nbs" / notebook
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if _starts_with("export")(c) or _starts_with("workspace")(c)]
    part = tmp_path / notebook.name
    nbformat.write(nb, part)
    result = run(["jupyter", "execute", "--timeout=600", str(part)], path.parent, check=False,
                 AIF_ROOT=str(trained_project))
    assert result.returncode == 0, result.stderr[-4000:]


def test_the_stage_notebooks_have_workspace_sections():
    "Every stage whose outputs a data scientist reads ends with a section on them."
    assert {p.stem for p in WITH_WORKSPACE_SECTIONS} >= {
        "10_simulate", "11_ingest", "23_local_engine", "33_train", "35_evaluate"}


def _copy_sources(dest: Path) -> Path:
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    shutil.copytree(REPO / "nbs", dest / "nbs")
    shutil.copytree(REPO / "aif", dest / "aif", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _changed_files(before: Path, after: Path) -> list[str]:
    changed = []
    for path in sorted(before.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            twin = after / path.relative_to(before)
            if not twin.exists() or not filecmp.cmp(path, twin, shallow=False):
                changed.append(str(path.relative_to(before)))
    new = {p.relative_to(after) for p in after.rglob("*.py") if "__pycache__" not in p.parts}
    changed += [str(p) for p in sorted(new - {p.relative_to(before) for p in before.rglob("*.py")})]
    return changed


def test_export_would_change_nothing(tmp_path: Path):
    work = _copy_sources(tmp_path)
    run(["nbdev-export"], work)
    assert _changed_files(REPO / "aif", work / "aif") == [], \
        "aif/ differs from what nbdev-export writes: edit nbs/, run `make export`, commit both"


def test_clean_would_change_nothing(tmp_path: Path):
    work = _copy_sources(tmp_path)
    run(["nbdev-clean"], work)
    assert _changed_files(REPO / "nbs", work / "nbs") == [], \
        "notebooks are not clean: run `make export` (nbdev-clean) and commit"


def test_clean_keeps_papermill_parameters_tag(tmp_path: Path):
    import json
    nb = {"cells": [{"cell_type": "code", "id": "a1", "execution_count": 3, "outputs": [],
                     "metadata": {"tags": ["parameters"], "scrolled": True},
                     "source": ["window = 1\n"]}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    work = _copy_sources(tmp_path)
    path = work / "nbs" / "tagged.ipynb"
    path.write_text(json.dumps(nb))
    run(["nbdev-clean", "--fname", str(path)], work)
    cell = json.loads(path.read_text())["cells"][0]
    assert cell["metadata"] == {"tags": ["parameters"]} and cell["execution_count"] is None


def test_lint_is_clean():
    result = run(["ruff", "check", "aif", "tests", "benchmarks"], REPO, check=False)
    assert result.returncode == 0, result.stdout[-3000:]


def test_saving_in_lab_leaves_the_notebooks_as_committed(tmp_path: Path):
    """`make lab`'s server, given a notebook as JupyterLab saves it (kernel display name,
    language_info, execution counts, cell timings), writes it clean: the committed bytes, and
    `make check-nbs` passes. Run in a clone of the repository sharing this .venv."""
    import json
    import os
    import signal
    import socket
    import subprocess

    import httpx

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(REPO), str(clone)], tmp_path)
    (clone / ".venv").symlink_to(REPO / ".venv")
    committed = (clone / "nbs/10_simulate.ipynb").read_bytes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "test-token-0123456789"
    lab = subprocess.Popen(
        ["make", "-o", ".venv/.installed", "lab",
         # --allow-root: CI and this machine run as root, which Jupyter refuses by default
         f"LAB_ARGS=--port {port} --no-browser --allow-root --IdentityProvider.token={token}"],
        cwd=clone, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "lab.log").open("w"))
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api",
                       headers={"Authorization": f"token {token}"}, timeout=30)
    try:
        wait_until_up(lambda: api.get("/status"), lab, tmp_path / "lab.log", "JupyterLab",
                      pause=0.5)
        model = api.get("/contents/nbs/10_simulate.ipynb", params={"content": 1}).json()
        notebook = model["content"]
        notebook["metadata"]["kernelspec"]["display_name"] = "Python 3 (aif .venv)"
        notebook["metadata"]["language_info"] = {"name": "python", "version": "3.11.9"}
        for i, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):
            cell["execution_count"] = i + 1
            cell["metadata"]["execution"] = {"iopub.status.busy": "2026-12-02T06:40:00.0Z"}
        saved = api.put("/contents/nbs/10_simulate.ipynb", json={
            "type": "notebook", "format": "json", "content": notebook})
        assert saved.status_code == 200, saved.text
    finally:
        api.close()
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGTERM)
            lab.wait(timeout=60)
    written = (clone / "nbs/10_simulate.ipynb").read_bytes()
    assert json.loads(written) == json.loads(committed) and written == committed
    check = run(["make", "-o", ".venv/.installed", "--no-print-directory", "check-nbs"], clone,
                check=False)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


def test_the_docs_site_builds_and_reads_offline_in_a_browser(tmp_path: Path):
    "`aif docs` on two notebooks: executed pages, directives off, a contents list, no fetch."
    from browser import browser, requests_made

    out = tmp_path / "site"
    run(["aif", "docs", "--out", str(out), "nbs/index.ipynb", "nbs/20_feature_specs.ipynb"],
        REPO)
    page = (out / "20_feature_specs.html").read_text()
    assert "#| export" not in page and "default_exp" not in page
    with browser() as driver:
        driver.get((out / "20_feature_specs.html").as_uri())
        text = driver.find_element("tag name", "body").text
        assert "What a feature is" in text                 # the markdown
        assert "def check_specs" in text                   # the exported code, documented
        assert "show_doc(" not in text                     # a show_doc cell shows its output
        assert driver.find_elements("id", "FeatureSpec")    # show_doc's heading, its code hidden
        assert "features: tx_amount, tx_during_weekend" in text   # an example's output
        links = driver.find_elements("css selector", "nav.aif-contents a")
        assert [a.get_attribute("href").rsplit("/", 1)[1] for a in links] == [
            "index.html", "20_feature_specs.html"]
        assert [url for url in requests_made(driver)
                if not url.startswith(("data:", "file:"))] == []
        driver.save_screenshot(str(tmp_path / "docs.png"))
