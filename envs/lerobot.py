"""LeRobot v3 datasets out of and into the episode store.

scripts/export_dataset.py and scripts/import_dataset.py call this module. An export is a
folder in LeRobot's dataset format, codebase version v3.0, which LeRobot's
`LeRobotDataset(repo_id, root=...)` and its tools read without robotok:

    README.md                          dataset card: robotok version, splits, how to regenerate
    meta/info.json                     fps, counts, path templates, features (+ a "robotok" block)
    meta/stats.json                    per-feature min/max/mean/std/count/q01..q99
    meta/tasks.parquet                 task string (the instruction) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, where its
                                       rows and frames are, per-episode stats, seed/split/success
    data/chunk-000/file-000.parquet    one row per step, many episodes per file
    videos/observation.images.front/chunk-000/file-000.mp4   the front camera, episodes
                                       back to back; from/to timestamps in the episode rows
    videos/observation.images.wrist/...                      the wrist camera, if stored

Features keep robotok's names (docs/CONTRACTS.md, "The map"): `action` is the oracle's clean
label with `names` from the action spec, `executed_action` what the env received,
`observation.state` with the state names; the instruction is the episode's task string; fps
is the control rate. The import accepts those names (or a user's mapping) and refuses, naming
it, any feature that has no place in the store, any action layout other than the action
spec's, and any rate other than the control rate, so imported data keeps robotok's action
conventions. Episodes with visual prompts (an instruction with "{image}" slots, a store
collected with collect.visual_prompts) are refused: LeRobot v3 has per-step features and
per-episode scalars, no per-episode images, so the crops would be lost and the task string
would name objects by slots nothing fills.

pyarrow writes the parquet files and PyAV (FFmpeg) the mp4 files: the optional extra
`robotok[lerobot]`. They are imported when an export or import runs, not with this module.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from envs.spec import (
    CONTROL_HZ,
    DEFAULT_ACTION_SPEC,
    IMAGE,
    PROMPT_SLOT,
    STATE_NAMES,
    WRIST_IMAGE,
    ActionSpec,
    prompt_slots,
)
from envs.store import Episode, EpisodeStore, ShardWriter, shard_name

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"

# Store key -> LeRobot feature name. Cameras follow LeRobot's `observation.images.<camera>`.
FEATURE_NAMES: dict[str, str] = {
    IMAGE: "observation.images.front",
    WRIST_IMAGE: "observation.images.wrist",
    "state": "observation.state",
    "action": "action",
    "executed_action": "executed_action",
}
STORE_KEYS: tuple[str, ...] = tuple(FEATURE_NAMES)
# Per-frame bookkeeping columns every LeRobot dataset has.
INDEX_FEATURES: dict[str, str] = {
    "timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
    "index": "int64", "task_index": "int64",
}
QUANTILES: tuple[float, ...] = (0.01, 0.10, 0.50, 0.90, 0.99)
VIDEO_CODECS: tuple[str, ...] = ("libsvtav1", "h264", "hevc")  # what LeRobot encodes with
PIX_FMTS: tuple[str, ...] = ("yuv420p", "yuv444p")
# Split names of robotok's zero-shot levels (conf/split/), for the dataset card.
SPLIT_DESCRIPTIONS: dict[str, str] = {
    "seen": "nothing new but placements and seeds (training content)",
    "unseen_combo": "colour x shape pairings held out of training",
    "unseen_object": "object geometries never seen in training",
    "unseen_instruction": "paraphrases and verbs never seen in training templates",
    "distractors": "more distractor objects than training ever had",
    "backgrounds": "table colours/textures and lighting never seen in training",
}


class FeatureMapError(ValueError):
    """A LeRobot feature (or its layout) has no place in the episode store; names it."""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"LeRobot export/import needs {module!r}: pip install -e '.[lerobot]' "
            "(pyarrow writes parquet, av encodes mp4)"
        ) from err


# ----------------------------------------------------------------------------- statistics


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's per-feature stats of an (N, D) array: min/max/mean/std/count/q01..q99."""
    v = np.asarray(values, dtype=np.float64)
    out = {"min": v.min(axis=0), "max": v.max(axis=0), "mean": v.mean(axis=0),
           "std": v.std(axis=0), "count": np.array([len(v)])}
    for q, row in zip(QUANTILES, np.quantile(v, QUANTILES, axis=0), strict=True):
        out[f"q{round(q * 100):02d}"] = row
    return out


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 (T, H, W, 3) frames in [0, 1], shaped (3, 1, 1) as LeRobot's."""
    pixels = frames.reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    stats = feature_stats(pixels)
    stats["count"] = np.array([len(frames)])
    return {k: v if k == "count" else v.reshape(-1, 1, 1) for k, v in stats.items()}


