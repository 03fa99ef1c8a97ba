"""Scene sets: table looks and light ranges from config, and procedural tables for training.

A scene set is a YAML file next to a folder of image files, the way an object set is
(envs/catalog.py). Any split takes one through `split_overrides={"scene_set": path}`; its
tables then replace the split's named tables, and its `light` ranges (if given) the
split's light ranges::

    # my_scenes.yaml
    root: textures/            # folder of the image files, relative to this YAML
    tables:
      - name: oak              # unique name, recorded as the episode's table look
        texture: oak.png       # an image file (PNG/JPG) mapped onto the table top
      - name: navy
        colour: [0.10, 0.12, 0.35]   # or a flat RGB colour in [0, 1]
    light:                     # optional; the split's own ranges where absent
      azimuth: [-1.2, 1.2]     # rad, 0 = light from the camera side
      elevation: [0.7, 1.2]    # rad above the table
      tint: [0.0, 0.1]         # max colour deviation of the light
      ambient: [0.5, 0.7]
    procedural:                # optional: generated tables, drawn in `share` of episodes
      share: 0.8
      families: [flat, stripes, blobs, wood, planks, dots, gradient, speckle]
      keep_away_from: backgrounds   # a split whose table colours this set must not use
      margin: 0.15             # min RGB distance of every texel to those colours
      bank: 1024               # how many distinct tables (table i is fixed by seed and i)
      seed: 0
      saturation: [0.0, 0.85]  # HSV ranges of the palette
      value: [0.2, 0.92]

Procedural tables are how training sees many surfaces without seeing the held-out ones:
the pattern families exclude the checkerboards and the labelled grid of the backgrounds
split, and every texel keeps `margin` (Euclidean, RGB in [0, 1]) from the held-out flat
colours, from the colours that cover >= 2% of each held-out texture, and from every object
colour (a red table would hide a red block). tests/envs/test_scenes.py checks this on
the env's own draws. conf/env/scene_sets/train_random.yaml is the training set;
conf/env/scene_sets/example.yaml is a user set with files.
"""

from __future__ import annotations

import colorsys
import functools
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from envs.catalog import COLOURS, PYBULLET_DATA, TABLE_COLOURS, TABLE_TEXTURES

REPO = Path(__file__).resolve().parent.parent  # relative scene-set paths fall back to it
FAMILIES = ("flat", "stripes", "blobs", "wood", "planks", "dots", "gradient", "speckle")
TEXTURE_PX = 64  # procedural texture side; the table spans about 64 px of a 64 px frame
_LIGHT_KEYS = ("azimuth", "elevation", "tint", "ambient")


@dataclass(frozen=True)
class TableLook:
    """One named table appearance: a flat RGB colour or an image file (absolute path)."""

    name: str
    colour: tuple[float, float, float] | None = None
    texture: str | None = None


@dataclass(frozen=True)
class Procedural:
    """Generated tables: which families, how often, and which colours to stay away from."""

    share: float = 0.8
    families: tuple[str, ...] = FAMILIES
    keep_away_from: str = "backgrounds"  # split name; "" = only the object colours
    margin: float = 0.15
    bank: int = 1024  # distinct generated tables; table i is a pure function of (seed, i)
    seed: int = 0
    saturation: tuple[float, float] = (0.0, 0.85)  # HSV ranges the palette is drawn from
    value: tuple[float, float] = (0.2, 0.92)

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"procedural.share={self.share}; expected a value in [0, 1]")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise ValueError(f"procedural.families={list(self.families)}; expected a "
                             f"non-empty subset of {list(FAMILIES)}")
        if not 0.0 <= self.margin <= 0.5:
            raise ValueError(f"procedural.margin={self.margin}; expected 0..0.5 (RGB units)")
        if self.bank < 1:
            raise ValueError(f"procedural.bank={self.bank}; expected >= 1")
        for name in ("saturation", "value"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"procedural.{name}={[lo, hi]}; expected 0 <= low <= high <= 1")

    def table(self, index: int) -> tuple[str, np.ndarray]:
        """Generated table `index` of the bank: (family, image (n, n, 3) uint8)."""
        if not 0 <= index < self.bank:
            raise ValueError(f"procedural table index {index}; expected 0..{self.bank - 1}")
        return procedural_table(np.random.default_rng([self.seed, index]), self)


@dataclass(frozen=True)
class SceneSet:
    """What a scene set YAML holds (format in the module docstring)."""

    name: str
    tables: tuple[TableLook, ...] = ()
    light: dict[str, tuple[float, float]] | None = None
    procedural: Procedural | None = None

    def __post_init__(self) -> None:
        if not self.tables and (self.procedural is None or self.procedural.share < 1.0):
            raise ValueError(f"scene set {self.name!r} has no tables; give `tables`, or "
                             "`procedural` with share 1.0")


