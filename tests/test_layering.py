"""The architecture rule (pyproject's [tool.importlinter]) holds, and would
catch a pure layer reaching for I/O."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=tree, env=env, capture_output=True, text=True
    )


def test_the_layers_are_kept() -> None:
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "broken" in res.stdout and "0 broken" in res.stdout


def test_core_importing_the_kernel_layer_breaks_the_build(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "tracer", tmp_path / "tracer")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    model = tmp_path / "tracer/core/model.py"
    model.write_text(model.read_text() + "\nfrom tracer.system import procfs  # noqa\n")
    res = lint(tmp_path)
    assert res.returncode != 0
    assert "core/ is pure" in res.stdout and "BROKEN" in res.stdout
    assert "tracer.core.model -> tracer.system.procfs" in res.stdout