def aggregate_image_stats(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Episode image stats -> dataset stats: exact min/max/mean/std, count-weighted quantiles."""
    counts = np.array([float(p["count"][0]) for p in parts])
    w = (counts / counts.sum()).reshape(-1, 1, 1, 1)
    means = np.stack([p["mean"] for p in parts])
    mean = (w * means).sum(axis=0)
    var = (w * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(axis=0)
    out = {"min": np.min([p["min"] for p in parts], axis=0),
           "max": np.max([p["max"] for p in parts], axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(counts.sum())])}
    for key in (k for k in parts[0] if k.startswith("q")):
        out[key] = (w * np.stack([p[key] for p in parts])).sum(axis=0)
    return out


def _jsonable(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


# ----------------------------------------------------------------------------- selection


@dataclass
class ExportConfig:
    """What to export and how (conf/export_dataset.yaml)."""

    store: str
    output: str
    tasks: list[str] | None = None  # robotok task names (pick, push, ...); None: all
    splits: list[str] | None = None  # split names (seen, unseen_combo, ...); None: all
    episodes: int | None = None  # the first N episodes that pass the filters; None: all
    success_only: bool = False  # drop episodes recorded with success=false
    repo_id: str = "robotok/demos"  # the name a user would push it under
    robot_type: str = "panda"
    license: str = "apache-2.0"
    vcodec: str = "libsvtav1"
    pix_fmt: str = "yuv420p"
    crf: int = 30
    gop: int = 2  # keyframe interval; LeRobot's default keeps random access cheap
    chunks_size: int = 1000  # files per chunk folder
    data_files_size_in_mb: float = 100.0
    video_files_size_in_mb: float = 200.0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.vcodec not in VIDEO_CODECS:
            raise ValueError(f"vcodec {self.vcodec!r}; expected one of {VIDEO_CODECS}")
        if self.pix_fmt not in PIX_FMTS:
            raise ValueError(f"pix_fmt {self.pix_fmt!r}; expected one of {PIX_FMTS}")
        if self.vcodec != "h264" and self.pix_fmt == "yuv444p":
            raise ValueError(f"pix_fmt yuv444p works with vcodec h264 only; got {self.vcodec!r}")
        if not 0 <= self.crf <= 63:
            raise ValueError(f"crf {self.crf}; expected 0..63")
        if self.gop < 1:
            raise ValueError(f"gop {self.gop}; expected >= 1")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"episodes {self.episodes}; expected >= 1 or null for all")
        if self.chunks_size < 1:
            raise ValueError(f"chunks_size {self.chunks_size}; expected >= 1")
        for name in ("data_files_size_in_mb", "video_files_size_in_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)}; expected > 0")


def select_episodes(store: EpisodeStore, tasks: Sequence[str] | None = None,
                    splits: Sequence[str] | None = None, episodes: int | None = None,
                    success_only: bool = False) -> list[int]:
    """Store-wide episode indices passing the filters, grouped by split (in the order of
    `splits`, else the store's), store order within a split, then cut to the first `episodes`."""
    for kind, wanted, have in (("task", tasks, store.tasks), ("split", splits, store.splits)):
        unknown = sorted(set(wanted or ()) - set(have))
        if unknown:
            raise ValueError(f"{kind}s {unknown} are not in store {store.path}; it holds {have}")
    table = store.episode_table()
    keep = np.ones(len(table.seed), dtype=bool)
    if tasks:
        keep &= np.isin(table.task_id, [store.tasks.index(t) for t in tasks])
    if success_only:
        keep &= table.success
    order = splits or store.splits
    chosen = [int(i) for s in order for i in np.flatnonzero(
        keep & (table.split_id == store.splits.index(s)))]
    chosen = chosen[:episodes] if episodes is not None else chosen
    if not chosen:
        raise ValueError(f"no episode of store {store.path} passes tasks={tasks} "
                         f"splits={splits} success_only={success_only}")
    return chosen


# ----------------------------------------------------------------------------- writing


def check_no_visual_prompts(store: EpisodeStore, chosen: Sequence[int]) -> None:
    """Refuse episodes that show an object by image: LeRobot v3 has no per-episode image
    field for their crops, and the task string would keep slots that nothing fills."""
    if store.prompt_image_shape is None:
        return
    slots = np.array([prompt_slots(sh.episode_instruction(j))
                      for sh in store.shards for j in range(sh.num_episodes)])
    prompted = [int(i) for i in chosen if slots[i] > 0]
    if prompted:
        raise ValueError(
            f"store {store.path} has visual prompts: {len(prompted)} of the {len(chosen)} "
            f"selected episodes (e.g. episode {prompted[0]}) name an object by an image crop "
            f"({PROMPT_SLOT!r} in the instruction). The LeRobot v3 format has no per-episode "
            "image field to carry the crops, and the task string would keep slots nothing "
            "fills, so such episodes are not exported; export a store collected with "
            "collect.visual_prompts=0")


class _RollingParquet:
    """Rows for data/chunk-XXX/file-YYY.parquet; a new file once the current one is full."""

    def __init__(self, root: Path, template: str, schema: Any, max_mb: float, chunks_size: int):
        self.pa = _require("pyarrow")
        self.pq = _require("pyarrow.parquet")
        self.root, self.template, self.schema = root, template, schema
        self.max_bytes, self.chunks_size = max_mb * 2**20, chunks_size
        self.chunk = self.file = 0
        self.tables: list[Any] = []
        self.bytes = 0

    def add(self, columns: dict[str, Any]) -> tuple[int, int]:
        """Append one episode's rows; returns the (chunk, file) they land in."""
        if self.tables and self.bytes >= self.max_bytes:
            self._flush()
            self.chunk, self.file = _next_file(self.chunk, self.file, self.chunks_size)
        table = self.pa.table(columns, schema=self.schema)
        self.tables.append(table)
        self.bytes += table.nbytes
        return self.chunk, self.file

    def _flush(self) -> None:
        path = self.root / self.template.format(chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pq.write_table(self.pa.concat_tables(self.tables), path)
        self.tables, self.bytes = [], 0

    def close(self) -> None:
        if self.tables:
            self._flush()


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)


class _VideoWriter:
    """One camera's episodes back to back in videos/<key>/chunk-XXX/file-YYY.mp4."""

    def __init__(self, root: Path, key: str, fps: int, height: int, width: int,
                 cfg: ExportConfig) -> None:
        self.av = _require("av")
        if cfg.pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ValueError(f"{key}: frames of {height}x{width} cannot be encoded as yuv420p "
                             "(even height and width expected); use pix_fmt=yuv444p with h264")
        self.root, self.key, self.fps, self.cfg = root, key, fps, cfg
        self.height, self.width = height, width
        self.chunk = self.file = 0
        self.container: Any = None
        self.frames = 0  # frames in the open file
        self.bytes = 0

    def _open(self) -> None:
        # SVT-AV1 prints its whole configuration to stderr for every file unless told not to.
        os.environ.setdefault("SVT_LOG", "1")
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk,
                                             file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = self.av.open(str(path), mode="w")
        options = {"g": str(self.cfg.gop), "crf": str(self.cfg.crf)}
        if self.cfg.vcodec == "libsvtav1":
            options["preset"] = "12"  # fastest SVT-AV1 preset, as LeRobot records
        self.stream = self.container.add_stream(self.cfg.vcodec, rate=self.fps, options=options)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = self.cfg.pix_fmt
        self.frames = self.bytes = 0

    def add(self, frames: np.ndarray) -> tuple[int, int, float, float]:
        """Encode one episode's frames; returns (chunk, file, from_timestamp, to_timestamp)."""
        if self.container is not None and self.bytes >= self.cfg.video_files_size_in_mb * 2**20:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file, self.cfg.chunks_size)
        if self.container is None:
            self._open()
        start = self.frames
        for img in frames:
            frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
            self._mux(self.stream.encode(frame))
            self.frames += 1
        return self.chunk, self.file, start / self.fps, self.frames / self.fps

    def _mux(self, packets: Sequence[Any]) -> None:
        for packet in packets:
            self.bytes += packet.size
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            self._mux(self.stream.encode(None))
            self.container.close()
            self.container = None


def _video_info(path: Path) -> dict[str, Any]:
    """The `info` block LeRobot keeps per video feature, read back from the written file."""
    av = _require("av")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": stream.height, "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt, "video.is_depth_map": False,
            "video.fps": int(stream.base_rate), "video.channels": 3, "has_audio": False,
        }


