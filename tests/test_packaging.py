"""The installed package claims only its own import name: ``models`` and ``guides``
live at the top of the repository (the design card) but install as
``pyro_stcn.models`` and ``pyro_stcn.guides``."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
    )
    return next(out.glob("pyro_stcn-*.whl"))


def test_the_wheel_holds_one_top_level_package_and_the_console_script(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"pyro_stcn"}
    assert "pyro_stcn/models/stcn.py" in names and "pyro_stcn/guides/ladder.py" in names
    info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "pyro-stcn = pyro_stcn.cli:main" in zipfile.ZipFile(wheel).read(info).decode()


def test_the_installed_package_imports_from_outside_the_repository(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)  # fmt: skip
    code = (
        "import importlib.util, pyro_stcn.models, pyro_stcn.guides, pyro_stcn.cli;"
        "print(pyro_stcn.models.__file__);"
        "print(importlib.util.find_spec('models'), importlib.util.find_spec('guides'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                          capture_output=True, text=True, check=True)  # fmt: skip
    where, specs = done.stdout.splitlines()
    assert where.startswith(str(target)) and specs == "None None"
