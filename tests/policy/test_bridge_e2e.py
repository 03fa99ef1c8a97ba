"""The bridge with a real (tiny, untrained) RT-1 checkpoint: served actions equal in-process
`select_action`, sessions share one model's weights, and the two scripts work end to end —
scripts/serve.py in one process, scripts/robot.py (the PyBullet env) in another, /healthz,
SIGTERM exiting 0, and a non-loopback bind without a token refused at start-up.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import envs
from envs.spec import DEFAULT_ACTION_SPEC, STATE_NAMES
from policy import GatoConfig, Policy, make_policy
from policy.base import load_policy_yaml
from policy.bridge.client import BridgeClient
from policy.bridge.loading import load_served_policy
from policy.bridge.server import ServerConfig
from policy.bridge.thread import ServerThread
from policy.checkpoint_hash import checkpoint_sha256

REPO = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 96  # the env's default: the bridge's default load


def preset(name: str) -> Any:
    """A policy config from conf/policy/<name>.yaml, as training would build it."""
    return load_policy_yaml(REPO / "conf" / "policy" / f"{name}.yaml")


@pytest.fixture(scope="module")
def env_info() -> dict:
    env = envs.make_env(task="pick", split="seen", image_size=IMAGE_SIZE)
    info = env.describe()
    env.close()
    return info


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, env_info: dict) -> Path:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = make_policy(preset("rt1_tiny"), DEFAULT_ACTION_SPEC, env_info, None)
    # Untrained weights would raise the terminate flag at random and end robot episodes after
    # a step or two; favour terminate's lowest bin (head layout "(a k)", terminate first) so
    # episodes run to the step limit and the control rate is measured over several steps.
    with torch.no_grad():
        policy.head.bias[0] += 50.0
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny_rt1")


def observations(seed: int, n: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
             "state": rng.normal(size=len(STATE_NAMES)).astype(np.float32)}
            for _ in range(n)]


@pytest.fixture(scope="module")
def served_rt1(checkpoint: Path) -> Iterator[ServerThread]:
    served = load_served_policy(checkpoint, warmup_steps=1)
    with ServerThread(served, ServerConfig(port=0)) as st:
        yield st


def test_metadata_describes_the_checkpoint(served_rt1: ServerThread, checkpoint: Path) -> None:
    with BridgeClient(served_rt1.url, expected_action_spec=DEFAULT_ACTION_SPEC,
                      expected_checkpoint_sha256=checkpoint_sha256(checkpoint)) as client:
        meta = client.metadata
    assert meta.policy_kind == "rt1"
    assert meta.observation["image"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert meta.observation["image"].dtype == "uint8"
    assert meta.state_names == STATE_NAMES
    assert meta.control_hz == 10
    assert meta.action_names == DEFAULT_ACTION_SPEC.names


def test_checkpoint_hash_changes_with_weights_and_stats(checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(checkpoint, tmp_path / "copy"))
    assert checkpoint_sha256(copy) == checkpoint_sha256(checkpoint)
    (copy / "stats.json").write_text(json.dumps({"action": {"mean": [0.1] * 8}}))
    assert checkpoint_sha256(copy) != checkpoint_sha256(checkpoint)


def test_rt1_actions_over_bridge_equal_in_process(served_rt1: ServerThread,
                                                  checkpoint: Path) -> None:
    local = Policy.from_pretrained(checkpoint)
    instruction = "pick up the red block"
    local.reset(instruction)
    with BridgeClient(served_rt1.url) as client:
        client.reset(instruction)
        for obs in observations(0, 5):
            remote = client.select_action(obs)
            np.testing.assert_array_equal(
                remote, local.select_action({**obs, "instruction": instruction}))


def test_rt1_concurrent_sessions_keep_separate_histories(served_rt1: ServerThread,
                                                         checkpoint: Path) -> None:
    local = {"a": Policy.from_pretrained(checkpoint), "b": Policy.from_pretrained(checkpoint)}
    instructions = {"a": "pick up the red block", "b": "lift the green cube"}
    streams = {"a": observations(1, 4), "b": observations(2, 4)}
    clients = {k: BridgeClient(served_rt1.url) for k in local}
    try:
        for k in local:
            local[k].reset(instructions[k])
            clients[k].reset(instructions[k])
        for step in range(4):  # interleaved: a, b, a, b, ...
            for k in local:
                obs = streams[k][step]
                np.testing.assert_array_equal(
                    clients[k].select_action(obs),
                    local[k].select_action({**obs, "instruction": instructions[k]}))
        assert served_rt1.server.active_sessions == 2
    finally:
        for c in clients.values():
            c.close()


def test_gato_sessions_over_bridge_equal_in_process(tmp_path: Path, env_info: dict) -> None:
    # The bridge serves any policy family through the Policy API; Gato keeps its history in
    # its own way (a token cache), so check it separately from RT-1.
    torch.manual_seed(1)
    config = preset("gato_tiny")
    assert isinstance(config, GatoConfig)
    ckpt = make_policy(config, DEFAULT_ACTION_SPEC, env_info, None).save_pretrained(
        tmp_path / "gato")
    local = {k: Policy.from_pretrained(ckpt) for k in "ab"}
    instructions = {"a": "pick up the red block", "b": "lift the green cube"}
    streams = {"a": observations(3, 3), "b": observations(4, 3)}
    with ServerThread(load_served_policy(ckpt, warmup_steps=1), ServerConfig(port=0)) as st:
        clients = {k: BridgeClient(st.url) for k in local}
        try:
            assert clients["a"].metadata.policy_kind == "gato"
            for k in local:
                local[k].reset(instructions[k])
                clients[k].reset(instructions[k])
            for step in range(3):
                for k in local:
                    obs = streams[k][step]
                    np.testing.assert_array_equal(
                        clients[k].select_action(obs),
                        local[k].select_action({**obs, "instruction": instructions[k]}))
        finally:
            for c in clients.values():
                c.close()


def test_rt1_session_is_freed_when_its_robot_drops(served_rt1: ServerThread) -> None:
    server = served_rt1.server
    deadline = time.monotonic() + 5
    while server.active_sessions and time.monotonic() < deadline:
        time.sleep(0.01)
    client = BridgeClient(served_rt1.url)
    client.reset("pick up the block")
    client.act(observations(5, 1)[0])
    (connection,) = server._connections.values()
    session = weakref.ref(connection.session)
    del connection
    gc.disable()  # freed by reference counting, not left for a garbage-collector pass
    try:
        client._ws.socket.close()  # vanish without a closing handshake, like a crashed robot
        deadline = time.monotonic() + 5
        while ((server.active_sessions or session() is not None)
               and time.monotonic() < deadline):
            time.sleep(0.01)
        assert server.active_sessions == 0
        assert session() is None
    finally:
        gc.enable()


def test_sessions_share_the_loaded_weights(checkpoint: Path) -> None:
    served = load_served_policy(checkpoint, warmup_steps=0)
    one, two = served.new_session(), served.new_session()
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        assert a.data_ptr() == b.data_ptr(), f"{name} is copied per session"
    assert one._frames is not two._frames


# --- the scripts, each in its own process ----------------------------------------------------


def script_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def start_server(checkpoint: Path, tmp_path: Path, *overrides: str) -> tuple[subprocess.Popen,
                                                                              dict]:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "scripts/serve.py", f"checkpoint={checkpoint}", "server.port=0",
         f"ready_file={ready}", "warmup_steps=1", f"hydra.run.dir={tmp_path / 'serve'}",
         *overrides],
        cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    deadline = time.monotonic() + 90
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve.py did not start: {proc.communicate()[0][-3000:]}")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())


@pytest.mark.slow  # two fresh interpreters load torch, the text model and PyBullet
def test_serve_and_robot_scripts_end_to_end_then_sigterm(checkpoint: Path,
                                                         tmp_path: Path) -> None:
    server, ready = start_server(checkpoint, tmp_path)
    try:
        http = ready["url"].replace("ws://", "http://")
        with urllib.request.urlopen(f"{http}/healthz", timeout=5) as response:
            health = json.loads(response.read())
        assert health["checkpoint_sha256"] == checkpoint_sha256(checkpoint)
        report_file = tmp_path / "robot.json"
        robot = subprocess.run(
            [sys.executable, "scripts/robot.py", f"url={ready['url']}", "episodes=2",
             "max_steps=6", f"report_file={report_file}",
             f"expected_checkpoint_sha256={checkpoint_sha256(checkpoint)}",
             f"hydra.run.dir={tmp_path / 'robot'}"],
            cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120)
        assert robot.returncode == 0, robot.stderr[-3000:]
        assert "success" in robot.stdout
        report = json.loads(report_file.read_text())
        assert len(report["episodes"]) == 2
        for episode in report["episodes"]:
            assert episode["steps"] == 6 and episode["timeouts"] == 0
            # every step lasts at least one 100 ms period, however loaded the machine (the
            # pacing itself is checked on a virtual clock in test_bridge.py)
            assert 0.0 < episode["achieved_hz"] <= 10.0 + 1e-6
            assert isinstance(episode["success"], bool)
        # a robot still connected when the server is told to stop is closed cleanly
        client = BridgeClient(ready["url"])
        client.reset("pick up the block")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
        with pytest.raises(ConnectionError):
            client.reset("again")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_refuses_non_loopback_without_token(checkpoint: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in script_env().items() if k != "ROBOTOK_BRIDGE_TOKEN"}
    result = subprocess.run(
        [sys.executable, "scripts/serve.py", f"checkpoint={checkpoint}", "server.host=0.0.0.0",
         f"hydra.run.dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "refusing to listen on non-loopback host '0.0.0.0' without a token" in result.stderr


def test_configs_compose_and_default_to_loopback() -> None:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("serve", overrides=["checkpoint=/some/dir", "server.port=9000"])
        server = instantiate(cfg.server)
        assert isinstance(server, ServerConfig)
        assert (server.host, server.port) == ("127.0.0.1", 9000)
        bad = compose("serve", overrides=["checkpoint=x", "server.host=10.0.0.5"])
        with pytest.raises(Exception, match="without a token"):
            instantiate(bad.server)
        robot = compose("robot", overrides=["episodes=1"])
        assert robot.url.startswith("ws://127.0.0.1") and robot.episodes == 1