def build_features(store: EpisodeStore, action_names: list[str],
                   state_names: list[str]) -> dict[str, dict[str, Any]]:
    """info.json's `features` for a store: cameras as video, vectors named after the specs."""
    h, w, c = store.image_shape
    features: dict[str, dict[str, Any]] = {}
    for key in store.image_keys:
        features[FEATURE_NAMES[key]] = {"dtype": "video", "shape": [h, w, c],
                                        "names": ["height", "width", "channels"]}
    features[FEATURE_NAMES["state"]] = {"dtype": "float32", "shape": [len(state_names)],
                                        "names": state_names}
    for key in ("action", "executed_action"):
        features[FEATURE_NAMES[key]] = {"dtype": "float32", "shape": [len(action_names)],
                                        "names": action_names}
    for name, dtype in INDEX_FEATURES.items():
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _arrow_schema(features: dict[str, dict[str, Any]]) -> Any:
    pa = _require("pyarrow")
    fields = []
    for name, ft in features.items():
        if ft["dtype"] == "video":
            continue
        scalar = pa.float32() if ft["dtype"] == "float32" else pa.int64()
        # Fixed-length lists: what a `datasets.Sequence(length=D)` feature is in arrow.
        fields.append(pa.field(name, scalar if ft["shape"] == [1] else
                               pa.list_(scalar, ft["shape"][0])))
    return pa.schema(fields)


