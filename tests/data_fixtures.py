"""Small datasets written in the original layouts, with real encodings (JPEG/PNG/TIF, XML)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import ml_collections
import numpy as np
import tifffile
from PIL import Image

from jdiffseg.data import data_config_defaults

ISIC = "ISBI2016_ISIC_Part1"


def config(tmp: Path, name: str = "synthetic", **data) -> ml_collections.ConfigDict:
    """A config with only the data section, stored under tmp/tfds."""
    d = data_config_defaults()
    d.name = name
    d.data_dir = str(tmp / "tfds")
    d.update(data)
    return ml_collections.ConfigDict({"data": d})


def disc_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image with a bright disc and its 0/255 mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
    m = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.25 * min(h, w)) ** 2
    img = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
    img[m] += 120
    return img, (m * 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buf, arr)
    else:
        Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_isic(root: Path, n_train: int = 5, n_test: int = 3, zipped: bool = False) -> Path:
    """ISIC 2016 part 1: four folders (or four zips holding them) of JPEGs and PNG masks."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, bytes]] = {}
    for split_dir, n, first in (("Training", n_train, 0), ("Test", n_test, 1000)):
        data, gt = f"{ISIC}_{split_dir}_Data", f"{ISIC}_{split_dir}_GroundTruth"
        files[data], files[gt] = {}, {}
        for i in range(n):
            h, w = (48, 64) if i % 2 else (60, 45)  # non-square, both orientations
            img, mask = disc_pair(rng, h, w)
            stem = f"ISIC_{first + i:07d}"
            files[data][f"{stem}.jpg"] = encode(img, "JPEG")
            files[gt][f"{stem}_Segmentation.png"] = encode(mask, "PNG")
    for folder, members in files.items():
        if zipped:
            with zipfile.ZipFile(root / f"{folder}.zip", "w") as zf:
                for name, data in members.items():
                    zf.writestr(f"{folder}/{name}", data)
        else:
            (root / folder).mkdir()
            for name, data in members.items():
                (root / folder / name).write_bytes(data)
    return root


def aperio_xml(polygons: list[np.ndarray]) -> bytes:
    """An Aperio ImageScope annotation file with one region per polygon."""
    regions = []
    for i, poly in enumerate(polygons, 1):
        verts = "".join(f'<Vertex X="{x:.3f}" Y="{y:.3f}" Z="0"/>' for x, y in poly)
        regions.append(f'<Region Id="{i}" Type="0"><Attributes/><Vertices>{verts}</Vertices>'
                       "</Region>")
    return ('<?xml version="1.0"?><Annotations MicronsPerPixel="0.252"><Annotation Id="1">'
            '<Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes><Regions>'
            + "".join(regions) + "</Regions></Annotation></Annotations>").encode()


def circle(cx: float, cy: float, r: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], -1)


def write_monuseg(root: Path, n_train: int = 3, n_test: int = 2, tile: int = 40) -> Path:
    """MoNuSeg 2018: training tiles + Annotations folder, test tiles with XML beside them."""
    rng = np.random.default_rng(1)
    train = root / "MoNuSeg 2018 Training Data"
    (train / "Tissue Images").mkdir(parents=True)
    (train / "Annotations").mkdir()
    test = root / "MoNuSegTestData"
    test.mkdir()
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            stem = f"TCGA-{split}-{i:02d}"
            polys = [circle(*rng.uniform(6, tile - 6, 2), rng.uniform(2, 5)) for _ in range(4)]
            img = rng.integers(150, 230, (tile, tile, 3), dtype=np.uint8)
            img_dir, xml_dir = ((train / "Tissue Images", train / "Annotations")
                                if split == "train" else (test, test))
            tifffile.imwrite(img_dir / f"{stem}.tif", img)
            (xml_dir / f"{stem}.xml").write_bytes(aperio_xml(polys))
    return root


def write_folder(root: Path, n: int = 10, fmt: str = "PNG", size: int = 40) -> Path:
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ext = {"PNG": "png", "JPEG": "jpg", "TIFF": "tif"}[fmt]
    for i in range(n):
        img, mask = disc_pair(rng, size, size)
        (root / "images" / f"case{i:02d}.{ext}").write_bytes(encode(img, fmt))
        (root / "masks" / f"case{i:02d}.png").write_bytes(encode(mask, "PNG"))
    return root
