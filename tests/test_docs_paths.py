"""The guides and the README name files and modules that exist: a path or module name
left behind by a move fails here, not in a reader's hands."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "guides").glob("*.md"))]
PATH = re.compile(r"\b((?:pyro_stcn|models|guides|scripts|tests)/[\w/]+\.(?:py|sh))\b")
MODULE = re.compile(r"`(pyro_stcn(?:\.\w+)+)`")


def resolves(name: str) -> bool:
    """Whether ``name`` is a module, or an attribute path inside one."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_every_file_the_docs_name_exists():
    missing = [f"{page.relative_to(ROOT)}: {path}" for page in PAGES for path in PATH.findall(page.read_text())
               if not (ROOT / path).exists()]  # fmt: skip
    assert not missing, "\n".join(missing)


def test_every_module_the_docs_name_imports():
    missing = [f"{page.relative_to(ROOT)}: {name}" for page in PAGES for name in MODULE.findall(page.read_text())
               if not resolves(name)]  # fmt: skip
    assert not missing, "\n".join(missing)