@dataclass
class ExportReport:
    output: str
    episodes: int
    frames: int
    tasks: int
    seconds: float
    bytes: int  # on disk, whole dataset folder
    video_bytes: int
    splits: dict[str, str]


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _git_revision() -> str | None:
    """The checkout's short revision, "-dirty" when envs/, policy/ or conf/ have local edits;
    None outside a git checkout (an installed package)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=root, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "envs", "policy", "conf"],
                               capture_output=True, text=True, cwd=root, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _robotok_version() -> str:
    try:
        from importlib.metadata import version

        return version("robotok")
    except Exception:  # not installed (run from a bare checkout)
        return "unknown"


def _prepare_output(path: Path, overwrite: bool, source: Path, marker: str) -> Path:
    """A fresh temporary folder beside `path`; renamed into place when complete.

    overwrite replaces only what an earlier run wrote (a folder holding `marker`), and never
    the source or a folder around or inside it.
    """
    out, src = path.resolve(), source.resolve()
    if out == src or src in out.parents or out in src.parents:
        raise ValueError(f"output {path} overlaps the source {source}; choose another folder")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output {path} exists and is not empty; set overwrite=true")
        if not any(path.glob(marker)):
            raise FileExistsError(f"output {path} is not an earlier output (no {marker}); "
                                  "overwrite=true replaces only those")
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _finish_output(tmp: Path, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


@dataclass
class _Written:
    """What writing the episodes leaves for meta/: episode rows, tasks, stats inputs."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    tasks: dict[str, int] = field(default_factory=dict)  # instruction -> task_index
    vectors: dict[str, list[np.ndarray]] = field(default_factory=dict)
    image_stats: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    splits: dict[str, list[int]] = field(default_factory=dict)  # split -> [first, end)
    frames: int = 0


def _write_episodes(store: EpisodeStore, chosen: list[int], root: Path, schema: Any,
                    fps: int, cfg: ExportConfig) -> _Written:
    """data/ and videos/ for the chosen episodes, one episode at a time."""
    pa = _require("pyarrow")
    h, w, _ = store.image_shape
    data = _RollingParquet(root, DATA_PATH, schema, cfg.data_files_size_in_mb, cfg.chunks_size)
    videos = {k: _VideoWriter(root, FEATURE_NAMES[k], fps, h, w, cfg) for k in store.image_keys}
    out = _Written(vectors={n: [] for n in schema.names},
                   image_stats={k: [] for k in store.image_keys})
    try:
        for e, i in enumerate(chosen):
            ep = store.episode(i)
            n, start = len(ep), out.frames
            cols: dict[str, np.ndarray] = {
                FEATURE_NAMES["state"]: ep.state, FEATURE_NAMES["action"]: ep.action,
                FEATURE_NAMES["executed_action"]: ep.executed_action,
                "timestamp": (np.arange(n) / fps).astype(np.float32),
                "frame_index": np.arange(n, dtype=np.int64),
                "episode_index": np.full(n, e, dtype=np.int64),
                "index": np.arange(start, start + n, dtype=np.int64),
                "task_index": np.full(n, out.tasks.setdefault(ep.instruction, len(out.tasks)),
                                      dtype=np.int64),
            }
            chunk, file = data.add({k: _arrow_column(pa, v, schema.field(k).type)
                                    for k, v in cols.items()})
            row: dict[str, Any] = {
                "episode_index": e, "tasks": [ep.instruction], "length": n,
                "data/chunk_index": chunk, "data/file_index": file,
                "dataset_from_index": start, "dataset_to_index": start + n,
            }
            for key, frames in ep.images().items():
                name = FEATURE_NAMES[key]
                where = videos[key].add(frames)
                row.update(zip([f"videos/{name}/{c}" for c in (
                    "chunk_index", "file_index", "from_timestamp", "to_timestamp")], where,
                    strict=True))
                st = image_stats(frames)
                out.image_stats[key].append(st)
                row.update({f"stats/{name}/{k}": v.tolist() for k, v in st.items()})
            for name, values in cols.items():
                v2 = values.reshape(n, -1)
                out.vectors[name].append(v2)
                row.update({f"stats/{name}/{k}": v.tolist()
                            for k, v in feature_stats(v2).items()})
            # Episode facts LeRobot has no column for; the import reads them back.
            row.update({"seed": ep.seed, "success": ep.success, "split": ep.split,
                        "robotok_task": ep.task, "meta/episodes/chunk_index": 0,
                        "meta/episodes/file_index": 0})
            out.rows.append(row)
            out.splits.setdefault(ep.split, [e, e])[1] = e + 1
            out.frames += n
        data.close()
    finally:
        for v in videos.values():
            v.close()
    return out


