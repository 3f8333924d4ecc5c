"""Aperio/ImageScope XML polygon annotations (MoNuSeg) and their rasterisation.

Coordinates follow the usual convention of MoNuSeg loaders: vertex (X, Y) is in pixel units with
pixel (row r, column c) centred at (x=c, y=r); a pixel belongs to a polygon when its centre is
inside (even-odd rule).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from jdiffseg.data.images import DataError

_MAX_WORK = 1 << 22  # edges x pixels evaluated at once, bounds memory for large polygons


def parse_aperio_xml(data: bytes, name: str) -> list[np.ndarray]:
    """Polygons of `Annotations/Annotation/Regions/Region/Vertices/Vertex` as float (N, 2) [x, y].

    Regions with fewer than three vertices enclose nothing and are skipped.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise DataError(f"cannot parse annotation XML {name}: {e}") from e
    polygons = []
    for region in root.iter("Region"):
        try:
            pts = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
        except (KeyError, ValueError) as e:
            raise DataError(f"annotation XML {name}: region {region.attrib.get('Id', '?')} has a "
                            f"vertex without numeric X/Y ({e})") from e
        if len(pts) >= 3:
            polygons.append(np.asarray(pts, np.float64))
    return polygons


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of an (N, 2) polygon."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _inside(poly: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd test of points (px, py) (M,) against polygon edges, vectorised."""
    x0, y0 = poly[:, 0, None], poly[:, 1, None]
    x1, y1 = np.roll(poly[:, 0], -1)[:, None], np.roll(poly[:, 1], -1)[:, None]
    crosses = (y0 > py) != (y1 > py)
    dy = np.where(y1 == y0, 1.0, y1 - y0)
    x_at = x0 + (py - y0) * (x1 - x0) / dy
    return (np.count_nonzero(crosses & (px < x_at), axis=0) % 2).astype(bool)


def rasterise(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance map int32 (H, W): 0 background, i + 1 inside polygon i (later ones on top)."""
    h, w = shape
    out = np.zeros((h, w), np.int32)
    for i, poly in enumerate(polygons):
        c0 = max(int(np.floor(poly[:, 0].min())), 0)
        c1 = min(int(np.ceil(poly[:, 0].max())) + 1, w)
        r0 = max(int(np.floor(poly[:, 1].min())), 0)
        r1 = min(int(np.ceil(poly[:, 1].max())) + 1, h)
        if c0 >= c1 or r0 >= r1:
            continue
        cols = np.arange(c0, c1, dtype=np.float64)
        rows_per_chunk = max(1, _MAX_WORK // (len(poly) * cols.size))
        for rs in range(r0, r1, rows_per_chunk):
            re = min(rs + rows_per_chunk, r1)
            py, px = np.meshgrid(np.arange(rs, re, dtype=np.float64), cols, indexing="ij")
            hit = _inside(poly, px.ravel(), py.ravel()).reshape(px.shape)
            out[rs:re, c0:c1][hit] = i + 1
    return out


def scale_polygons(polygons: list[np.ndarray], sx: float, sy: float) -> list[np.ndarray]:
    """Maps polygons to a resized image (pixel-centre convention: x' = (x + 0.5) * s - 0.5)."""
    s = np.array([sx, sy])
    return [(p + 0.5) * s - 0.5 for p in polygons]
