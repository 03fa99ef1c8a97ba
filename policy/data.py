"""Training data: windows of `history` frames from the episode store, as a torch Dataset.

Item i is the window of T = history steps ending at step i of the store (every step is the
end of exactly one window). Steps before the episode's first frame are padded by repeating
that first frame (and its state and action), with `pad` marking them, so the model never
sees a frame from the previous episode (docs/CONTRACTS.md, "Dataset for torch").

With in_memory=True (the default) the whole selection is read once into numpy as uint8,
and __getitem__ is pure numpy fancy indexing: no zarr access per item. With in_memory=False
frames are read from zarr per item, for stores larger than RAM (slower).

A store collected with masks (envs.store MASK_KEYS, e.g. collect.background_mask) adds them
to every item, uint8 (T, H, W) 0/1 under their key (envs.spec.BACKGROUND_MASK); in RAM they
are held bit-packed (1/8 of a byte per pixel) and unpacked per batch. Stores without
masks give the same items as before.

A store collected with object pixels (collect.object_pixels, envs.store's privileged_keys)
adds them to every item, float32 (T, 2, 2) under envs.spec.OBJECT_PIXELS, collated to
(B, T, 2, 2): per frame, where the front image shows the centres of [target, second
object] as (u, v) = (column, row) pixels of the stored image (0..W, 0..H), NaN where there
is no second object (pick, push) or no label (steps merged from a store without them).
Padded steps repeat the episode's first step, as the frames do. They are labels for an
auxiliary grounding loss, never an input; they are held in RAM in either mode (16 bytes a
step), and the mirror (policy/augment.py mirror_batch) maps u to W - u with the image. A
policy that resizes or shifts the image must map them the same way. Stores without them
give the same items as before.

A store collected with object boxes (collect.object_boxes, envs.store's observation_keys)
adds them to every item, float32 (T, 8, 4) under envs.spec.OBJECT_BOXES, collated to
(B, T, 8, 4): per frame the env's obs["object_boxes"], one row [u0, v0, u1, v1] per task
object the front image shows, as fractions of its width and height, rows sorted by box
centre u then v, NaN rows past the last visible object. Unlike object pixels they are an
observation a policy may act on (one token per object). Padded steps repeat the episode's
first step, as the frames do; they are held in RAM in either mode (128 bytes a step);
`has_object_boxes` says whether the items carry them. A policy that mirrors, resizes or
shifts the image must map them the same way. Stores without them give the same items as
before.

A store collected with visual prompts (collect.visual_prompts, envs.store's
prompt_image_shape) adds its episode's prompt crops to every item, uint8 (K, S, S, 3) under
envs.spec.PROMPT_IMAGES (zeros for a text-only episode), collated to (B, K, S, S, 3). They
are held in RAM in either mode (about 6 KB an episode at S = 32). The instruction stays the
string with its "{image}" markers, which the text encoder embeds like any other sentence.
The training-time mirror (policy/augment.py mirror_batch) flips the scene and leaves the
crops as they are. A crop says which object to act on, not where it is (the studio renders
it from a random view of its own), and the mirrored scene holds the mirror image of that
object: for every mirror-symmetric object (cubes, prisms, the mug, the duck, the
containers) that is the same object, so the unflipped crop still names it exactly; only a
chiral shape (the two random-blob rocks) would call for a flipped crop, which is a crop of
the mirrored object. Colour and coarse shape, what the policy has to match across views,
are the same either way, so unflipped is kept. Stores without prompts give the same items
as before.

With phase_state=True (a policy with RT1Config.phase_state) every item also carries the
gripper phase of its frames, float32 (T, 3) under policy.tokenizers.phase.PHASE, collated to
(B, T, 3): per step, from the episode's earlier gripper commands (its action labels), the
count of closes, whether the last command was close, and the steps since the command last
changed (policy/tokenizers/phase.py). Padded steps repeat the episode's first step (a zero
phase). It is derived from the actions at load time, so any store has it (12 bytes a step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from envs.spec import (
    ACTION,
    BACKGROUND_MASK,
    IMAGE,
    INSTRUCTION,
    OBJECT_BOXES,
    OBJECT_PIXELS,
    PROMPT_IMAGES,
    STATE,
    WRIST_IMAGE,
    ActionSpec,
)
from envs.store import EpisodeStore, stats_for
from policy.tokenizers.phase import PHASE, episode_phases, gripper_index


class EpisodeDataset(Dataset):
    """Windows of `history` frames ending at each step of an episode store.

    path: a store directory (its shard-XXXXX/ folders are read together).
    history: frames per window, T >= 1.
    in_memory: hold every selected step in RAM (uint8 images) for memory-speed indexing.
    tasks: keep only episodes of these task names (None keeps all).
    successes_only: drop episodes marked as failures (collected with keep_failures=true).
    skip_bad_shards: warn about and skip shards that fail validation instead of raising.
    wrist_camera: load the wrist frames (True: the store must have them; False: leave them
        on disk; None: whatever the store has).
    phase_state: add each frame's gripper phase to the items (module docstring).
    """

    def __init__(
        self,
        path: Path | str,
        history: int = 1,
        in_memory: bool = True,
        tasks: list[str] | tuple[str, ...] | None = None,
        successes_only: bool = True,
        skip_bad_shards: bool = False,
        wrist_camera: bool | None = None,
        phase_state: bool = False,
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1 frame; got {history}")
        self.path = Path(path)
        self.history = history
        self.in_memory = in_memory
        self.store = EpisodeStore(self.path, skip_bad_shards=skip_bad_shards)
        if wrist_camera and WRIST_IMAGE not in self.store.image_keys:
            raise ValueError(
                f"the policy reads the wrist camera but store {self.path} has no "
                f"{WRIST_IMAGE!r} frames (it has {self.store.image_keys}); collect with "
                "env.wrist_camera=true"
            )
        self.image_keys = [k for k in (IMAGE, WRIST_IMAGE) if k in self.store.image_keys
                           and (k != WRIST_IMAGE or wrist_camera is not False)]
        self.mask_keys = [k for k in (BACKGROUND_MASK,) if k in self.store.mask_keys]
        # Per-step labels (object pixels): small, so in RAM in either mode.
        self.label_keys = [k for k in (OBJECT_PIXELS,) if k in self.store.privileged_keys]
        # Per-step float observations (object boxes): small too, so in RAM in either mode.
        self._observation_keys = [k for k in (OBJECT_BOXES,)
                                  if k in self.store.observation_keys]
        self.has_object_boxes: bool = OBJECT_BOXES in self._observation_keys

        frames = [*self.image_keys, *self.mask_keys]
        keys = [*frames, STATE, ACTION] if in_memory else [STATE, ACTION]
        keys += self.label_keys + self._observation_keys
        # Load first and take the episode table from the same read: with skip_bad_shards a
        # shard whose chunks fail their checksums drops out here, and the table must agree.
        data = self.store.load(keys=keys)
        keep = np.ones(len(data.episode_ends), dtype=bool)
        if tasks is not None:
            unknown = sorted(set(tasks) - set(self.store.tasks))
            if unknown:
                raise ValueError(
                    f"tasks {unknown} are not in store {self.path}; it has {self.store.tasks}"
                )
            wanted = [self.store.tasks.index(t) for t in tasks]
            keep &= np.isin(data.task_id, wanted)
        if successes_only:
            keep &= data.success
        if not keep.any():
            raise ValueError(
                f"no episodes left in {self.path} after selecting tasks={tasks}, "
                f"successes_only={successes_only} (store has {len(keep)} episodes of "
                f"tasks {self.store.tasks})"
            )
        starts, ends = data.episode_starts, data.episode_ends
        # Store-wide step index of every selected step, and its episode's first step.
        self._src_steps = np.concatenate(
            [np.arange(s, e) for s, e in zip(starts[keep], ends[keep], strict=True)]
        )
        lengths = (ends - starts)[keep]
        # Positions in the selection: where each selected episode starts (compact numbering).
        sel_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self._ep_start = np.repeat(sel_starts, lengths).astype(np.int64)
        self.episode_ends = np.cumsum(lengths).astype(np.int64)
        # Visual prompts: one (K, S, S, 3) block per selected episode, indexed per window by
        # the episode of its last step; None (no key in the items) for a store without them.
        # Read after load(), so that a shard it dropped (skip_bad_shards) is left out here too.
        prompts = self.store.prompt_images()
        self.prompt_image_shape: tuple[int, ...] | None = (
            None if prompts is None else tuple(prompts.shape[1:]))
        self._prompt_images = None if prompts is None else prompts[keep]
        self._episode_of = np.repeat(np.arange(len(lengths)), lengths).astype(np.int64)
        self._offsets = np.arange(1 - history, 1, dtype=np.int64)  # window steps relative to i
        self.num_episodes = int(keep.sum())

        self.instructions = self.store.instructions
        # Index only when something was dropped: selecting copies the images.
        self._arrays = {
            k: data.arrays[k] if keep.all() else data.arrays[k][self._src_steps] for k in keys
        }
        for k in self.mask_keys:
            if in_memory:  # (N, H, ceil(W / 8)): 0/1 bytes packed 8 to a byte
                self._mask_width = int(self._arrays[k].shape[-1])
                self._arrays[k] = np.packbits(self._arrays[k], axis=-1)
        if not in_memory:
            self._shard_offsets = np.cumsum([0] + [sh.num_steps for sh in self.store.shards])
        self._instruction_id = data.arrays["instruction_id"][self._src_steps]
        # each window's task, an index into self.tasks (for data.task_weights)
        self.tasks: list[str] = list(self.store.tasks)
        self.task_of_window = np.repeat(data.task_id[keep], lengths).astype(np.int64)
        self.stats: dict[str, dict[str, list[float]]] = stats_for(
            {STATE: self._arrays[STATE], ACTION: self._arrays[ACTION]}
        )
        self.info: dict[str, Any] = self.store.info
        if "action_spec" not in self.info:
            raise ValueError(f"store {self.path} info has no 'action_spec'; cannot train on it")
        self.action_spec: ActionSpec = ActionSpec.from_dict(self.info["action_spec"])
        self._phase: np.ndarray | None = None
        if phase_state:
            g = gripper_index(self.action_spec.names, f"store {self.path}")
            self._phase = episode_phases(self._arrays[ACTION][:, g], self.episode_ends)

    def __len__(self) -> int:
        return len(self._ep_start)

    def windows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Selection indices (B, T) of the frames of the windows ending at `indices`, and
        the pad mask (B, T): True where the window reaches before its episode's start."""
        i = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if i.size and (i.min() < -n or i.max() >= n):
            bad = i[(i < -n) | (i >= n)][0]
            raise IndexError(f"index {bad} outside dataset of {n} windows")
        i = i % n
        raw = i[:, None] + self._offsets[None, :]  # (B, T), ends at i
        start = self._ep_start[i][:, None]  # (B, 1)
        return np.maximum(raw, start), raw < start

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Selection indices of the T frames ending at step i, and the pad mask."""
        idx, pad = self.windows(np.array([i]))
        return idx[0], pad[0]

    def _read_images(self, key: str, idx: np.ndarray) -> np.ndarray:
        if self.in_memory:
            return self._arrays[key][idx]
        # Lazy path: map selection indices to (shard, row); windows never cross episodes,
        # so they never cross shards either.
        src = self._src_steps[idx]
        shard = int(np.searchsorted(self._shard_offsets, src[0], side="right") - 1)
        rows = src - self._shard_offsets[shard]
        block = self.store.shards[shard].read(key, int(rows.min()), int(rows.max()) + 1)
        return block[rows - rows.min()]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([int(i)])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Items for a whole batch with one fancy index per array.

        torch's DataLoader calls this instead of __getitem__ per index when it exists; the
        items it returns are views into batch-sized arrays, so the default collate's stack
        is the only per-item copy.
        """
        idx, pad = self.windows(np.asarray(indices, dtype=np.int64))  # (B, T)
        arrays: dict[str, torch.Tensor] = {}
        for key in self.image_keys:
            if self.in_memory:
                arrays[key] = torch.from_numpy(self._arrays[key][idx])  # (B, T, H, W, 3)
            else:
                arrays[key] = torch.from_numpy(np.stack([self._read_images(key, w)
                                                         for w in idx]))
        for key in self.mask_keys:
            if self.in_memory:
                arrays[key] = torch.from_numpy(np.unpackbits(  # (B, T, H, W) 0/1
                    self._arrays[key][idx], axis=-1, count=self._mask_width))
            else:
                arrays[key] = torch.from_numpy(np.stack([self._read_images(key, w)
                                                         for w in idx]))
        arrays[STATE] = torch.from_numpy(self._arrays[STATE][idx])  # (B, T, S)
        arrays[ACTION] = torch.from_numpy(self._arrays[ACTION][idx])  # (B, T, A)
        for key in self.label_keys:  # object pixels: (B, T, 2, 2)
            arrays[key] = torch.from_numpy(self._arrays[key][idx])
        for key in self._observation_keys:  # object boxes: (B, T, 8, 4)
            arrays[key] = torch.from_numpy(self._arrays[key][idx])
        if self._phase is not None:  # (B, T, 3)
            arrays[PHASE] = torch.from_numpy(self._phase[idx])
        arrays["pad"] = torch.from_numpy(pad)  # (B, T)
        if self._prompt_images is not None:  # (B, K, S, S, 3), the episode's crops
            arrays[PROMPT_IMAGES] = torch.from_numpy(
                self._prompt_images[self._episode_of[idx[:, -1]]])
        texts = [self.instructions[int(j)] for j in self._instruction_id[idx[:, -1]]]
        return [
            {**{k: v[b] for k, v in arrays.items()}, INSTRUCTION: texts[b]}
            for b in range(len(texts))
        ]