def export_lerobot(cfg: ExportConfig) -> ExportReport:
    """Write the selected episodes of `cfg.store` as a LeRobot v3 dataset at `cfg.output`.

    The dataset is built in `<output>.partial` and renamed into place when complete, so a
    failed or killed export never leaves a half dataset under the output's name.
    """
    pa = _require("pyarrow")
    pq = _require("pyarrow.parquet")
    _require("av")
    t0 = time.perf_counter()
    store = EpisodeStore(cfg.store)
    chosen = select_episodes(store, cfg.tasks, cfg.splits, cfg.episodes, cfg.success_only)
    check_no_visual_prompts(store, chosen)
    info_src = store.info
    spec = (ActionSpec.from_dict(info_src["action_spec"]) if "action_spec" in info_src
            else DEFAULT_ACTION_SPEC)
    fps = int(info_src.get("control_hz", CONTROL_HZ))
    features = build_features(store, spec.names, list(info_src.get("state_names", STATE_NAMES)))
    schema = _arrow_schema(features)
    out = Path(cfg.output)
    root = _prepare_output(out, cfg.overwrite, store.path, INFO_PATH)
    try:
        written = _write_episodes(store, chosen, root, schema, fps, cfg)
        for key in store.image_keys:
            name = FEATURE_NAMES[key]
            features[name]["info"] = _video_info(
                root / VIDEO_PATH.format(video_key=name, chunk_index=0, file_index=0))
        episodes_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(written.rows), episodes_path)
        _write_tasks(root, list(written.tasks))
        stats = {n: feature_stats(np.concatenate(p)) for n, p in written.vectors.items()}
        stats.update({FEATURE_NAMES[k]: aggregate_image_stats(p)
                      for k, p in written.image_stats.items()})
        (root / STATS_PATH).write_text(json.dumps(_jsonable(stats), indent=2))
        splits = {s: f"{a}:{b}" for s, (a, b) in written.splits.items()}
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": cfg.robot_type,
            "total_episodes": len(chosen),
            "total_frames": written.frames,
            "total_tasks": len(written.tasks),
            "chunks_size": cfg.chunks_size,
            "data_files_size_in_mb": cfg.data_files_size_in_mb,
            "video_files_size_in_mb": cfg.video_files_size_in_mb,
            "fps": fps,
            "splits": splits,
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": features,
            # Not read by LeRobot: what a robotok import restores (env description, spec).
            "robotok": {
                "version": _robotok_version(), "git_revision": _git_revision(),
                "source_store": str(store.path), "selection": {
                    "tasks": cfg.tasks, "splits": cfg.splits, "episodes": cfg.episodes,
                    "success_only": cfg.success_only},
                "store_info": {k: v for k, v in store.shards[0].info.items() if k != "counts"},
            },
        }
        (root / INFO_PATH).write_text(json.dumps(info, indent=4))
        (root / "README.md").write_text(dataset_card(info, cfg, store))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    _finish_output(root, out)
    return ExportReport(
        output=str(out), episodes=len(chosen), frames=written.frames, tasks=len(written.tasks),
        seconds=time.perf_counter() - t0, bytes=_dir_bytes(out),
        video_bytes=_dir_bytes(out / "videos") if (out / "videos").exists() else 0,
        splits=splits,
    )


def _arrow_column(pa: Any, values: np.ndarray, type_: Any) -> Any:
    if pa.types.is_fixed_size_list(type_):
        flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=type_.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, type_.list_size)
    return pa.array(values, type=type_)


def _write_tasks(root: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as LeRobot writes it from pandas: the task string is the frame's
    index (LeRobot looks tasks up with `tasks.iloc[i].name`), task_index its one column."""
    pa = _require("pyarrow")
    pq = _require("pyarrow.parquet")
    table = pa.table({"task_index": pa.array(range(len(tasks)), type=pa.int64()),
                      "task": pa.array(tasks, type=pa.string())})
    # The pandas metadata that makes pandas.read_parquet restore "task" as the index.
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [], "creator": {"library": "pyarrow"},
        "pandas_version": "2.0.0",
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, root / TASKS_PATH)


# Collection settings that decide which episodes a rerun of scripts/collect.py records.
COLLECT_KEYS: tuple[str, ...] = (
    "tasks", "split", "split_overrides", "episodes", "workers", "seed_start", "max_steps",
    "noise_std", "noise_dims", "keep_failures", "max_attempts_factor",
)


def _override(value: Any) -> str:
    """A value as hydra's override grammar writes it: [a,b], {k: v}, true, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_override(v)}" for k, v in value.items()) + "}"
    return str(value)


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in "[]{} ") else arg


def dataset_card(info: dict[str, Any], cfg: ExportConfig, store: EpisodeStore) -> str:
    """README.md of the dataset: what it holds, robotok's version, splits, how to regenerate."""
    rb = info["robotok"]
    collection = rb["store_info"].get("collection") or {}
    collect_args = [f"collect.{k}={_override(collection[k])}" for k in COLLECT_KEYS
                    if k in collection and collection[k] is not None]
    if collection:
        collect_args += [f"env.image_size={collection.get('image_size')}",
                         f"env.wrist_camera={_override(bool(collection.get('wrist_camera')))}"]
    collect_cmd = " ".join(["python scripts/collect.py output=data/demos",
                            *(_quote(a) for a in collect_args)])
    export_args = [f"export.{k}={_override(getattr(cfg, k))}"
                   for k in ("tasks", "splits", "episodes") if getattr(cfg, k) is not None]
    export_args += ["export.success_only=true"] if cfg.success_only else []
    export_cmd = " ".join(["python scripts/export_dataset.py store=data/demos "
                           "output=data/lerobot", *(_quote(a) for a in export_args)])
    split_rows = "\n".join(
        f"| {name} | {desc} | {info['splits'].get(name, '-')} |"
        for name, desc in SPLIT_DESCRIPTIONS.items())
    feature_rows = "\n".join(
        f"| `{name}` | {ft['dtype']} | {ft['shape']} | "
        f"{', '.join(ft['names']) if ft['names'] else ''} |"
        for name, ft in info["features"].items())
    revision = rb["git_revision"] or "unknown"
    return f"""---
license: {cfg.license}
task_categories:
- robotics
tags:
- LeRobot
- robotok
- simulation
- pybullet
- language-conditioned
configs:
- config_name: default
  data_files: data/*/*.parquet
---

# {cfg.repo_id}

Simulated, language-annotated manipulation episodes from robotok (a PyBullet Panda at a
table; scripted oracle demonstrations), in LeRobot's dataset format {CODEBASE_VERSION}:
{info['total_episodes']} episodes, {info['total_frames']} frames at {info['fps']} fps (the
control rate), {info['total_tasks']} distinct instructions. Each episode's task string is its
instruction.

- robotok version: {rb['version']} (git revision {revision})
- robot type: {info['robot_type']}; renderer: {rb['store_info'].get('renderer', 'unknown')}
- `action` is the oracle's clean label, normalized to [-1, 1] per dimension
  ({', '.join(info['features']['action']['names'])}); `executed_action` is what the
  simulator received (the label plus DART noise). The action spec with physical units is
  in `meta/info.json` under `robotok.store_info.action_spec`.
- Episode rows (`meta/episodes/`) also carry robotok's `seed` (the env seed that reproduces
  the episode), `split`, `success` and `robotok_task`.

## Splits

robotok evaluates zero-shot at six levels; training content is `seen` only. The episode
ranges below are this export's (`splits` in `meta/info.json`).

| split | what is new at test time | episodes |
|---|---|---|
{split_rows}

## Features

| feature | dtype | shape | names |
|---|---|---|---|
{feature_rows}

## How to regenerate

From a robotok checkout at revision {revision} (the one that exported this dataset; the
collection settings below come from the store's metadata):

```bash
{collect_cmd}
{export_cmd}
```

Load it with LeRobot:

```python
from lerobot.datasets.lerobot_dataset import LeRobotDataset
dataset = LeRobotDataset("{cfg.repo_id}", root="path/to/this/folder")
```

Back into a robotok episode store: `python scripts/import_dataset.py source=<this folder>
output=data/imported`.
"""


