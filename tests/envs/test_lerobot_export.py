"""LeRobot v3 export and import: round trip, selection, dataset card, errors, LeRobot's tooling."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="LeRobot export needs the extra: pip install -e '.[lerobot]'")
pytest.importorskip("av", reason="LeRobot export needs the extra: pip install -e '.[lerobot]'")

from envs.lerobot import (  # noqa: E402
    ExportConfig,
    FeatureMapError,
    ImportConfig,
    export_lerobot,
    frame_error,
    import_lerobot,
)
from envs.spec import DEFAULT_ACTION_SPEC, IMAGE, STATE_NAMES, WRIST_IMAGE  # noqa: E402
from envs.store import Episode, EpisodeStore, ShardWriter, shard_name  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
H = W = 64
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict(), "control_hz": 10,
        "state_names": list(STATE_NAMES),
        "collection": {"tasks": ["pick", "push"], "split": "seen", "episodes": 6,
                       "image_size": 64, "wrist_camera": True, "seed_start": 0,
                       "noise_std": 0.15}}
# Codec tolerance of the default export (SVT-AV1, yuv420p, crf 30) on these synthetic
# scenes: mean absolute error per frame in 8-bit levels, and PSNR. Measured on rendered
# demo frames: 2.7 mean, 3.8 worst episode, 31.9 dB (docs/experiments/2026-11-30-lerobot.md).
MAX_MAE, MIN_PSNR = 6.0, 28.0


def scene(seed: int, steps: int) -> np.ndarray:
    """Frames like a rendered table: flat background, two coloured blocks, one moving. The
    light brightens by 12 levels a step, so a frame one step off misses the tolerance."""
    rng = np.random.default_rng(seed)
    frames = np.empty((steps, H, W, 3), dtype=np.uint8)
    for t in range(steps):
        frames[t] = rng.integers(90, 110, size=3, dtype=np.uint8) + 12 * t
    frames[:, 40:, :] = rng.integers(40, 90, size=3, dtype=np.uint8)  # the table
    colours = rng.integers(0, 256, size=(2, 3), dtype=np.uint8)
    for t in range(steps):
        x = 8 + 3 * t
        frames[t, 30:42, x:x + 12] = colours[0]
        frames[t, 44:54, 40:50] = colours[1]
    return frames


def make_episode(seed: int, task: str, split: str, steps: int) -> Episode:
    rng = np.random.default_rng(seed)
    action = rng.uniform(-1, 1, size=(steps, 8)).astype(np.float32)
    return Episode(
        image=scene(seed, steps), wrist_image=scene(seed + 1000, steps),
        state=rng.normal(size=(steps, 8)).astype(np.float32), action=action,
        executed_action=np.clip(action + rng.normal(0, 0.1, action.shape), -1, 1),
        instruction=f"{task} the {('red', 'blue', 'green')[seed % 3]} block", task=task,
        split=split, seed=seed, success=seed % 5 != 4,
    )


EPISODES = [make_episode(s, ("pick", "push")[s % 2], ("seen", "unseen_combo")[s // 4], 4 + s % 3)
            for s in range(6)]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    writer = ShardWriter(root / shard_name(0), info=INFO, image_shape=(H, W, 3),
                         image_keys=(IMAGE, WRIST_IMAGE), chunk_frames=4)
    for ep in EPISODES:
        writer.append(ep)
    writer.close()
    return root


@pytest.fixture(scope="module")
def exported(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lerobot") / "ds"
    report = export_lerobot(ExportConfig(store=str(store), output=str(out), repo_id="t/ds"))
    assert (report.episodes, report.frames) == (6, sum(len(e) for e in EPISODES))
    return out


def read_info(ds: Path) -> dict:
    return json.loads((ds / "meta/info.json").read_text())


def test_round_trip_equal_arrays_and_frames_within_codec_tolerance(exported: Path,
                                                                    tmp_path: Path) -> None:
    report = import_lerobot(ImportConfig(source=str(exported), output=str(tmp_path / "back")))
    back = EpisodeStore(tmp_path / "back")
    assert (report.episodes, back.num_episodes) == (6, 6)
    assert back.image_keys == [IMAGE, WRIST_IMAGE]
    # The export orders episodes by split (seen first), store order within a split.
    for i, want in enumerate(EPISODES):
        got = back.episode(i)
        for key in ("state", "action", "executed_action"):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
        assert (got.instruction, got.task, got.split, got.seed, got.success) == (
            want.instruction, want.task, want.split, want.seed, want.success)
        for key in (IMAGE, WRIST_IMAGE):
            for t, (a, b) in enumerate(zip(getattr(got, key), getattr(want, key), strict=True)):
                err = frame_error(a, b)
                assert err["mae"] <= MAX_MAE and err["psnr"] >= MIN_PSNR, (i, key, t, err)
            # The tolerance does tell frames apart: each frame's neighbour is far outside it.
            if len(want) > 1:
                assert frame_error(getattr(got, key)[1], getattr(want, key)[0])["mae"] > MAX_MAE
    assert back.info["action_spec"] == DEFAULT_ACTION_SPEC.to_dict()
    assert back.info["renderer"] == "tiny"


def test_info_features_stats_and_tasks(exported: Path) -> None:
    import pyarrow.parquet as pq

    info = read_info(exported)
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    feats = info["features"]
    assert feats["action"]["names"] == DEFAULT_ACTION_SPEC.names
    assert feats["observation.state"]["names"] == list(STATE_NAMES)
    assert feats["observation.images.front"]["dtype"] == "video"
    assert feats["observation.images.wrist"]["info"]["video.codec"] == "av1"
    assert info["splits"] == {"seen": "0:4", "unseen_combo": "4:6"}
    tasks = pq.read_table(exported / "meta/tasks.parquet").to_pydict()
    assert sorted(tasks["task"]) == sorted({e.instruction for e in EPISODES})
    data = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    first = data.slice(0, len(EPISODES[0])).to_pydict()
    assert tasks["task"][tasks["task_index"].index(first["task_index"][0])] == \
        EPISODES[0].instruction
    np.testing.assert_allclose(first["timestamp"], np.arange(len(EPISODES[0])) / 10, atol=1e-6)
    stats = json.loads((exported / "meta/stats.json").read_text())
    all_actions = np.concatenate([e.action for e in EPISODES])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0), rtol=1e-5)
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    episodes = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert episodes["seed"] == [e.seed for e in EPISODES]
    assert episodes["length"] == [len(e) for e in EPISODES]
    assert episodes["videos/observation.images.front/to_timestamp"][-1] == pytest.approx(
        sum(len(e) for e in EPISODES) / 10)


def test_dataset_card_names_version_splits_and_commands(exported: Path) -> None:
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0")
    assert "robotok version:" in card and "LeRobot" in card
    for split in ("seen", "unseen_combo", "unseen_object", "unseen_instruction",
                  "distractors", "backgrounds"):
        assert f"| {split} |" in card
    assert "'collect.tasks=[pick,push]'" in card and "env.wrist_camera=true" in card


def test_dataset_card_commands_compose(exported: Path) -> None:
    """The card's regenerate commands parse as overrides of the scripts' hydra configs."""
    import shlex

    from hydra import compose, initialize_config_dir

    from envs.collect import register_configs

    register_configs()  # the node collect_base, as scripts/collect.py stores it
    card = (exported / "README.md").read_text()
    commands = {line.split()[1]: shlex.split(line)[2:] for line in card.splitlines()
                if line.startswith("python scripts/")}
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        collect = compose("collect", overrides=commands["scripts/collect.py"])
        export = compose("export_dataset", overrides=commands["scripts/export_dataset.py"])
    assert collect.collect.tasks == ["pick", "push"] and collect.collect.episodes == 6
    assert collect.env.wrist_camera is True and collect.collect.noise_std == 0.15
    assert export.store == "data/demos"


def test_selection_by_task_split_and_count(store: Path, tmp_path: Path) -> None:
    cfg = ExportConfig(store=str(store), output=str(tmp_path / "sel"), tasks=["push"],
                       splits=["unseen_combo", "seen"], episodes=2)
    report = export_lerobot(cfg)
    # push episodes are seeds 1, 3 (seen) and 5 (unseen_combo); unseen_combo comes first.
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "sel/meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert rows["seed"] == [5, 1] and report.episodes == 2
    assert read_info(tmp_path / "sel")["splits"] == {"unseen_combo": "0:1", "seen": "1:2"}
    assert "'export.tasks=[push]'" in (tmp_path / "sel/README.md").read_text()


def test_file_size_limits_roll_files_and_chunks(store: Path, tmp_path: Path) -> None:
    """Tiny limits put every episode in a parquet file of its own, two files per chunk
    folder, and split the videos too; the episode rows point at them and the import reads
    them all back."""
    out = tmp_path / "rolled"
    export_lerobot(ExportConfig(store=str(store), output=str(out), chunks_size=2,
                                data_files_size_in_mb=1e-6, video_files_size_in_mb=1e-6))
    data = sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet"))
    assert data[:3] == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
                        "data/chunk-001/file-000.parquet"] and len(data) == len(EPISODES)
    # The encoder holds a few frames back, so a video file rolls once its muxed bytes pass.
    videos = list((out / "videos/observation.images.wrist").rglob("*.mp4"))
    assert len(videos) >= 2
    import_lerobot(ImportConfig(source=str(out), output=str(tmp_path / "back")))
    back = EpisodeStore(tmp_path / "back")
    for i, want in enumerate(EPISODES):
        np.testing.assert_array_equal(back.episode(i).action, want.action)
        assert frame_error(back.episode(i).wrist_image, want.wrist_image)["mae"] <= MAX_MAE


def test_selection_errors_name_the_value(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tasks \['stack'\] are not in store"):
        export_lerobot(ExportConfig(store=str(store), output=str(tmp_path / "x"),
                                    tasks=["stack"]))
    with pytest.raises(ValueError, match="vcodec 'vp9'"):
        ExportConfig(store=str(store), output=str(tmp_path / "x"), vcodec="vp9")
    with pytest.raises(ValueError, match="overlaps the source"):
        export_lerobot(ExportConfig(store=str(store), output=str(store), overwrite=True))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="set overwrite=true"):
        export_lerobot(ExportConfig(store=str(store), output=str(other)))
    with pytest.raises(FileExistsError, match="not an earlier output"):
        export_lerobot(ExportConfig(store=str(store), output=str(other), overwrite=True))
    assert (other / "keep.txt").exists() and not (tmp_path / "notes.partial").exists()


def edited_copy(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    info = read_info(dst)
    edit(info)
    (dst / "meta/info.json").write_text(json.dumps(info))
    return dst


def test_import_names_the_feature_that_does_not_map(exported: Path, tmp_path: Path) -> None:
    def add_reward(info: dict) -> None:
        info["features"]["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}

    ds = edited_copy(exported, tmp_path / "ds", add_reward)
    with pytest.raises(FeatureMapError, match=r"feature 'next.reward' \(float32 \[1\]\) does "
                                              "not map"):
        import_lerobot(ImportConfig(source=str(ds), output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_import_maps_renamed_camera(exported: Path, tmp_path: Path) -> None:
    """A camera under another name imports once mapped; unmapped, the error names it."""
    import shutil

    def rename(info: dict) -> None:
        info["features"]["observation.images.top"] = info["features"].pop(
            "observation.images.front")

    ds = edited_copy(exported, tmp_path / "ds", rename)
    shutil.move(ds / "videos/observation.images.front", ds / "videos/observation.images.top")
    with pytest.raises(FeatureMapError, match="'observation.images.top'"):
        import_lerobot(ImportConfig(source=str(ds), output=str(tmp_path / "a")))
    # The episode rows still name the old key; rewrite those columns as a user's dataset has.
    import pyarrow.parquet as pq

    path = ds / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.rename_columns([c.replace("images.front", "images.top")
                                         for c in table.column_names]), path)
    import_lerobot(ImportConfig(source=str(ds), output=str(tmp_path / "b"),
                                features={"observation.images.top": IMAGE}))
    assert EpisodeStore(tmp_path / "b").num_episodes == len(EPISODES)


def test_import_reads_image_features(exported: Path, tmp_path: Path) -> None:
    """A camera stored as LeRobot `image` (PNG bytes in the parquet rows, channels first)
    instead of video imports losslessly."""
    import io
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    def as_image(info: dict) -> None:
        info["features"]["observation.images.front"] = {
            "dtype": "image", "shape": [3, H, W], "names": ["channel", "height", "width"]}

    ds = edited_copy(exported, tmp_path / "ds", as_image)
    shutil.rmtree(ds / "videos/observation.images.front")
    pngs = []
    for ep in EPISODES:
        for frame in ep.image:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": None})
    path = ds / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    column = pa.array(pngs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(table.append_column("observation.images.front", column), path)
    import_lerobot(ImportConfig(source=str(ds), output=str(tmp_path / "out")))
    back = EpisodeStore(tmp_path / "out")
    for i, want in enumerate(EPISODES):
        np.testing.assert_array_equal(back.episode(i).image, want.image)


@pytest.mark.parametrize("edit, match", [
    (lambda i: i["features"]["action"].update(names=["x", "y", "z", "roll", "pitch", "yaw",
                                                     "gripper", "terminate"]),
     "feature 'action' has shape .* robotok's action spec is"),
    (lambda i: i.update(fps=30), "fps 30; robotok's actions are per control step at 10 Hz"),
    (lambda i: i.update(codebase_version="v2.1"), "codebase_version 'v2.1'"),
    (lambda i: i["features"].pop("observation.state"), "no feature maps to 'state'"),
])
def test_import_refuses_other_conventions(exported: Path, tmp_path: Path, edit, match) -> None:
    ds = edited_copy(exported, tmp_path / "ds", edit)
    with pytest.raises((FeatureMapError, ValueError), match=match):
        import_lerobot(ImportConfig(source=str(ds), output=str(tmp_path / "out")))


def test_hydra_configs_compose(store: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("export_dataset", overrides=[
            f"store={store}", f"output={tmp_path / 'e'}", "export.tasks=[pick]",
            "export.episodes=1"])
        exp = instantiate(cfg.export)
        cfg = compose("import_dataset", overrides=[f"source={tmp_path / 'e'}",
                                                   f"output={tmp_path / 'i'}"])
        imp = instantiate(cfg["import"])
    assert isinstance(exp, ExportConfig) and exp.tasks == ["pick"] and exp.episodes == 1
    assert isinstance(imp, ImportConfig) and imp.features == {}


def test_lerobot_doctor_finds_no_format_problem(exported: Path) -> None:
    """lerobot-doctor, a diagnostics tool for LeRobot v2/v3 datasets, on the export: its
    format checks pass and no check fails (its data-quality warnings are about the data)."""
    pytest.importorskip("lerobot_doctor", reason="validator absent: pip install -e '.[dev]' "
                        "(or '.[lerobot-check]') installs lerobot-doctor")
    from lerobot_doctor.dataset_loader import load_dataset
    from lerobot_doctor.runner import Severity, run_checks

    report = run_checks(load_dataset(str(exported)))
    by_name = {r.name: r for r in report.results}
    failed = {n: [m.message for m in r.messages if m.severity == Severity.FAIL]
              for n, r in by_name.items() if r.severity == Severity.FAIL}
    assert not failed, failed
    for name in ("Metadata & Format Compliance", "Temporal Consistency", "Video Integrity",
                 "Feature Consistency", "Portability"):
        assert by_name[name].severity == Severity.PASS, [m.message for m in
                                                          by_name[name].messages]


LEROBOT_VENV = REPO / os.environ.get("ROBOTOK_LEROBOT_VENV", ".venv-lerobot")


def test_lerobot_dataset_reads_what_was_exported(exported: Path, tmp_path: Path) -> None:
    """LeRobot's own LeRobotDataset (package lerobot-dataset, in a venv of its own so that its
    pins never touch ours) reads every frame: the same vectors and task strings, and frames
    within the codec tolerance of the store's."""
    python = LEROBOT_VENV / "bin/python"
    if not python.exists():
        pytest.skip(f"LeRobot's reader absent: `make lerobot-venv` creates {LEROBOT_VENV.name}")
    dump = tmp_path / "read.npz"
    out = subprocess.run([str(python), str(REPO / "scripts/check_lerobot_dataset.py"),
                          str(exported), "--dump", str(dump)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["codebase_version"], summary["fps"], summary["episodes"]) == ("v3.0", 10, 6)
    assert summary["tasks_match"]
    read = np.load(dump)
    np.testing.assert_array_equal(read["action"], np.concatenate([e.action for e in EPISODES]))
    np.testing.assert_array_equal(read["observation.state"],
                                  np.concatenate([e.state for e in EPISODES]))
    assert list(read["task"]) == [e.instruction for e in EPISODES for _ in range(len(e))]
    for key, name in ((IMAGE, "front"), (WRIST_IMAGE, "wrist")):
        want = np.concatenate([getattr(e, key) for e in EPISODES])
        got = read[f"observation.images.{name}"]
        assert got.shape == want.shape
        for t in range(len(want)):
            err = frame_error(got[t], want[t])
            assert err["mae"] <= MAX_MAE and err["psnr"] >= MIN_PSNR, (key, t, err)
