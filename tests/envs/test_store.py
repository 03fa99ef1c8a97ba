"""Episode store: round trip across shards, crash-safe commits, damage reports, merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from synthetic import synthetic_episode

from envs.spec import DEFAULT_ACTION_SPEC
from envs.store import (
    Episode,
    EpisodeStore,
    ShardWriter,
    StoreError,
    merge,
    shard_name,
)

H = W = 16
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict(), "control_hz": 10}


def make_episode(seed: int, steps: int = 5, task: str = "pick",
                 instruction: str | None = None) -> Episode:
    """A synthetic episode whose every value is a function of (seed, step): easy to check."""
    return synthetic_episode(seed, steps, H, W, task=task,
                             instruction=instruction or f"{task} the block {seed % 3}",
                             success=seed % 4 != 3)


def write_shard(store: Path, index: int, episodes: list[Episode], chunk_frames: int = 4,
                info: dict | None = None) -> ShardWriter:
    writer = ShardWriter(store / shard_name(index), info=info or INFO, image_shape=(H, W, 3),
                         chunk_frames=chunk_frames)
    for ep in episodes:
        writer.append(ep)
    return writer


def assert_same(a: Episode, b: Episode) -> None:
    for key in ("image", "state", "action", "executed_action"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert (a.instruction, a.task, a.split, a.seed, a.success) == (
        b.instruction, b.task, b.split, b.seed, b.success)


def test_round_trip_across_shards(tmp_path: Path) -> None:
    first = [make_episode(s, steps=3 + s % 4) for s in range(6)]
    # The second shard meets tasks and instructions in another order: ids must be remapped.
    second = [make_episode(100 + s, task="push", instruction=f"push {s}") for s in range(2)]
    second.append(make_episode(7, instruction="pick the block 0"))
    write_shard(tmp_path, 0, first)
    write_shard(tmp_path, 1, second)

    store = EpisodeStore(tmp_path)
    assert store.num_episodes == 9
    assert store.num_steps == sum(len(e) for e in first + second)
    for i, ep in enumerate(first + second):
        assert_same(store.episode(i), ep)
    data = store.load()
    assert data.arrays["image"].dtype == np.uint8
    for i, ep in enumerate(first + second):
        a, b = data.episode_starts[i], data.episode_ends[i]
        np.testing.assert_array_equal(data.arrays["image"][a:b], ep.image)
        assert store.instructions[data.arrays["instruction_id"][a]] == ep.instruction
        assert store.tasks[data.task_id[i]] == ep.task
    all_actions = np.concatenate([e.action for e in first + second])
    np.testing.assert_allclose(store.stats["action"]["p99"],
                               np.percentile(all_actions, 99, axis=0), rtol=1e-6)
    np.testing.assert_allclose(store.stats["action"]["mean"], all_actions.mean(0), rtol=1e-5)
    assert store.info["counts"]["episodes"] == 9
    assert store.info["counts"]["successes"] == sum(e.success for e in first + second)
    assert store.info["seed_ranges"]["collect"][1] == store.info["seed_ranges"]["eval"][0]
    assert set(store.info["tasks"]) == {"pick", "push"}


def test_reopen_appends_and_refuses_duplicate_seed(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, [make_episode(0), make_episode(1)])
    writer = ShardWriter(tmp_path / shard_name(0), info=INFO, image_shape=(H, W, 3))
    writer.reject(5)
    writer.append(make_episode(2))
    with pytest.raises(ValueError, match="seed 1 is already stored"):
        writer.append(make_episode(1))
    store = EpisodeStore(tmp_path)
    assert store.seeds().tolist() == [0, 1, 2]
    assert store.attempted_seeds() == {0, 1, 2, 5}
    assert_same(store.episode(2), make_episode(2))


def test_uncommitted_tail_is_ignored_then_truncated(tmp_path: Path) -> None:
    """What a SIGKILL between writing arrays and the commit leaves behind."""
    write_shard(tmp_path, 0, [make_episode(0), make_episode(1)])
    shard = tmp_path / shard_name(0)
    group = zarr.open_group(str(shard), mode="r+")
    image = group["data/image"]
    committed = image.shape[0]
    image.resize((committed + 3, H, W, 3))
    image[committed:] = 255  # half-written next episode, never committed
    (shard / "data" / "junk.partial").write_bytes(b"x")  # an interrupted atomic write
    store = EpisodeStore(tmp_path)
    assert store.num_steps == committed
    assert store.load().arrays["image"].shape[0] == committed

    writer = ShardWriter(shard, info=INFO, image_shape=(H, W, 3))
    assert group["data/image"].shape[0] == committed  # truncated on reopen
    assert not (shard / "data" / "junk.partial").exists()
    writer.append(make_episode(2))
    store = EpisodeStore(tmp_path)
    assert [store.episode(i).seed for i in range(3)] == [0, 1, 2]
    assert_same(store.episode(2), make_episode(2))


@pytest.mark.parametrize("damage", ["truncated_chunk", "flipped_byte", "missing_chunk",
                                    "truncated_metadata", "short_array"])
def test_damaged_shard_names_file_and_problem(tmp_path: Path, damage: str) -> None:
    write_shard(tmp_path, 0, [make_episode(s, steps=6) for s in range(3)])
    write_shard(tmp_path, 1, [make_episode(10 + s, steps=6) for s in range(2)])
    shard = tmp_path / shard_name(0)
    chunk = shard / "data" / "image" / "c" / "1" / "0" / "0" / "0"
    if damage == "truncated_chunk":
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
        target, problem = chunk, "corrupted chunk 1"
    elif damage == "flipped_byte":
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))
        target, problem = chunk, "checksum"
    elif damage == "missing_chunk":
        chunk.unlink()
        target, problem = chunk, "missing chunk 1"
    elif damage == "truncated_metadata":
        target = shard / "zarr.json"
        target.write_text(target.read_text()[:40])
        problem = "unreadable"
    else:  # the array's metadata says fewer rows than committed
        target = shard / "data" / "state" / "zarr.json"
        meta = json.loads(target.read_text())
        meta["shape"][0] = 4
        target.write_text(json.dumps(meta))
        problem = "truncated"

    with pytest.raises(StoreError, match=problem) as err:
        EpisodeStore(tmp_path).load()
    assert err.value.path == target
    assert str(target) in str(err.value)

    # Skipping bad shards: damage is found on open (metadata, missing chunks) or when the
    # data is decoded (checksums); either way the other shard stays readable.
    with pytest.warns(UserWarning, match="skipping bad shard"):
        store = EpisodeStore(tmp_path, skip_bad_shards=True)
        data = store.load()
    assert store.seeds().tolist() == [10, 11]
    assert [e.path for e in store.bad_shards] == [target]
    np.testing.assert_array_equal(data.arrays["image"][:6], make_episode(10, steps=6).image)
    if damage in ("truncated_chunk", "flipped_byte"):
        with pytest.raises(StoreError, match="corrupted chunk 1"):
            EpisodeStore(tmp_path).verify()


def test_incompatible_shards_are_refused(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, [make_episode(0)])
    write_shard(tmp_path, 1, [make_episode(1)], info={**INFO, "renderer": "egl"})
    with pytest.raises(StoreError, match="renderer"):
        EpisodeStore(tmp_path)
    with pytest.raises(StoreError, match="image_shape"):
        ShardWriter(tmp_path / shard_name(0), info=INFO, image_shape=(8, 8, 3))


def test_merge_makes_one_shard(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_shard(a, 0, [make_episode(0), make_episode(1)])
    write_shard(a, 3, [make_episode(2)]).reject(9)
    write_shard(b, 0, [make_episode(5, task="push")])
    merged = merge([a, b], tmp_path / "m")
    assert len(merged.shards) == 1
    assert merged.seeds().tolist() == [0, 1, 2, 5]
    assert merged.attempted_seeds() == {0, 1, 2, 5, 9}
    for i, seed in enumerate([0, 1, 2]):
        assert_same(merged.episode(i), make_episode(seed))
    assert_same(merged.episode(3), make_episode(5, task="push"))
    assert merged.info["merged_from"][0].endswith("a")

    shutil.copytree(b, tmp_path / "b2")
    with pytest.raises(ValueError, match="seed 5 appears twice"):
        merge([b, tmp_path / "b2"], tmp_path / "m2")
    with pytest.raises(FileExistsError):
        merge([a], tmp_path / "m")


def test_episode_validation_names_the_problem() -> None:
    ep = make_episode(0)
    with pytest.raises(ValueError, match="expected uint8"):
        Episode(**{**ep.__dict__, "image": ep.image.astype(np.float32)})
    with pytest.raises(ValueError, match="action has shape"):
        Episode(**{**ep.__dict__, "action": ep.action[:2]})


def test_one_writer_per_shard(tmp_path: Path) -> None:
    writer = write_shard(tmp_path, 0, [make_episode(0)])
    with pytest.raises(StoreError, match="another process is writing this shard"):
        ShardWriter(tmp_path / shard_name(0), info=INFO, image_shape=(H, W, 3),
                    lock_wait_s=0.2)
    writer.close()
    with ShardWriter(tmp_path / shard_name(0), info=INFO, image_shape=(H, W, 3)) as again:
        again.append(make_episode(1))
    assert EpisodeStore(tmp_path).seeds().tolist() == [0, 1]


def test_summary_and_contact_sheet(tmp_path: Path) -> None:
    import matplotlib.image

    from envs.inspection import contact_sheet, summarize

    write_shard(tmp_path, 0, [make_episode(s, steps=4) for s in range(4)]).reject(50)
    write_shard(tmp_path, 1, [make_episode(10, steps=6, task="push")])
    summary = summarize(EpisodeStore(tmp_path))
    assert (summary.episodes, summary.steps, summary.rejected) == (5, 22, 1)
    assert summary.per_task["push"] == {"episodes": 1, "steps": 6, "success_rate": 1.0}
    assert summary.per_task["pick"]["success_rate"] == 0.75  # seed 3 is a marked failure
    assert summary.seeds == (0, 10) and summary.splits == {"seen": 5}
    text = summary.format()
    assert "push: 1 ep, 6 steps, 100% success" in text and "gripper" in text
    png = contact_sheet(EpisodeStore(tmp_path), tmp_path / "sheet.png", frames=7, cols=3)
    assert matplotlib.image.imread(png).shape[2] in (3, 4)
