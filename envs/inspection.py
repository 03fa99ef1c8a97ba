"""What scripts/inspect_dataset.py prints and draws about an episode store.

`summarize` counts episodes, steps and successes per task and split and gathers the
instructions and statistics; `contact_sheet` writes a PNG grid of random frames titled with
their instructions, for a look at what was collected before training on it. A store with
visual prompts adds the share of episodes that show their target by image and the crop
size, and the sheet shows each frame's episode crops beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.spec import IMAGE, prompt_slots
from envs.store import EpisodeStore


@dataclass
class StoreSummary:
    """What `scripts/inspect_dataset.py` prints about a store."""

    path: str
    shards: int
    bad_shards: list[str]
    episodes: int
    steps: int
    successes: int
    seeds: tuple[int, int] | None  # min, max
    rejected: int
    per_task: dict[str, dict[str, float]]  # task -> episodes, steps, success rate
    splits: dict[str, int]  # split -> episodes
    instructions: list[str]
    image_shape: list[int]
    renderer: str
    stats: dict[str, dict[str, list[float]]]
    state_names: list[str]
    action_names: list[str]
    # Visual prompts: share of episodes with an image slot, and the crop side S; both None
    # for a store without prompt images.
    visual_prompts: float | None = None
    prompt_image_size: int | None = None

    def format(self, max_instructions: int = 10) -> str:
        lines = [
            f"store        {self.path}",
            f"shards       {self.shards} readable"
            + (f", {len(self.bad_shards)} bad: {self.bad_shards}" if self.bad_shards else ""),
            f"episodes     {self.episodes} ({self.successes} successful, "
            f"{self.rejected} tried and not kept)",
            f"steps        {self.steps} (mean {self.steps / max(self.episodes, 1):.1f} per "
            "episode)",
            f"seeds        {self.seeds[0]}..{self.seeds[1]}" if self.seeds else "seeds        -",
            f"images       {self.image_shape} ({self.renderer})",
            *([f"prompts      {self.visual_prompts:.0%} of episodes show an object by image "
               f"({self.prompt_image_size} px crops)"] if self.prompt_image_size else []),
            f"splits       {self.splits}",
            "tasks        " + ", ".join(
                f"{t}: {int(v['episodes'])} ep, {int(v['steps'])} steps, "
                f"{v['success_rate']:.0%} success" for t, v in self.per_task.items()),
            f"instructions {len(self.instructions)} distinct, e.g.:",
        ]
        lines += [f"  - {s}" for s in self.instructions[:max_instructions]]
        for key, names in (("action", self.action_names), ("state", self.state_names)):
            if key not in self.stats:
                continue
            st = self.stats[key]
            lines.append(f"{key} stats (per dim):")
            lines.append("  " + f"{'dim':<14}" + "".join(
                f"{s:>9}" for s in ("min", "p01", "mean", "std", "p99", "max")))
            for d in range(len(st["min"])):
                name = names[d] if d < len(names) else str(d)
                lines.append("  " + f"{name:<14}" + "".join(
                    f"{st[s][d]:>9.3f}" for s in ("min", "p01", "mean", "std", "p99", "max")))
        return "\n".join(lines)


def summarize(store: EpisodeStore) -> StoreSummary:
    """Counts per task and split, success, seeds, instructions and stats of a store."""
    table = store.episode_table()
    lengths = table.episode_ends - table.episode_starts
    per_task = {}
    for t, name in enumerate(store.tasks):
        sel = table.task_id == t
        per_task[name] = {"episodes": float(sel.sum()), "steps": float(lengths[sel].sum()),
                          "success_rate": float(table.success[sel].mean()) if sel.any() else 0.0}
    splits = {name: int((table.split_id == s).sum()) for s, name in enumerate(store.splits)}
    info = store.info
    spec = info.get("action_spec", {}).get("dims", [])
    prompt_shape = store.prompt_image_shape
    with_slots = [prompt_slots(sh.episode_instruction(i)) > 0
                  for sh in store.shards for i in range(sh.num_episodes)]
    return StoreSummary(
        path=str(store.path),
        shards=len(store.shards),
        bad_shards=[str(e.path) for e in store.bad_shards],
        episodes=store.num_episodes,
        steps=store.num_steps,
        successes=int(table.success.sum()),
        seeds=(int(table.seed.min()), int(table.seed.max())) if len(table.seed) else None,
        rejected=sum(sh.num_rejected for sh in store.shards),
        per_task=per_task,
        splits=splits,
        instructions=list(store.instructions),
        image_shape=list(store.image_shape or []),
        renderer=str(info.get("renderer", "?")),
        stats=store.stats if store.num_steps else {},
        state_names=list(info.get("state_names", [])),
        action_names=[d["name"] for d in spec],
        visual_prompts=(float(np.mean(with_slots)) if with_slots else 0.0)
        if prompt_shape else None,
        prompt_image_size=int(prompt_shape[1]) if prompt_shape else None,
    )


def contact_sheet(store: EpisodeStore, out: Path | str, frames: int = 24, cols: int = 6,
                  seed: int = 0) -> Path:
    """A PNG grid of random frames, each titled with its instruction and episode/step; the
    crops of an episode with visual prompts are drawn small beside the frame (top right)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a headless machine
    import matplotlib.pyplot as plt

    if store.num_steps == 0:
        raise ValueError(f"store {store.path} has no steps to show")
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(store.num_steps, size=min(frames, store.num_steps),
                               replace=False))
    rows = -(-len(picks) // cols)
    wide = 1.4 if store.prompt_image_shape else 1.0  # room for the crops beside each frame
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * wide * cols, 2.7 * rows),
                             squeeze=False)
    offsets = np.cumsum([0] + [sh.num_steps for sh in store.shards])
    for ax in axes.flat:
        ax.axis("off")
    for ax, step in zip(axes.flat, picks, strict=False):
        s = int(np.searchsorted(offsets, step, side="right") - 1)
        sh, row = store.shards[s], int(step - offsets[s])
        ep = int(np.searchsorted(sh.episode_ends, row, side="right"))
        ax.imshow(sh.read(IMAGE, row, row + 1)[0])
        title = sh.episode_instruction(ep)
        crops = sh.prompt_images(ep, ep + 1)
        slots = prompt_slots(title)
        for k in range(slots if crops is not None else 0):
            inset = ax.inset_axes((1.02, 1 - 0.36 * (k + 1), 0.34, 0.34))
            inset.imshow(crops[0, k])
            inset.set_xticks([])
            inset.set_yticks([])
        if slots and sh.episode_prompt_words(ep):
            title += " [" + ", ".join(sh.episode_prompt_words(ep)) + "]"
        ax.set_title(f"{title}\n{sh.episode_task(ep)} seed {int(sh.seeds[ep])} "
                     f"t={row - int(sh.episode_starts[ep])}", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
