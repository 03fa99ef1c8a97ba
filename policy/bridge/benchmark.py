"""Measure what the bridge costs: latency beside in-process inference, and a multi-robot load.

`latency`: one server process (scripts/serve.py) and, in this process, both a bridge client
and the same checkpoint loaded in-process. Rounds alternate between the two paths on the
same observations so that drift in machine load (other jobs on a shared CPU) hits both
alike; the bridge's overhead is the difference of the medians.

`load`: N robots (threads here, each with its own connection and fixed-rate clock) stream
observations at `hz` for `seconds`; we count error replies, timeouts and late ticks and read
the server's resident memory from /healthz before and after.

scripts/benchmark_bridge.py is the entry point; docs/RESULTS.md records the figures.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .client import BridgeClient, BridgeError, BridgeTimeout

REPO = Path(__file__).resolve().parents[2]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p99": float(np.percentile(values, 99)),
            "mean": statistics.fmean(values), "n": len(values)}


def random_observations(shape: tuple[int, ...], n_state: int, n: int,
                        seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, shape, dtype=np.uint8),
             "state": rng.normal(size=n_state).astype(np.float32)} for _ in range(n)]


class ServerProcess:
    """scripts/serve.py in a child process on a free loopback port."""

    def __init__(self, checkpoint: Path, torch_threads: int = 1) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bridge-bench-")
        ready = Path(self._dir.name) / "ready.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(torch_threads)}
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "serve.py"), f"checkpoint={checkpoint}",
             "server.port=0", f"server.torch_threads={torch_threads}",
             f"ready_file={ready}", f"hydra.run.dir={self._dir.name}/hydra", "log_level=WARNING"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"serve.py did not start: {self.proc.communicate()[1][-2000:]}")
            time.sleep(0.1)
        self.url = json.loads(ready.read_text())["url"]

    def health(self) -> dict[str, Any]:
        url = self.url.replace("ws://", "http://") + "/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._dir.cleanup()
        return code


@dataclass
class LatencyResult:
    in_process_ms: dict[str, float]
    bridge_round_trip_ms: dict[str, float]
    server_total_ms: dict[str, float]
    server_infer_ms: dict[str, float]
    server_queue_ms: dict[str, float]  # hand-over to the inference thread (one robot: no wait)
    server_decode_ms: dict[str, float]
    overhead_median_ms: float  # bridge round trip median - in-process median
    transport_median_ms: float  # round trip median - server total median (wire + codec)
    # median over requests of (round trip - server infer_ms): everything the bridge adds to
    # one step, paired within each request so that inference-time noise cancels
    paired_overhead_ms: dict[str, float]
    image_shape: list[int]
    steps_per_path: int


def latency(server: ServerProcess, checkpoint: Path, steps: int = 500, rounds: int = 5,
            warmup: int = 20, gap_s: float = 0.02) -> LatencyResult:
    """`gap_s` idles between calls on both paths, as a control loop does between ticks. Back
    to back, the in-process loop would be a CPU hog that the OS scheduler deprioritizes
    against the (mostly sleeping) server on a shared machine, skewing the comparison."""
    import torch  # the benchmark's in-process side; the client path itself needs no torch

    from policy.base import Policy

    torch.set_num_threads(1)  # the server uses one thread too: compare like with like
    local = Policy.from_pretrained(checkpoint)
    instruction = "pick up the red block"
    with BridgeClient(server.url, timeout_s=5.0) as client:
        meta = client.metadata
        obs = random_observations(meta.observation["image"].shape,
                                  meta.observation["state"].shape[0], 50)
        local.reset(instruction)
        client.reset(instruction)
        for i in range(warmup):
            local.select_action({**obs[i % len(obs)], "instruction": instruction})
            client.act(obs[i % len(obs)])
        inproc: list[float] = []
        rtt: list[float] = []
        total: list[float] = []
        infer: list[float] = []
        queue: list[float] = []
        decode: list[float] = []
        per_round = steps // rounds
        for _ in range(rounds):
            for i in range(per_round):
                o = {**obs[i % len(obs)], "instruction": instruction}
                start = time.perf_counter()
                local.select_action(o)
                inproc.append((time.perf_counter() - start) * 1e3)
                time.sleep(gap_s)
            for i in range(per_round):
                result = client.act(obs[i % len(obs)])
                time.sleep(gap_s)
                rtt.append(result.round_trip_ms)
                total.append(result.server_timing.total_ms)
                infer.append(result.server_timing.infer_ms)
                queue.append(result.server_timing.queue_ms)
                decode.append(result.server_timing.decode_ms)
    return LatencyResult(
        in_process_ms=summary_ms(inproc), bridge_round_trip_ms=summary_ms(rtt),
        server_total_ms=summary_ms(total), server_infer_ms=summary_ms(infer),
        server_queue_ms=summary_ms(queue), server_decode_ms=summary_ms(decode),
        overhead_median_ms=statistics.median(rtt) - statistics.median(inproc),
        transport_median_ms=statistics.median(rtt) - statistics.median(total),
        paired_overhead_ms=summary_ms([r - i for r, i in zip(rtt, infer, strict=True)]),
        image_shape=list(meta.observation["image"].shape), steps_per_path=len(rtt))


@dataclass
class RobotLoad:
    steps: int = 0
    errors: int = 0
    timeouts: int = 0
    late: int = 0
    round_trip_ms: list[float] = field(default_factory=list)


@dataclass
class LoadResult:
    clients: int
    hz: float
    seconds: float
    steps: int
    errors: int
    timeouts: int
    late_steps: int
    achieved_hz_per_client: list[float]
    round_trip_ms: dict[str, float]
    rss_before_bytes: int
    rss_after_bytes: int
    sessions_after: int


def _robot(url: str, hz: float, seconds: float, seed: int, out: RobotLoad,
           start: threading.Barrier, phase: float) -> None:
    period = 1.0 / hz
    with BridgeClient(url, timeout_s=1.0) as client:
        meta = client.metadata
        obs = random_observations(meta.observation["image"].shape,
                                  meta.observation["state"].shape[0], 20, seed)
        client.reset(f"pick up block number {seed}")
        start.wait()
        # Independent robots tick at unrelated phases; spread them over the period instead of
        # letting every request of a tick arrive in the same instant.
        time.sleep(phase * period)
        begin = next_tick = time.monotonic()
        while time.monotonic() - begin < seconds:
            try:
                out.round_trip_ms.append(client.act(obs[out.steps % len(obs)]).round_trip_ms)
            except BridgeError:
                out.errors += 1
            except BridgeTimeout:
                out.timeouts += 1
            except ConnectionError:
                out.errors += 1
                return
            out.steps += 1
            if out.steps % 100 == 0:  # episodes of 100 steps, as a robot would run them
                client.reset(f"pick up block number {seed}")
            next_tick += period
            slack = next_tick - time.monotonic()
            if slack > 0:
                time.sleep(slack)
            else:
                out.late += 1
                next_tick = time.monotonic()


def load(server: ServerProcess, clients: int = 4, hz: float = 10.0,
         seconds: float = 60.0) -> LoadResult:
    # One short pass first so that allocator pools and caches exist before the "before" RSS.
    warm = [RobotLoad() for _ in range(clients)]
    _run_robots(server.url, clients, hz, 2.0, warm)
    time.sleep(0.5)
    rss_before = server.health()["rss_bytes"]
    robots = [RobotLoad() for _ in range(clients)]
    _run_robots(server.url, clients, hz, seconds, robots)
    time.sleep(0.5)  # let the server notice the closed connections
    health = server.health()
    rtt = [v for r in robots for v in r.round_trip_ms]
    return LoadResult(
        clients=clients, hz=hz, seconds=seconds, steps=sum(r.steps for r in robots),
        errors=sum(r.errors for r in robots), timeouts=sum(r.timeouts for r in robots),
        late_steps=sum(r.late for r in robots),
        achieved_hz_per_client=[round(r.steps / seconds, 3) for r in robots],
        round_trip_ms=summary_ms(rtt) if rtt else {}, rss_before_bytes=rss_before,
        rss_after_bytes=health["rss_bytes"], sessions_after=health["sessions"])


def _run_robots(url: str, clients: int, hz: float, seconds: float,
                out: list[RobotLoad]) -> None:
    barrier = threading.Barrier(clients)
    threads = [threading.Thread(target=_robot,
                                args=(url, hz, seconds, i, out[i], barrier, i / clients))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)


def build_untrained_checkpoint(directory: Path, image_size: int, preset: str = "rt1") -> Path:
    """An untrained policy from conf/policy/<preset>.yaml at the env's image size: the same
    compute per step as a trained one, which is all a latency benchmark needs."""
    import torch

    import envs
    from envs.spec import DEFAULT_ACTION_SPEC
    from policy import make_policy
    from policy.base import load_policy_yaml

    torch.manual_seed(0)
    config = load_policy_yaml(REPO / "conf" / "policy" / f"{preset}.yaml")
    env = envs.make_env(image_size=image_size)
    info = env.describe()
    env.close()
    return make_policy(config, DEFAULT_ACTION_SPEC, info, None).save_pretrained(directory)


def run_benchmark(checkpoint: str | None, preset: str, image_size: int, steps: int,
                  rounds: int, gap_ms: float, clients: int, hz: float, seconds: float,
                  out: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bridge-ckpt-") as tmp:
        ckpt = (Path(checkpoint) if checkpoint
                else build_untrained_checkpoint(Path(tmp) / preset, image_size, preset))
        server = ServerProcess(ckpt)
        try:
            lat = latency(server, ckpt, steps=steps, rounds=rounds, gap_s=gap_ms / 1e3)
            result: dict[str, Any] = {"checkpoint": str(checkpoint or f"untrained {preset}"),
                                      "latency": asdict(lat)}
            if seconds > 0:
                result["load"] = asdict(load(server, clients=clients, hz=hz, seconds=seconds))
        finally:
            result_exit = server.stop()
        result["server_exit_code"] = result_exit
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def format_markdown(result: dict[str, Any]) -> str:
    lat = result["latency"]
    lines = [f"checkpoint: {result['checkpoint']}, image {lat['image_shape']}, "
             f"{lat['steps_per_path']} steps per path", "",
             "| path | median ms | p99 ms | mean ms |", "|---|---|---|---|"]
    for name, key in (("in-process select_action", "in_process_ms"),
                      ("bridge round trip (client)", "bridge_round_trip_ms"),
                      ("server total_ms", "server_total_ms"),
                      ("server infer_ms", "server_infer_ms"),
                      ("server queue_ms", "server_queue_ms"),
                      ("server decode_ms", "server_decode_ms")):
        s = lat[key]
        lines.append(f"| {name} | {s['median']:.2f} | {s['p99']:.2f} | {s['mean']:.2f} |")
    paired = lat["paired_overhead_ms"]
    lines += ["", f"bridge overhead (round-trip median - in-process median): "
                  f"{lat['overhead_median_ms']:.2f} ms; paired per request (round trip - "
                  f"server infer_ms): median {paired['median']:.2f} ms, p99 "
                  f"{paired['p99']:.2f} ms; wire + codec (round-trip median - server total "
                  f"median): {lat['transport_median_ms']:.2f} ms"]
    if "load" in result:
        ld = result["load"]
        mib = 1 / (1 << 20)
        lines += ["", f"load: {ld['clients']} clients at {ld['hz']:g} Hz for "
                      f"{ld['seconds']:g} s: {ld['steps']} steps, {ld['errors']} errors, "
                      f"{ld['timeouts']} timeouts, {ld['late_steps']} late steps, achieved Hz "
                      f"{ld['achieved_hz_per_client']}, round trip median "
                      f"{ld['round_trip_ms']['median']:.2f} ms / p99 "
                      f"{ld['round_trip_ms']['p99']:.2f} ms; server RSS "
                      f"{ld['rss_before_bytes'] * mib:.1f} MiB before, "
                      f"{ld['rss_after_bytes'] * mib:.1f} MiB after; sessions after: "
                      f"{ld['sessions_after']}"]
    lines.append(f"server exit code after SIGTERM: {result['server_exit_code']}")
    return "\n".join(lines)
