"""Episode store with visual prompts: per-episode crops and words, old stores, merge, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from envs.spec import DEFAULT_ACTION_SPEC, MAX_PROMPT_IMAGES
from envs.store import (
    PROMPT_SHAPE_KEY,
    Episode,
    EpisodeStore,
    ShardWriter,
    StoreError,
    merge,
    shard_name,
)

H = W = 8
S = 6
K = MAX_PROMPT_IMAGES
INFO = {"renderer": "tiny", "action_spec": DEFAULT_ACTION_SPEC.to_dict(), "control_hz": 10}


def crops(seed: int, used: int, size: int = S) -> np.ndarray:
    """K crops of which the first `used` are a function of the seed, the rest zero."""
    out = np.zeros((K, size, size, 3), dtype=np.uint8)
    rng = np.random.default_rng(1000 + seed)
    out[:used] = rng.integers(1, 256, (used, size, size, 3), dtype=np.uint8)
    return out


def episode(seed: int, words: tuple[str, ...] = (), steps: int = 3,
            with_images: bool = True, size: int = S) -> Episode:
    """An episode whose instruction has one image slot per word (none: text-only)."""
    rng = np.random.default_rng(seed)
    if len(words) == 2:
        instruction = "put the {image} in the {image}"
    elif len(words) == 1:
        instruction = "pick up the {image}"
    else:
        instruction = f"pick up the block {seed}"
    return Episode(
        image=rng.integers(0, 256, (steps, H, W, 3), dtype=np.uint8),
        state=rng.normal(size=(steps, 8)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(steps, 8)).astype(np.float32),
        executed_action=rng.uniform(-1, 1, size=(steps, 8)).astype(np.float32),
        instruction=instruction, task="pick", split="seen", seed=seed, success=True,
        prompt_images=crops(seed, len(words), size) if with_images else None,
        prompt_words=words,
    )


def write(path: Path, episodes: list[Episode], prompt_size: int | None = S) -> Path:
    with ShardWriter(path, info=INFO, image_shape=(H, W, 3), chunk_frames=2,
                     prompt_image_size=prompt_size) as w:
        for ep in episodes:
            w.append(ep)
    return path


MIXED = [episode(0, ("red cube",)), episode(1), episode(2, ("blue mug", "white tray")),
         episode(3, ("red cube",))]


def test_round_trip_of_crops_and_words(tmp_path: Path) -> None:
    write(tmp_path / shard_name(0), MIXED)
    store = EpisodeStore(tmp_path)
    assert store.prompt_image_shape == (K, S, S, 3)
    assert store.info[PROMPT_SHAPE_KEY] == [K, S, S, 3]
    for i, src in enumerate(MIXED):
        ep = store.episode(i)
        np.testing.assert_array_equal(ep.prompt_images, src.prompt_images)
        assert ep.prompt_words == src.prompt_words
        assert ep.instruction == src.instruction
        np.testing.assert_array_equal(ep.image, src.image)
        images, words = store.episode_prompt(i)  # the cheap accessor agrees
        np.testing.assert_array_equal(images, src.prompt_images)
        assert words == src.prompt_words
    everything = store.prompt_images()
    assert everything.shape == (4, K, S, S, 3) and everything.dtype == np.uint8
    np.testing.assert_array_equal(everything[2], MIXED[2].prompt_images)
    assert not everything[1].any()  # the text-only episode
    # One table entry per distinct word, ids -1 past each episode's slots.
    sh = store.shards[0]
    assert sh.tables.prompt_words == ["red cube", "blue mug", "white tray"]
    assert sh.prompt_word_ids.tolist() == [[0, -1], [-1, -1], [1, 2], [0, -1]]
    attrs = json.loads((tmp_path / shard_name(0) / "zarr.json").read_text())["attributes"]
    assert attrs["prompt_words"] == ["red cube", "blue mug", "white tray"]


def test_text_only_episode_without_images_is_stored_as_zero_crops(tmp_path: Path) -> None:
    write(tmp_path / shard_name(0), [episode(5, with_images=False)])
    ep = EpisodeStore(tmp_path).episode(0)
    assert ep.prompt_images.shape == (K, S, S, 3) and not ep.prompt_images.any()
    assert ep.prompt_words == ()


def test_store_without_prompts_reads_as_before(tmp_path: Path) -> None:
    write(tmp_path / shard_name(0), [episode(0), episode(1)], prompt_size=None)
    shard = tmp_path / shard_name(0)
    attrs = json.loads((shard / "zarr.json").read_text())["attributes"]
    assert "prompt_words" not in attrs and PROMPT_SHAPE_KEY not in attrs["info"]
    assert sorted(p.name for p in (shard / "meta").iterdir()) == [
        "episode_ends", "rejected_seed", "seed", "success", "zarr.json"]
    store = EpisodeStore(tmp_path)
    assert store.prompt_image_shape is None and store.prompt_images() is None
    assert PROMPT_SHAPE_KEY not in store.info
    assert store.episode_prompt(1) == (None, ())
    ep = store.episode(1)
    assert ep.prompt_images is None and ep.prompt_words == ()


def test_shards_with_and_without_prompts_read_together(tmp_path: Path) -> None:
    write(tmp_path / shard_name(0), [episode(0), episode(1)], prompt_size=None)
    write(tmp_path / shard_name(1), [episode(2, ("red cube",))])
    store = EpisodeStore(tmp_path)
    assert store.prompt_image_shape == (K, S, S, 3)
    assert store.info[PROMPT_SHAPE_KEY] == [K, S, S, 3]  # though shard 0 has none
    everything = store.prompt_images()
    assert everything.shape == (3, K, S, S, 3)
    assert not everything[:2].any()
    np.testing.assert_array_equal(everything[2], crops(2, 1))
    assert not store.episode(0).prompt_images.any()
    assert store.episode_prompt(2)[1] == ("red cube",)


@pytest.mark.parametrize("order", ["prompts_first", "plain_first"])
def test_merge_with_and_without_prompts(tmp_path: Path, order: str) -> None:
    a = write(tmp_path / "a" / shard_name(0), MIXED).parent
    b = write(tmp_path / "b" / shard_name(0), [episode(7), episode(8)], prompt_size=None).parent
    sources = [a, b] if order == "prompts_first" else [b, a]
    merged = merge(sources, tmp_path / "m")
    assert merged.prompt_image_shape == (K, S, S, 3)
    by_seed = {int(s): i for i, s in enumerate(merged.seeds())}
    for src in MIXED:
        ep = merged.episode(by_seed[src.seed])
        np.testing.assert_array_equal(ep.prompt_images, src.prompt_images)
        assert ep.prompt_words == src.prompt_words
    for seed in (7, 8):  # text-only: zero crops, no words
        ep = merged.episode(by_seed[seed])
        assert not ep.prompt_images.any() and ep.prompt_words == ()


def test_merge_without_prompts_stays_without(tmp_path: Path) -> None:
    a = write(tmp_path / "a" / shard_name(0), [episode(0)], prompt_size=None).parent
    b = write(tmp_path / "b" / shard_name(0), [episode(1)], prompt_size=None).parent
    merged = merge([a, b], tmp_path / "m")
    assert merged.prompt_image_shape is None
    assert not (tmp_path / "m" / shard_name(0) / "meta" / "prompt_images").exists()


def test_merge_refuses_different_crop_sizes(tmp_path: Path) -> None:
    a = write(tmp_path / "a" / shard_name(0), [episode(0, ("red cube",))]).parent
    plain = write(tmp_path / "p" / shard_name(0), [episode(1)], prompt_size=None).parent
    b = write(tmp_path / "b" / shard_name(0), [episode(2, ("red cube",), size=4)],
              prompt_size=4).parent
    # The text-only store in between must not hide the mismatch.
    with pytest.raises(StoreError, match=r"prompt_image_shape.*\[2, 6, 6, 3\] != \[2, 4, 4, 3\]"
                       r".*different sizes S"):
        merge([a, plain, b], tmp_path / "m")
    # Shards of one store are refused the same way, a text-only first shard or not.
    write(tmp_path / "a" / shard_name(1), [episode(3, ("red cube",), size=4)], prompt_size=4)
    with pytest.raises(StoreError, match="different sizes S"):
        EpisodeStore(tmp_path / "a")
    write(tmp_path / "c" / shard_name(0), [episode(4)], prompt_size=None)
    write(tmp_path / "c" / shard_name(1), [episode(5, ("red cube",))])
    write(tmp_path / "c" / shard_name(2), [episode(6, ("red cube",), size=4)], prompt_size=4)
    with pytest.raises(StoreError, match=r"shard-00002.*incompatible with .*shard-00001.*"
                                         "different sizes S"):
        EpisodeStore(tmp_path / "c")


def test_writer_refuses_prompts_it_does_not_store(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / shard_name(0), info=INFO, image_shape=(H, W, 3),
                    prompt_image_size=None)
    with pytest.raises(ValueError, match=r"prompt_images of shape \(2, 6, 6, 3\); this shard "
                                         "stores no prompt images"):
        w.append(episode(0, ("red cube",)))
    w.close()
    w = ShardWriter(tmp_path / shard_name(1), info=INFO, image_shape=(H, W, 3),
                    prompt_image_size=8)
    with pytest.raises(ValueError, match=r"prompt_images have shape \(2, 6, 6, 3\); shard "
                                         r"stores \(2, 8, 8, 3\)"):
        w.append(episode(0, ("red cube",)))
    assert w.num_episodes == 0
    w.close()
    # Reopening with another prompt setting is refused, as masks are.
    with pytest.raises(StoreError, match="existing shard has prompt images of shape None"):
        ShardWriter(tmp_path / shard_name(0), info=INFO, image_shape=(H, W, 3),
                    prompt_image_size=S)


def test_reopen_appends_words_to_the_table(tmp_path: Path) -> None:
    write(tmp_path / shard_name(0), [episode(0, ("red cube",))])
    write(tmp_path / shard_name(0), [episode(1, ("green can",)), episode(2, ("red cube",))])
    store = EpisodeStore(tmp_path)
    assert [store.episode_prompt(i)[1] for i in range(3)] == [
        ("red cube",), ("green can",), ("red cube",)]
    assert store.prompt_words == ["red cube", "green can"]


def test_verify_decodes_prompt_crops(tmp_path: Path) -> None:
    write(tmp_path / shard_name(0), MIXED)
    store = EpisodeStore(tmp_path)
    assert store.verify() == []
    chunk = tmp_path / shard_name(0) / "meta" / "prompt_images" / "c" / "0" / "0" / "0" / "0" / "0"
    assert chunk.is_file()
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupted chunk 0 of array 'meta/prompt_images'"):
        EpisodeStore(tmp_path).verify()


# -- the Episode's checks


def test_episode_words_must_match_the_slots() -> None:
    with pytest.raises(ValueError, match=r"prompt_words=\(\) has 0 words but instruction "
                                         r"'pick up the \{image\}' has 1 \{image\} slots"):
        Episode(**{**vars(episode(0, ("red cube",))), "prompt_words": ()})
    with pytest.raises(ValueError, match="has 1 words but instruction 'pick up the block 0' "
                                         "has 0"):
        Episode(**{**vars(episode(0)), "prompt_words": ("red cube",)})
    with pytest.raises(ValueError, match="expected a tuple of non-empty strings"):
        Episode(**{**vars(episode(0)), "prompt_words": "red cube"})


def test_episode_slots_need_images_of_the_right_shape() -> None:
    base = vars(episode(0, ("red cube",)))
    with pytest.raises(ValueError, match="has 1 {image} slots but the episode has no "
                                         r"prompt_images; expected uint8 \(2, S, S, 3\)"):
        Episode(**{**base, "prompt_images": None})
    with pytest.raises(ValueError, match=r"prompt_images has shape \(1, 6, 6, 3\) dtype uint8; "
                                         r"expected uint8 \(2, S, S, 3\)"):
        Episode(**{**base, "prompt_images": base["prompt_images"][:1]})
    with pytest.raises(ValueError, match="dtype float32"):
        Episode(**{**base, "prompt_images": base["prompt_images"].astype(np.float32)})
    with pytest.raises(ValueError, match="non-zero crops past the instruction's 1"):
        Episode(**{**base, "prompt_images": np.ones((K, S, S, 3), np.uint8)})
    three = "{image} {image} {image}"
    with pytest.raises(ValueError, match="has 3 {image} slots; at most 2"):
        Episode(**{**base, "instruction": three, "prompt_words": ("a", "b", "c")})
    ep = Episode(**{**base, "prompt_words": ["red cube"]})  # a list becomes a tuple
    assert ep.prompt_words == ("red cube",)


def test_summary_reports_the_prompt_share_and_the_sheet_draws_crops(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from envs.inspection import contact_sheet, summarize

    write(tmp_path / "p" / shard_name(0), MIXED)
    summary = summarize(EpisodeStore(tmp_path / "p"))
    assert summary.visual_prompts == 0.75 and summary.prompt_image_size == S
    assert "prompts      75% of episodes show an object by image (6 px crops)" in \
        summary.format()
    png = contact_sheet(EpisodeStore(tmp_path / "p"), tmp_path / "sheet.png", frames=4, cols=2)
    assert png.stat().st_size > 0
    write(tmp_path / "t" / shard_name(0), [episode(0)], prompt_size=None)
    plain = summarize(EpisodeStore(tmp_path / "t"))
    assert plain.visual_prompts is None and "prompts " not in plain.format()


def test_lerobot_export_refuses_episodes_with_visual_prompts(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    pytest.importorskip("av")
    from envs.lerobot import ExportConfig, check_no_visual_prompts, export_lerobot

    store = write(tmp_path / "s" / shard_name(0), MIXED).parent
    out = tmp_path / "ds"
    with pytest.raises(ValueError, match=r"has visual prompts: 3 of the 4 selected episodes "
                                         r"\(e.g. episode 0\).*no per-episode image field"):
        export_lerobot(ExportConfig(store=str(store), output=str(out)))
    assert not out.exists() and not out.with_name("ds.partial").exists()
    st = EpisodeStore(store)
    check_no_visual_prompts(st, [1])  # the text-only episode alone would export
    with pytest.raises(ValueError, match="1 of the 2 selected"):
        check_no_visual_prompts(st, [1, 2])