# ----------------------------------------------------------------------------- reading


@dataclass
class ImportConfig:
    """How to read a LeRobot v3 dataset into an episode store (conf/import_dataset.yaml)."""

    source: str
    output: str
    # Extra LeRobot feature -> store key (image, wrist_image, state, action, executed_action),
    # on top of the names an export writes, e.g. {observation.images.top: image}.
    features: dict[str, str] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)  # features to drop (e.g. next.reward)
    task: str = "imported"  # robotok task name when the episodes do not carry one
    split: str = "seen"  # split when the episodes do not carry one
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name, key in self.features.items():
            if key not in STORE_KEYS:
                raise ValueError(f"features[{name!r}] = {key!r}; expected one of {STORE_KEYS}")


@dataclass
class ImportReport:
    output: str
    episodes: int
    steps: int
    seconds: float


def _names(ft: dict[str, Any]) -> list[str] | None:
    names = ft.get("names")
    if isinstance(names, dict):  # older LeRobot: {"motors": [...]}
        names = next(iter(names.values()), None)
    return list(names) if names is not None else None


def map_features(info: dict[str, Any], cfg: ImportConfig) -> dict[str, str]:
    """Store key -> LeRobot feature for `info`, or FeatureMapError naming what does not map."""
    mapping = {**{v: k for k, v in FEATURE_NAMES.items()}, **cfg.features}
    features = info.get("features") or {}
    out: dict[str, str] = {}
    for name, ft in features.items():
        if name in INDEX_FEATURES or name in cfg.ignore:
            continue
        key = mapping.get(name)
        if key is None:
            raise FeatureMapError(
                f"feature {name!r} ({ft.get('dtype')} {ft.get('shape')}) does not map to the "
                f"episode store, whose keys are {list(STORE_KEYS)}; map it with "
                f"'+import.features={{{name}: <key>}}' or drop it with 'import.ignore=[{name}]'")
        if key in out:
            raise FeatureMapError(f"features {out[key]!r} and {name!r} both map to {key!r}")
        out[key] = name
    for key in (IMAGE, "state", "action"):
        if key not in out:
            raise FeatureMapError(
                f"no feature maps to {key!r} (have {sorted(features)}); expected "
                f"{FEATURE_NAMES[key]!r} or a mapping '+import.features={{<feature>: {key}}}'")
    return out


