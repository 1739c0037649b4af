"""IAM-OnDB handwriting: ``lineStrokes`` XML files of pen trajectories.

A file holds ``<StrokeSet>`` with ``<Stroke>`` elements, each a list of
``<Point x=".." y=".." time=".."/>``. As in the papers (Graves 2013; Chung et al. 2015),
the points of all strokes form one sequence of steps x_t = (dx_t, dy_t, pen_t):

- (dx_t, dy_t) is the offset from the previous point (0 at the first point), with y
  flipped so that up is positive (the tablet's y grows downwards);
- pen_t = 1 at the last point of each stroke: the pen lifts after it.

Offsets are returned in raw tablet units.

Splits are either seeded 80/10/10 by file, or IAM-OnDB's own split lists: a directory
holding ``trainset.txt``, ``testset_v.txt`` (validation) and ``testset_f.txt`` (test),
one form (``a01-000u``: all its lines) or line (``a01-000u-01``) per line of text. Its
second validation list, ``testset_t.txt``, is not read; append it to ``trainset.txt``
to train on it.
"""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_stcn.data.batching import Splits, split_held_out
from pyro_stcn.data.errors import DataError, check_finite, require_dir


def read_line_strokes(path: str | Path) -> Tensor:
    """One lineStrokes XML file as a ``[points, 3]`` sequence of (dx, dy, pen)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DataError(f"{path}: not readable XML ({e})") from e
    strokes = root.findall(".//StrokeSet/Stroke")
    if not strokes:
        raise DataError(f"{path}: no <Stroke> elements under <StrokeSet>; expected an IAM-OnDB lineStrokes file")
    points, pen = [], []
    for s, stroke in enumerate(strokes):
        xy = []
        for p, point in enumerate(stroke.findall("Point")):
            try:
                xy.append((float(point.attrib["x"]), float(point.attrib["y"])))
            except (KeyError, ValueError):
                raise DataError(
                    f"{path}: stroke {s}, point {p} has attributes {dict(point.attrib)}; expected numeric x and y"
                ) from None
        if not xy:
            raise DataError(f"{path}: stroke {s} has no <Point> elements")
        points += xy
        pen += [0.0] * (len(xy) - 1) + [1.0]
    xy = check_finite(np.array(points), path)
    offsets = np.diff(xy, axis=0, prepend=xy[:1])
    offsets[:, 1] *= -1  # y grows downwards on the tablet
    return torch.tensor(np.column_stack([offsets, pen]), dtype=torch.float32)


def line_strokes_files(directory: str | Path) -> dict[str, Path]:
    """Every ``*.xml`` below ``directory`` by file stem, sorted by path."""
    directory = require_dir(directory, "IAM-OnDB lineStrokes XML files")
    paths = {p.stem: p for p in sorted(directory.rglob("*.xml"))}
    if not paths:
        raise DataError(f"{directory}: no .xml files in it or below it")
    return paths


def load_line_strokes_dir(directory: str | Path) -> list[Tensor]:
    """Every lineStrokes file below ``directory``, sorted by path."""
    return [read_line_strokes(p) for p in line_strokes_files(directory).values()]


SPLIT_LISTS = {"train": "trainset.txt", "valid": "testset_v.txt", "test": "testset_f.txt"}


def listed_files(paths: dict[str, Path], list_path: Path) -> list[Path]:
    """The files that ``list_path`` names, in its order: an entry is a line's stem
    (``a01-000u-01``) or a form (``a01-000u``), which stands for all its lines."""
    if not list_path.is_file():
        raise DataError(f"{list_path}: no such split list; expected {', '.join(SPLIT_LISTS.values())}")
    by_form: dict[str, list[Path]] = {}
    for stem, path in paths.items():
        by_form.setdefault(stem.rsplit("-", 1)[0], []).append(path)
    entries = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
    if not entries:
        raise DataError(f"{list_path}: empty; expected one form or line id per line, e.g. a01-000u")
    missing = [e for e in entries if e not in paths and e not in by_form]
    if missing:
        raise DataError(
            f"{list_path}: {len(missing)} of its {len(entries)} entries match no lineStrokes file, e.g. {missing[0]!r}"
        )
    return [p for e in entries for p in ([paths[e]] if e in paths else by_form[e])]


def load_iamondb_splits(
    directory: str | Path, seed: int = 0, dequantise: bool = False, split_lists: str | Path | None = None
) -> Splits:
    """Every lineStrokes file below ``directory``, split 80/10/10 by file (seeded), or
    by the IAM-OnDB lists in the directory ``split_lists``. With ``dequantise``,
    training offsets get fresh uniform noise of width 1 (one tablet unit) in every
    batch; validation and test stay on the integer grid."""
    if split_lists is None:
        splits = split_held_out(load_line_strokes_dir(directory), "handwriting", "strokes", seed)
    else:
        paths, lists = line_strokes_files(directory), require_dir(split_lists, "IAM-OnDB split lists")
        files = {name: listed_files(paths, lists / file) for name, file in SPLIT_LISTS.items()}
        for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
            shared = set(files[a]) & set(files[b])
            if shared:
                raise DataError(
                    f"{lists}: {SPLIT_LISTS[a]} and {SPLIT_LISTS[b]} share {len(shared)} files, "
                    f"e.g. {sorted(shared)[0].name}; a split must not leak into another"
                )
        splits = Splits(
            *([read_line_strokes(p) for p in files[n]] for n in SPLIT_LISTS), likelihood="handwriting", kind="strokes"
        )
    if dequantise:
        splits.augment = dequantise_offsets
    return splits


def dequantise_offsets(x: Tensor, generator: torch.Generator) -> Tensor:
    """(dx, dy, pen) with U(-1/2, 1/2) added to dx and dy."""
    noise = torch.rand(x.shape[0], 2, generator=generator) - 0.5
    return torch.cat([x[:, :2] + noise, x[:, 2:]], dim=1)