def _pair(path: Path, key: str, value: object) -> tuple[float, float]:
    if not (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) for v in value) and value[0] <= value[1]):
        raise ValueError(f"scene set {str(path)!r}: light.{key}={value!r}; expected "
                         "[low, high] with low <= high")
    return (float(value[0]), float(value[1]))


def load_scene_set(path: str | os.PathLike) -> SceneSet:
    """Read and validate a scene set YAML; errors name the file and the bad value.

    A relative path is taken from the working directory, else from the repository root,
    so `conf/env/scene_sets/...` works from any directory of a source checkout."""
    path = Path(path)
    if not path.is_absolute() and not path.is_file() and (REPO / path).is_file():
        path = REPO / path
    if not path.is_file():
        raise ValueError(f"scene set file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"scene set {str(path)!r}: expected a mapping")
    unknown = set(data) - {"root", "tables", "light", "procedural"}
    if unknown:
        raise ValueError(f"scene set {str(path)!r}: unknown key(s) {sorted(unknown)}; "
                         "expected root, tables, light, procedural")
    root = (path.parent / str(data.get("root", "."))).resolve()
    tables: list[TableLook] = []
    for entry in data.get("tables") or []:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"scene set {str(path)!r}: table entry {entry!r} needs a name")
        name = str(entry["name"])
        if ("colour" in entry) == ("texture" in entry):
            raise ValueError(f"scene set {str(path)!r}: table {name!r} needs exactly one of "
                             "colour or texture")
        if "colour" in entry:
            rgb = entry["colour"]
            if not (isinstance(rgb, list | tuple) and len(rgb) == 3
                    and all(isinstance(v, int | float) and 0 <= v <= 1 for v in rgb)):
                raise ValueError(f"scene set {str(path)!r}: table {name!r} colour {rgb!r}; "
                                 "expected [r, g, b] in [0, 1]")
            tables.append(TableLook(name, colour=tuple(float(v) for v in rgb)))
        else:
            file = root / str(entry["texture"])
            if not file.is_file():
                raise ValueError(f"scene set {str(path)!r}: table {name!r} texture "
                                 f"{str(file)!r} does not exist")
            tables.append(TableLook(name, texture=str(file)))
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ValueError(f"scene set {str(path)!r}: table names repeat: {names}")
    light = None
    if data.get("light") is not None:
        if not isinstance(data["light"], dict) or set(data["light"]) - set(_LIGHT_KEYS):
            raise ValueError(f"scene set {str(path)!r}: light={data['light']!r}; expected a "
                             f"mapping with keys from {list(_LIGHT_KEYS)}")
        light = {k: _pair(path, k, v) for k, v in data["light"].items()}
    procedural = None
    if data.get("procedural") is not None:
        spec = dict(data["procedural"])
        for key in ("families", "saturation", "value"):
            if key in spec:
                spec[key] = tuple(spec[key])
        try:
            procedural = Procedural(**spec)
        except TypeError as err:
            raise ValueError(f"scene set {str(path)!r}: procedural: {err}") from None
    return SceneSet(name=path.stem, tables=tuple(tables), light=light, procedural=procedural)


# ---- colours a procedural table must keep away from ---------------------------------
def texture_colours(file: str, min_share: float = 0.02) -> np.ndarray:
    """The colours (RGB in [0, 1], quantized to 1/8) covering >= min_share of an image."""
    import imageio.v3 as iio

    img = np.asarray(iio.imread(file))[..., :3].reshape(-1, 3).astype(np.float64) / 255.0
    q = np.round(img * 8) / 8
    colours, counts = np.unique(q, axis=0, return_counts=True)
    return colours[counts >= min_share * len(q)]


@functools.cache
def held_out_colours(split: str) -> np.ndarray:
    """(N, 3) RGB colours a procedural table keeps `margin` from: `split`'s table colours
    and texture colours (none for "") and every object colour."""
    from envs.splits import SPLIT_CONFIGS  # splits imports the catalogue, not this module

    out = [np.asarray(rgba[:3]) for rgba in COLOURS.values()]
    if split:
        if split not in SPLIT_CONFIGS:
            raise ValueError(f"procedural.keep_away_from={split!r}; expected a split in "
                             f"{list(SPLIT_CONFIGS)} or ''")
        for table in SPLIT_CONFIGS[split].tables:
            if table in TABLE_COLOURS:
                out.append(np.asarray(TABLE_COLOURS[table][:3]))
            else:
                out.extend(texture_colours(f"{PYBULLET_DATA}/{TABLE_TEXTURES[table]}"))
    return np.asarray(out, dtype=np.float64)