def _check_layout(info: dict[str, Any], mapping: dict[str, str], spec: ActionSpec,
                  state_names: list[str]) -> tuple[int, int]:
    """Check dtypes, shapes and names against robotok's contracts; returns image (H, W)."""
    feats = info["features"]
    for key, want in (("action", spec.names), ("executed_action", spec.names),
                      ("state", state_names)):
        if key not in mapping:
            continue
        name, ft = mapping[key], feats[mapping[key]]
        if ft.get("dtype") not in ("float32", "float64"):
            raise FeatureMapError(f"feature {name!r} has dtype {ft.get('dtype')!r}; expected "
                                  f"float32 for store key {key!r}")
        names = _names(ft)
        if list(ft.get("shape", [])) != [len(want)] or names != want:
            what = "action spec" if key != "state" else "state layout"
            raise FeatureMapError(
                f"feature {name!r} has shape {ft.get('shape')} and names {names}; robotok's "
                f"{what} is {want} ({len(want)} dims); convert the dataset to that layout first")
    shapes = {}
    for key in (IMAGE, WRIST_IMAGE):
        if key not in mapping:
            continue
        name, ft = mapping[key], feats[mapping[key]]
        if ft.get("dtype") not in ("video", "image"):
            raise FeatureMapError(f"feature {name!r} has dtype {ft.get('dtype')!r}; expected "
                                  f"video or image for store key {key!r}")
        shape, names = list(ft["shape"]), _names(ft) or ["height", "width", "channels"]
        # Some datasets say "channel"; both orders (HWC, CHW) occur.
        dims = {("channels" if n == "channel" else n): d
                for n, d in zip(names, shape, strict=False)}
        hwc = (dims.get("height"), dims.get("width"), dims.get("channels"))
        if None in hwc or hwc[2] != 3:
            raise FeatureMapError(f"feature {name!r} has shape {shape} names {names}; expected "
                                  "RGB frames (height, width, 3 channels)")
        shapes[name] = hwc[:2]
    if len(set(shapes.values())) > 1:
        raise FeatureMapError(f"cameras have different frame sizes {shapes}; the store keeps "
                              "one image shape for all cameras")
    return next(iter(shapes.values()))


class _FrameReader:
    """Decodes frames of one video key by timestamp, streaming through each file."""

    def __init__(self, root: Path, template: str, key: str, fps: int) -> None:
        self.av = _require("av")
        self.root, self.template, self.key, self.fps = root, template, key, fps
        self.path: Path | None = None
        self.frames: Iterator[tuple[float, np.ndarray]] | None = None
        self.last: tuple[float, np.ndarray] | None = None

    def _open(self, path: Path) -> None:
        if self.path is not None:
            self.container.close()
        self.container = self.av.open(str(path))
        self.path = path

        # One reformatter for the whole file: it keeps its colour-conversion context, which
        # frame.to_ndarray(format=...) rebuilds for every frame (twice the time at 64 px).
        reformatter = self.av.video.reformatter.VideoReformatter()

        def gen() -> Iterator[tuple[float, np.ndarray]]:
            for frame in self.container.decode(video=0):
                rgb = reformatter.reformat(frame, format="rgb24")
                yield float(frame.pts * frame.time_base), rgb.to_ndarray()

        self.frames, self.last = gen(), None

    def read(self, chunk: int, file: int, timestamps: np.ndarray) -> np.ndarray:
        """Frames at `timestamps` (seconds into the file), each within half a frame period."""
        path = self.root / self.template.format(video_key=self.key, chunk_index=chunk,
                                                file_index=file)
        if not path.is_file():
            raise FileNotFoundError(f"video {path} of feature {self.key!r} is missing")
        tol = 0.5 / self.fps
        if path != self.path or (self.last is not None and timestamps[0] < self.last[0] - tol):
            self._open(path)
        out = []
        for ts in timestamps:
            while self.last is None or self.last[0] < ts - tol:
                self.last = next(self.frames, None)
                if self.last is None:
                    raise ValueError(f"{path}: no frame at {ts:.4f} s (video ends before it)")
            if abs(self.last[0] - ts) > tol:
                raise ValueError(f"{path}: nearest frame to {ts:.4f} s is at "
                                 f"{self.last[0]:.4f} s (more than half a frame away)")
            out.append(self.last[1])
        return np.stack(out)

    def close(self) -> None:
        if self.path is not None:
            self.container.close()
            self.path = None


def _decode_image_column(values: list[Any]) -> np.ndarray:
    """Frames of an `image` feature: parquet structs {bytes, path} of PNG/JPEG files."""
    import io

    from PIL import Image

    out = []
    for v in values:
        raw = v["bytes"] if v.get("bytes") is not None else Path(v["path"]).read_bytes()
        out.append(np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
    return np.stack(out)


def _read_tasks(root: Path) -> dict[int, str]:
    pq = _require("pyarrow.parquet")
    path = root / TASKS_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; a LeRobot v3 dataset has one")
    table = pq.read_table(path)
    text_cols = [c for c in table.column_names if c != "task_index"]
    col = "task" if "task" in text_cols else (text_cols[0] if text_cols else None)
    if col is None or "task_index" not in table.column_names:
        raise ValueError(f"{path} has columns {table.column_names}; expected task_index and "
                         "the task string (column 'task' or the pandas index)")
    return dict(zip(table.column("task_index").to_pylist(), table.column(col).to_pylist(),
                    strict=True))


def _read_episode_rows(root: Path) -> list[dict[str, Any]]:
    pq = _require("pyarrow.parquet")
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root / 'meta/episodes'} holds no chunk-*/file-*.parquet")
    rows = []
    for f in files:
        table = pq.read_table(f)
        keep = [c for c in table.column_names if not c.startswith("stats/")]
        rows += table.select(keep).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


