"""Browsing a stored dataset's episodes in the playground's view.

Each stored frame is shown with the oracle's recorded label (green in the distribution view)
and, when the checkpoint fits the store's camera, what the checkpoint would do on that very
frame (red, with its bin distributions and attention): the policy is fed the episode's frames
in order from its first, so its history is the one it would have had had it acted there.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.spec import IMAGE, INSTRUCTION, STATE
from envs.store import EpisodeStore
from policy.evaluation.compat import check_compatible
from policy.playground.introspect import Introspector
from policy.playground.session import Checkpoint, StepView
from policy.playground.views import enlarge

EPISODE_COLUMNS = ("episode", "task", "split", "seed", "steps", "success", "instruction")
VIEW_PX = 256  # the enlarged frame's side, as near as a whole scale factor gets


class DatasetBrowser:
    """A store opened for viewing; `open(i)`, then `seek(t)` or `step()` through episode i."""

    def __init__(self, path: str | Path, checkpoint: Checkpoint | None = None) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"dataset {str(path)!r} is not a directory; expected an "
                                    "episode store such as outputs/<run>/data")
        self.path = path
        self.store = EpisodeStore(path, skip_bad_shards=True)
        table = self.store.episode_table()
        ends = np.asarray(table.episode_ends)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        ids = table.arrays["instruction_id"]
        self._rows = [
            [i, self.store.tasks[int(table.task_id[i])], self.store.splits[int(table.split_id[i])],
             int(table.seed[i]), int(ends[i] - starts[i]), bool(table.success[i]),
             self.store.instructions[int(ids[starts[i]])]]
            for i in range(len(ends))
        ]
        self.policy: Any = None
        self.introspector: Introspector | None = None
        self.note = ""
        if checkpoint is not None:
            policy = checkpoint.served.new_session()
            try:
                check_compatible(policy, self.store.info, where=f"dataset {path}")
            except ValueError as err:
                self.note = (f"the checkpoint does not fit this store, so only its labels "
                             f"are shown: {err}")
            else:
                self.policy, self.introspector = policy, Introspector(policy)
        self.index = -1
        self.running = False  # Play/Pause on the page
        self.episode: Any = None
        self._views: list[StepView] = []

    def rows(self) -> list[list[Any]]:
        """One row per episode, columns EPISODE_COLUMNS."""
        return [list(r) for r in self._rows]

    def open(self, index: int) -> StepView:
        n = len(self._rows)
        if not 0 <= int(index) < n:
            raise ValueError(f"episode {index}; expected 0..{n - 1} ({n} episodes in "
                             f"{self.path})")
        self.index = int(index)
        self.running = False
        self.episode = self.store.episode(self.index)
        self._views = []
        if self.policy is not None:
            self.policy.reset(self.episode.instruction)
        return self.seek(0)

    def __len__(self) -> int:
        return 0 if self.episode is None else len(self.episode)

    def seek(self, t: int) -> StepView:
        """The view at stored step `t` (clamped into the episode)."""
        if self.episode is None:
            raise RuntimeError("open an episode first")
        t = int(np.clip(t, 0, len(self.episode) - 1))
        while len(self._views) <= t:
            self._views.append(self._view(len(self._views)))
        return self._views[t]

    def step(self) -> StepView:
        current = self._views[-1].step if self._views else -1
        return self.seek(current + 1)

    def _view(self, t: int) -> StepView:
        ep = self.episode
        frame = ep.image[t]
        action = insight = label_bins = None
        act_ms = 0.0
        if self.policy is not None and self.introspector is not None:
            started = time.perf_counter()
            action = self.policy.select_action({IMAGE: frame, STATE: ep.state[t],
                                                INSTRUCTION: ep.instruction})
            act_ms = (time.perf_counter() - started) * 1e3
            insight = self.introspector.read()
            with torch.inference_mode():
                label_bins = self.policy.action_tokenizer.encode(
                    torch.as_tensor(ep.action[t])).cpu().numpy()
        last = t == len(ep) - 1
        return StepView(
            step=t, max_steps=len(ep) - 1, instruction=ep.instruction,
            actor=f"stored episode {self.index} ({ep.task}/{ep.split})", camera=frame,
            render=enlarge(frame, max(1, VIEW_PX // frame.shape[0])), seen=frame,
            action=action, insight=insight, label=ep.action[t], label_bins=label_bins,
            success=bool(ep.success), ended_by="end of stored episode" if last else "",
            act_ms=act_ms, seed=int(ep.seed))

    def close(self) -> None:
        if self.introspector is not None:
            self.introspector.close()
        self.policy = self.introspector = self.episode = None
        self._views = []