def min_distance(pixels: np.ndarray, avoid: np.ndarray) -> float:
    """Smallest RGB distance (in [0, 1] units) between any pixel (..., 3), uint8 or float in
    [0, 1], and any avoided colour."""
    rgb = pixels if pixels.dtype == np.uint8 else np.round(pixels * 255)
    # Distinct 8-bit colours only (packed into one int each: a fast 1-D unique).
    packed = np.unique(rgb.reshape(-1, 3).astype(np.int64) @ [65536, 256, 1])
    px = np.stack([packed // 65536, packed // 256 % 256, packed % 256], axis=1) / 255.0
    return float(np.sqrt(((px[:, None, :] - avoid[None, :, :]) ** 2).sum(-1)).min())


# ---- procedural textures ------------------------------------------------------------
def _random_colour(rng: np.random.Generator, spec: Procedural) -> np.ndarray:
    h, s, v = rng.uniform(0, 1), rng.uniform(*spec.saturation), rng.uniform(*spec.value)
    return np.asarray(colorsys.hsv_to_rgb(h, s, v))


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a cells x cells random grid, bilinearly upsampled to n x n."""
    grid = rng.uniform(0, 1, size=(cells + 1, cells + 1))
    t = np.linspace(0, cells, n, endpoint=False)
    i = t.astype(int)
    f = (t - i)[:, None]
    rows = grid[i] * (1 - f) + grid[i + 1] * f  # (n, cells + 1)
    g = (t - i)[None, :]
    return rows[:, i] * (1 - g) + rows[:, i + 1] * g  # (n, n)


def _pattern(family: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """A mixing weight map (n, n) in [0, 1] between two colours, for one family."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    if family == "flat":
        return np.zeros((n, n))
    if family == "stripes":
        ang, period = rng.uniform(0, math.pi), rng.uniform(4, 24)
        phase = (xx * math.cos(ang) + yy * math.sin(ang)) / period
        return (np.mod(phase, 1.0) < rng.uniform(0.3, 0.7)).astype(np.float64)
    if family == "blobs":
        noise = _smooth_noise(rng, n, int(rng.integers(2, 7)))
        return (noise > rng.uniform(0.35, 0.65)).astype(np.float64)
    if family == "wood":
        warp = _smooth_noise(rng, n, 4) * rng.uniform(4, 12)
        rings = np.sin((yy + warp) * 2 * math.pi / rng.uniform(3, 9))
        return 0.5 + 0.5 * rings
    if family == "planks":
        widths = rng.integers(5, 16, size=n)
        edges = np.cumsum(widths)
        board = np.searchsorted(edges, yy[:, 0], side="right")
        shade = rng.uniform(0, 1, size=int(board.max()) + 1)
        return np.repeat(shade[board][:, None], n, axis=1)
    if family == "dots":
        period, radius = rng.uniform(8, 20), rng.uniform(0.15, 0.35)
        cx, cy = np.mod(xx / period, 1) - 0.5, np.mod(yy / period, 1) - 0.5
        return (np.hypot(cx, cy) < radius).astype(np.float64)
    if family == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        ramp = xx * math.cos(ang) + yy * math.sin(ang)
        return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
    if family == "speckle":
        return (rng.uniform(0, 1, size=(n, n)) < rng.uniform(0.2, 0.5)).astype(np.float64)
    raise ValueError(f"unknown procedural family {family!r}; expected one of {FAMILIES}")


def procedural_table(rng: np.random.Generator, spec: Procedural,
                     n: int = TEXTURE_PX) -> tuple[str, np.ndarray]:
    """(family, image (n, n, 3) uint8) drawn from `rng`, every texel at least
    `spec.margin` (RGB in [0, 1]) from `held_out_colours(spec.keep_away_from)`.

    Colours are redrawn until the whole image keeps the margin (blends included); the
    result is a pure function of the generator's state.
    """
    avoid = held_out_colours(spec.keep_away_from)
    family = spec.families[int(rng.integers(len(spec.families)))]
    # 33 mixing levels: smooth enough for gradients and grain, few enough to check each.
    weight = np.round(_pattern(family, rng, n)[..., None] * 32) / 32  # (n, n, 1)
    levels = np.unique(weight)[:, None]  # every mixing weight the image uses, (k, 1)
    for _ in range(100):
        a, b = _random_colour(rng, spec), _random_colour(rng, spec)
        # Check the colours as stored (8 bits), one per distinct weight.
        texels = a * (1 - levels) + b * levels  # (k, 3)
        if min_distance(texels, avoid) >= spec.margin:
            return family, np.round((a * (1 - weight) + b * weight) * 255).astype(np.uint8)
    raise RuntimeError(f"no colours keep margin {spec.margin} from {len(avoid)} held-out "
                       "colours after 100 draws; lower procedural.margin")


class TextureFiles:
    """Generated tables as `TableLook`s: a flat one is its colour; a patterned one is an
    image file in a private temporary folder (removed with this object), because PyBullet
    loads textures only from files and `changeTexture` does not reach TinyRenderer."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="robotok-tex-")

    def look(self, family: str, image: np.ndarray, index: int) -> TableLook:
        import imageio.v3 as iio

        name = f"procedural/{family}/{index}"
        if family == "flat":
            return TableLook(name, colour=tuple((image[0, 0] / 255).tolist()))
        file = Path(self._dir.name) / f"{index}.png"
        iio.imwrite(file, image)
        return TableLook(name, texture=str(file))
