"""IAM-OnDB handwriting: ``lineStrokes`` XML files of pen trajectories.

A file holds ``<StrokeSet>`` with ``<Stroke>`` elements, each a list of
``<Point x=".." y=".." time=".."/>``. As in the papers (Graves 2013; Chung et al. 2015),
the points of all strokes form one sequence of steps x_t = (dx_t, dy_t, pen_t):

- (dx_t, dy_t) is the offset from the previous point (0 at the first point), with y
  flipped so that up is positive (the tablet's y grows downwards);
- pen_t = 1 at the last point of each stroke: the pen lifts after it.

Offsets are returned in raw tablet units.
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


def load_line_strokes_dir(directory: str | Path, names: list[str] | None = None) -> list[Tensor]:
    """Every ``*.xml`` below ``directory``, sorted by path; with ``names`` (a split list
    of file stems, e.g. ``a01-000u-01``) only those, in that order."""
    directory = require_dir(directory, "IAM-OnDB lineStrokes XML files")
    paths = {p.stem: p for p in sorted(directory.rglob("*.xml"))}
    if not paths:
        raise DataError(f"{directory}: no .xml files in it or below it")
    if names is None:
        return [read_line_strokes(p) for p in paths.values()]
    missing = [n for n in names if n not in paths]
    if missing:
        raise DataError(f"{directory}: the split list names {len(missing)} missing files, e.g. {missing[0]}.xml")
    return [read_line_strokes(paths[n]) for n in names]


def load_iamondb_splits(directory: str | Path, seed: int = 0, dequantise: bool = False) -> Splits:
    """Every lineStrokes file below ``directory``, split 80/10/10 by file (seeded). With
    ``dequantise``, training offsets get fresh uniform noise of width 1 (one tablet unit)
    in every batch; validation and test stay on the integer grid."""
    splits = split_held_out(load_line_strokes_dir(directory), "handwriting", seed)
    if dequantise:
        splits.augment = dequantise_offsets
    return splits


def dequantise_offsets(x: Tensor, generator: torch.Generator) -> Tensor:
    """(dx, dy, pen) with U(-1/2, 1/2) added to dx and dy."""
    noise = torch.rand(x.shape[0], 2, generator=generator) - 0.5
    return torch.cat([x[:, :2] + noise, x[:, 2:]], dim=1)