def import_lerobot(cfg: ImportConfig) -> ImportReport:
    """Read the LeRobot v3 dataset at `cfg.source` into a one-shard store at `cfg.output`."""
    pq = _require("pyarrow.parquet")
    t0 = time.perf_counter()
    root = Path(cfg.source)
    info_path = root / INFO_PATH
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} is missing; not a LeRobot dataset")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{info_path}: codebase_version {version!r}; this import reads v3.x "
                         "(convert older datasets with LeRobot's v2.1 -> v3.0 script)")
    robotok = info.get("robotok") or {}
    store_info = dict(robotok.get("store_info") or {})
    spec = (ActionSpec.from_dict(store_info["action_spec"]) if "action_spec" in store_info
            else DEFAULT_ACTION_SPEC)
    state_names = list(store_info.get("state_names", STATE_NAMES))
    want_hz = int(store_info.get("control_hz", CONTROL_HZ))
    fps = int(info.get("fps", 0))
    if fps != want_hz:
        raise FeatureMapError(f"{info_path}: fps {fps}; robotok's actions are per control step "
                              f"at {want_hz} Hz, so a dataset at another rate does not map")
    mapping = map_features(info, cfg)
    height, width = _check_layout(info, mapping, spec, state_names)
    tasks = _read_tasks(root)
    episodes = _read_episode_rows(root)
    image_keys = [k for k in (IMAGE, WRIST_IMAGE) if k in mapping]
    feats = info["features"]
    readers = {k: _FrameReader(root, info.get("video_path") or VIDEO_PATH, mapping[k], fps)
               for k in image_keys if feats[mapping[k]]["dtype"] == "video"}
    store_info.setdefault("action_spec", spec.to_dict())
    store_info.setdefault("state_names", state_names)
    store_info.setdefault("control_hz", want_hz)
    store_info["imported_from"] = {"path": str(root.resolve()), "codebase_version": version,
                                   "features": mapping}
    out = Path(cfg.output)
    tmp = _prepare_output(out, cfg.overwrite, root, "shard-*")
    writer = ShardWriter(tmp / shard_name(0), info=store_info, image_shape=(height, width, 3),
                         image_keys=image_keys, state_dim=len(state_names),
                         action_dim=len(spec))
    data_template = info.get("data_path") or DATA_PATH
    table, table_key, steps = None, None, 0
    try:
        for row in episodes:
            e = int(row["episode_index"])
            key = (row["data/chunk_index"], row["data/file_index"])
            if key != table_key:
                path = root / data_template.format(chunk_index=key[0], file_index=key[1])
                table, table_key = pq.read_table(path), key
            ep_rows = _episode_table(table, e)
            n = ep_rows.num_rows
            if n == 0 or n != int(row.get("length", n)):
                raise ValueError(f"episode {e}: {n} rows in {path}, episode metadata says "
                                 f"length {row.get('length')}")
            arrays = {k: _vector(ep_rows, mapping[k], e) for k in ("state", "action",
                                                                   "executed_action")
                      if k in mapping}
            arrays.setdefault("executed_action", arrays["action"])
            bad = np.argwhere((arrays["action"] < spec.low) | (arrays["action"] > spec.high))
            if len(bad):
                step, dim = bad[0]
                raise FeatureMapError(
                    f"episode {e} step {step}: action {spec.names[dim]} = "
                    f"{arrays['action'][step, dim]:.4f} outside the action spec's "
                    f"[{spec.low[dim]}, {spec.high[dim]}]; robotok actions are normalized")
            timestamps = np.asarray(ep_rows.column("timestamp").to_pylist(), dtype=np.float64)
            images = {}
            for k in image_keys:
                name = mapping[k]
                if k in readers:
                    images[k] = readers[k].read(
                        row[f"videos/{name}/chunk_index"], row[f"videos/{name}/file_index"],
                        row[f"videos/{name}/from_timestamp"] + timestamps)
                else:
                    images[k] = _decode_image_column(ep_rows.column(name).to_pylist())
            task_idx = ep_rows.column("task_index")[0].as_py()
            instruction = tasks.get(task_idx) or (row.get("tasks") or [""])[0]
            writer.append(Episode(
                image=images[IMAGE], wrist_image=images.get(WRIST_IMAGE),
                state=arrays["state"], action=arrays["action"],
                executed_action=arrays["executed_action"], instruction=instruction,
                task=row.get("robotok_task") or cfg.task, split=row.get("split") or cfg.split,
                seed=int(row["seed"]) if row.get("seed") is not None else e,
                success=bool(row["success"]) if row.get("success") is not None else True,
            ))
            steps += n
        writer.close()
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for r in readers.values():
            r.close()
    _finish_output(tmp, out)
    return ImportReport(output=str(out), episodes=len(episodes), steps=steps,
                        seconds=time.perf_counter() - t0)


def _episode_table(table: Any, episode: int) -> Any:
    pc = _require("pyarrow.compute")
    rows = table.filter(pc.equal(table.column("episode_index"), episode))
    return rows.sort_by("frame_index")


def _vector(table: Any, name: str, episode: int) -> np.ndarray:
    col = table.column(name).combine_chunks()
    values = col.flatten() if hasattr(col, "flatten") else col
    arr = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
    out = arr.reshape(table.num_rows, -1)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"episode {episode}: feature {name!r} has non-finite values")
    return out


def frame_error(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Codec error between uint8 frame stacks: mean and max absolute error, PSNR in dB."""
    d = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(d**2))
    return {"mae": float(np.abs(d).mean()), "max": float(np.abs(d).max()),
            "psnr": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)}
