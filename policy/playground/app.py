"""The playground page, built with gradio, and the server that hosts it.

Every browser tab gets its own PlaySession (and DatasetBrowser), keyed by gradio's session
hash; the model weights exist once. Start/Pause drive a page timer at the env's control
rate, so the steps run only while the page is open, and closing the tab (gradio's `unload`)
frees the tab's envs and policy histories: the episode stops with it.
Gradio is told to stay offline: no analytics, no share link, no server-side rendering; its
page and fonts ship in the wheel.
"""

from __future__ import annotations

import hmac
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported
import gradio as gr  # noqa: E402

from envs.camera import CameraConfig
from envs.spec import DEFAULT_ACTION_SPEC, EVAL_SEED_START, MAX_PROMPT_IMAGES
from policy.playground.config import PlayServerConfig
from policy.playground.dataset import EPISODE_COLUMNS, DatasetBrowser
from policy.playground.session import (
    ORACLE,
    POLICY,
    SECOND,
    VIEW_CAMERA,
    Checkpoint,
    PlaySession,
    StepView,
)
from policy.playground.views import attention_view, distribution_view, enlarge

CAMERA_SCALE = 4  # the policy's 64 px frame shown at 256 px
IMAGE_PX = 330  # height of each picture on the page; tall enough for 8 action dimensions


class Playground:
    """The sessions of all open tabs, and what a new tab starts with."""

    def __init__(self, checkpoints: Mapping[str, Checkpoint], task: str = "pick",
                 split: str = "seen", seed: int = EVAL_SEED_START,
                 view: CameraConfig | None = VIEW_CAMERA, dataset: str | None = None,
                 max_sessions: int = 4, control_hz: float | None = None) -> None:
        import envs

        if max_sessions < 1:
            raise ValueError(f"max_sessions={max_sessions}; expected >= 1")
        if task not in envs.TASKS or split not in envs.ALL_SPLITS:
            raise ValueError(f"task={task!r}, split={split!r}; expected a task in "
                             f"{list(envs.TASKS)} and a split in {list(envs.ALL_SPLITS)}")
        if POLICY not in checkpoints:
            raise ValueError(f"checkpoints {sorted(checkpoints)} lack {POLICY!r}")
        self.checkpoints = dict(checkpoints)
        self.task, self.split, self.seed = task, split, int(seed)
        self.view = view
        self.dataset = dataset or ""
        self.max_sessions = max_sessions
        # Start runs one step per period; None: the checkpoint's own control rate. A lower
        # rate plays an episode slowly enough to watch (or to pause at a chosen step).
        served_hz = float(self.checkpoints[POLICY].served.control_hz)
        self.control_hz = served_hz if control_hz is None else float(control_hz)
        if not self.control_hz > 0:
            raise ValueError(f"control_hz={control_hz}; expected a rate > 0 Hz (or None for "
                             f"the checkpoint's {served_hz:g} Hz)")
        self.sessions: dict[str, PlaySession] = {}
        self.browsers: dict[str, DatasetBrowser] = {}
        self._lock = threading.Lock()

    def session(self, key: str) -> PlaySession:
        with self._lock:
            if key not in self.sessions:
                if len(self.sessions) >= self.max_sessions:
                    raise ValueError(f"{len(self.sessions)} playground tabs are open; "
                                     f"max_sessions={self.max_sessions}: close one")
                self.sessions[key] = PlaySession(self.checkpoints, self.view)
            return self.sessions[key]

    def open_dataset(self, key: str, path: str) -> DatasetBrowser:
        browser = DatasetBrowser(path, self.checkpoints[POLICY])
        with self._lock:
            old = self.browsers.pop(key, None)
            self.browsers[key] = browser
        if old is not None:
            old.close()
        return browser

    def browser(self, key: str) -> DatasetBrowser:
        if key not in self.browsers:
            raise ValueError("open a dataset first: type its folder and press Open")
        return self.browsers[key]

    def close(self, key: str) -> None:
        """The tab `key` went away: stop its episode and free what it held."""
        with self._lock:
            session = self.sessions.pop(key, None)
            browser = self.browsers.pop(key, None)
        if session is not None:
            with session.lock:
                session.close()
        if browser is not None:
            browser.close()

    def close_all(self) -> None:
        for key in list(self.sessions) + list(self.browsers):
            self.close(key)


# ----------------------------------------------------------------------------- pictures


def names_of(view: StepView) -> tuple[str, ...]:
    """The action dimensions' names (the env's action spec when the actor has no insight)."""
    return view.insight.names if view.insight is not None else tuple(DEFAULT_ACTION_SPEC.names)


def status_text(view: StepView, who: str) -> str:
    """The step counter and the signals of the last action, as markdown."""
    if view.label is not None:  # a stored episode: its outcome is known from the start
        outcome = f"stored outcome: {'success' if view.success else 'failure'}"
    elif view.done:
        outcome = f"**{'success' if view.success else 'failure'}** ({view.ended_by})"
    else:
        outcome = "success so far" if view.success else "running"
    lines = [f"### step {view.step} / {view.max_steps}",
             f"{who} · seed {view.seed} · {outcome}"
             + (f" · milestone: {view.milestone}" if view.milestone else ""),
             f"instruction: *{view.instruction}*"]
    if view.action is not None:
        a = dict(zip(names_of(view), view.action.tolist(), strict=False))
        gripper = a.get("gripper", 0.0)
        terminate = a.get("terminate", -1.0)
        lines.append(f"gripper: **{'close' if gripper > 0 else 'open'}** ({gripper:+.2f}) · "
                     f"terminate: **{'yes' if terminate > 0 else 'no'}** ({terminate:+.2f}) · "
                     f"acting took {view.act_ms:.1f} ms")
    if view.label is not None:
        a = dict(zip(names_of(view), view.label.tolist(), strict=False))
        lines.append(f"stored label: gripper {'close' if a.get('gripper', 0) > 0 else 'open'}, "
                     f"terminate {'yes' if a.get('terminate', -1) > 0 else 'no'} · green: the "
                     "stored label's bin; red: the checkpoint's choice on this frame")
    return "\n\n".join(lines)


def pictures(view: StepView) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                      np.ndarray | None]:
    """camera, render, attention heat map, distributions (None where there is nothing)."""
    camera = enlarge(view.camera, CAMERA_SCALE)
    insight = view.insight
    heat = (attention_view(view.seen, insight.attention, CAMERA_SCALE)
            if insight is not None and insight.attention is not None and view.seen is not None
            else None)
    bars = (distribution_view(insight, view.action, view.label_bins)
            if insight is not None else None)
    return camera, view.render, heat, bars


# ----------------------------------------------------------------------------- the page


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input (ValueError and the like) becomes a message on the page, not a trace."""
    try:
        yield
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise gr.Error(str(err)) from err


def build_app(play: Playground) -> Any:
    """The gradio Blocks of the playground (simulation tab and dataset tab)."""
    import envs

    actors = {play.checkpoints[POLICY].label: POLICY}
    if SECOND in play.checkpoints:
        actors[f"second: {play.checkpoints[SECOND].label}"] = SECOND
    actors["scripted oracle"] = ORACLE
    names = {v: k for k, v in actors.items()}
    period = 1.0 / play.control_hz
    # the upload boxes only for a checkpoint that reads image prompts
    reads_prompts = any(c.served.prompt_images is not None for c in play.checkpoints.values())

    with gr.Blocks(title="robotok playground", analytics_enabled=False,
                   delete_cache=(300, 600)) as app:
        gr.Markdown(f"## robotok playground · {play.checkpoints[POLICY].label}")
        with gr.Tab("Simulation"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    task = gr.Dropdown(list(envs.TASKS), value=play.task, label="task")
                    split = gr.Dropdown(list(envs.ALL_SPLITS), value=play.split, label="split")
                    seed = gr.Number(play.seed, precision=0, label="seed", minimum=0)
                    with gr.Row():
                        reset = gr.Button("Reset", elem_id="reset-btn")
                        new_scene = gr.Button("Next seed", elem_id="next-seed-btn")
                    actor = gr.Radio(list(actors), value=names[POLICY], label="who acts",
                                     info="switching replays the same seed")
                    instruction = gr.Textbox(label="instruction", lines=2, max_lines=3,
                                             elem_id="instruction",
                                             info="any text; applied at the next step")
                    keep = gr.Checkbox(False, label="keep this instruction on Reset",
                                       elem_id="keep-instruction")
                    with gr.Accordion("show the object by image", open=False,
                                      visible=reads_prompts):
                        gr.Markdown("Type `{image}` in the instruction where the object's "
                                    "name would go (\"pick up the {image}\") and give a "
                                    "picture of it per slot: cropped tightly around the "
                                    "object; it is cut square and scaled to the checkpoint's "
                                    "crops, and stays until removed.")
                        with gr.Row():
                            prompt_inputs = [
                                gr.Image(label=f"{{image}} #{i + 1}", type="numpy",
                                         image_mode="RGBA", sources=["upload", "clipboard"],
                                         elem_id=f"prompt-image-{i}", height=140)
                                for i in range(MAX_PROMPT_IMAGES)]
                    with gr.Row():
                        start = gr.Button("Start", variant="primary", elem_id="start-btn")
                        pause = gr.Button("Pause", elem_id="pause-btn")
                        step = gr.Button("Step", elem_id="step-btn")
                    save = gr.Button("Save episode as mp4", elem_id="save-btn")
                    video = gr.File(label="episode video", visible=False, elem_id="video")
                with gr.Column(scale=3):
                    status = gr.Markdown(elem_id="status")
                    with gr.Row():
                        camera = gr.Image(label="policy camera", elem_id="camera",
                                          interactive=False, format="png", height=IMAGE_PX)
                        render = gr.Image(label="scene", elem_id="render", interactive=False,
                                          format="png", height=IMAGE_PX)
                    with gr.Row():
                        heat = gr.Image(label="TokenLearner attention (RT-1)",
                                        elem_id="attention", interactive=False, format="png",
                                        height=IMAGE_PX)
                        bars = gr.Image(label="action bins: distribution and choice",
                                        elem_id="distributions", interactive=False,
                                        format="png", height=IMAGE_PX)
            timer = gr.Timer(period, active=False)

        with gr.Tab("Dataset"):
            with gr.Row():
                path = gr.Textbox(play.dataset, label="episode store", scale=4,
                                  placeholder="outputs/<run>/data", elem_id="dataset-path")
                open_btn = gr.Button("Open", scale=1, elem_id="dataset-open")
            note = gr.Markdown()
            episodes = gr.Dataframe(headers=list(EPISODE_COLUMNS), interactive=False,
                                    max_height=240, label="episodes (click one)")
            with gr.Row():
                d_index = gr.Number(0, precision=0, label="episode", minimum=0)
                d_step = gr.Slider(0, 1, value=0, step=1, label="stored step")
            with gr.Row():
                d_play = gr.Button("Play", variant="primary")
                d_pause = gr.Button("Pause")
                d_next = gr.Button("Step")
            d_status = gr.Markdown()
            with gr.Row():
                d_camera = gr.Image(label="stored camera", interactive=False, format="png",
                                    height=IMAGE_PX)
                d_heat = gr.Image(label="TokenLearner attention (RT-1)", interactive=False,
                                  format="png", height=IMAGE_PX)
                d_bars = gr.Image(label="label (green) and checkpoint (red)",
                                  interactive=False, format="png", height=IMAGE_PX)
            d_timer = gr.Timer(period, active=False)

        sim_views = [camera, render, heat, bars, status]
        data_views = [d_camera, d_heat, d_bars, d_status, d_step]

        def show(session: PlaySession, view: StepView) -> list[Any]:
            return [*pictures(view), status_text(view, session.label(view.actor))]

        def show_stored(view: StepView) -> list[Any]:
            _, render, heat_img, bars_img = pictures(view)
            return [render, heat_img, bars_img, status_text(view, view.actor),
                    gr.Slider(maximum=max(view.max_steps, 1), value=view.step)]

        @contextmanager
        def tab(request: gr.Request) -> Iterator[PlaySession]:
            """The calling tab's session, under its lock (a tick and a click may overlap)."""
            with user_errors():
                session = play.session(request.session_hash)
                with session.lock:
                    yield session

        def on_load(request: gr.Request) -> list[Any]:
            with tab(request) as session:
                view = session.reset(play.task, play.split, play.seed, actor=POLICY)
                return [*show(session, view), view.instruction]

        def on_reset(task_: str, split_: str, seed_: float, actor_: str, text: str,
                     keep_: bool, request: gr.Request) -> list[Any]:
            with tab(request) as session:
                view = session.reset(task_, split_, int(seed_), actor=actors[actor_],
                                     instruction=text if keep_ else None)
                return [*show(session, view), view.instruction, gr.Timer(active=False)]

        def on_next_seed(task_: str, split_: str, seed_: float, actor_: str, text: str,
                         keep_: bool, request: gr.Request) -> list[Any]:
            return [*on_reset(task_, split_, seed_ + 1, actor_, text, keep_, request),
                    int(seed_) + 1]

        def on_switch(actor_: str, text: str, request: gr.Request) -> list[Any]:
            # Same task, split, seed and instruction: only who acts changes.
            with tab(request) as session:
                view = session.reset(session.task, session.split, session.seed,
                                     actor=actors[actor_], instruction=text)
                return [*show(session, view), gr.Timer(active=False)]

        def on_step(text: str, request: gr.Request) -> list[Any]:
            with tab(request) as session:
                session.set_instruction(text)
                return show(session, session.step())

        def on_start(text: str, request: gr.Request) -> Any:
            with tab(request) as session:
                session.set_instruction(text)
                session.running = session.view is not None and not session.view.done
                return gr.Timer(active=session.running)

        def on_pause(request: gr.Request) -> None:
            # Not queued, no lock and no outputs (the page would hold it behind the running
            # ticks, which share the timer output): the next tick finds the flag down and
            # switches the timer off itself.
            session = play.sessions.get(request.session_hash)
            if session is not None:
                session.running = False

        def on_tick(request: gr.Request) -> list[Any]:
            with tab(request) as session:
                if not session.running:
                    return [*(gr.skip() for _ in sim_views), gr.Timer(active=False)]
                view = session.step()
                session.running = not view.done
                return [*show(session, view), gr.Timer(active=session.running)]

        def on_save(request: gr.Request) -> Any:
            with tab(request) as session:
                return gr.File(value=str(session.save_video(fps=round(play.control_hz))),
                               visible=True)

        def on_prompt(slot: int) -> Any:
            def handler(picture: Any, request: gr.Request) -> list[Any]:
                with tab(request) as session:
                    session.set_prompt_image(slot, picture)
                    if session.view is None:
                        return [gr.skip() for _ in sim_views]
                    return show(session, session.view)
            return handler

        def on_unload(request: gr.Request) -> None:
            play.close(request.session_hash)

        reset_inputs = [task, split, seed, actor, instruction, keep]
        app.load(on_load, None, [*sim_views, instruction])
        reset.click(on_reset, reset_inputs, [*sim_views, instruction, timer])
        new_scene.click(on_next_seed, reset_inputs, [*sim_views, instruction, timer, seed])
        actor.input(on_switch, [actor, instruction], [*sim_views, timer])
        step.click(on_step, [instruction], sim_views)
        start.click(on_start, [instruction], timer)
        pause.click(on_pause, None, None, queue=False)
        timer.tick(on_tick, None, [*sim_views, timer], trigger_mode="once",
                   show_progress="hidden")
        save.click(on_save, None, video)
        for i, box in enumerate(prompt_inputs):
            box.upload(on_prompt(i), [box], sim_views)
            box.clear(on_prompt(i), [box], sim_views)
        app.unload(on_unload)

        # -- dataset tab ----------------------------------------------------------------
        def on_open(path_: str, request: gr.Request) -> list[Any]:
            with user_errors():
                browser = play.open_dataset(request.session_hash, path_)
                view = browser.open(0)
                note_ = f"{len(browser.rows())} episodes in {browser.path}. {browser.note}"
                return [note_, browser.rows(), 0, *show_stored(view)]

        def on_episode(index: float, request: gr.Request) -> list[Any]:
            with user_errors():
                return show_stored(play.browser(request.session_hash).open(int(index)))

        def on_select(event: gr.SelectData, request: gr.Request) -> list[Any]:
            with user_errors():
                row = int(event.index[0])
                return [row, *show_stored(play.browser(request.session_hash).open(row))]

        def on_seek(t: float, request: gr.Request) -> list[Any]:
            with user_errors():
                return show_stored(play.browser(request.session_hash).seek(int(t)))

        def on_d_step(request: gr.Request) -> list[Any]:
            with user_errors():
                view = play.browser(request.session_hash).step()
                return show_stored(view)

        def on_d_play(request: gr.Request) -> Any:
            with user_errors():
                play.browser(request.session_hash).running = True
                return gr.Timer(active=True)

        def on_d_pause(request: gr.Request) -> None:
            browser = play.browsers.get(request.session_hash)
            if browser is not None:
                browser.running = False  # as on_pause

        def on_d_tick(request: gr.Request) -> list[Any]:
            with user_errors():
                browser = play.browser(request.session_hash)
                if not browser.running:
                    return [*(gr.skip() for _ in data_views), gr.Timer(active=False)]
                view = browser.step()
                browser.running = not view.done
                return [*show_stored(view), gr.Timer(active=browser.running)]

        open_btn.click(on_open, [path], [note, episodes, d_index, *data_views])
        d_index.submit(on_episode, [d_index], data_views)
        episodes.select(on_select, None, [d_index, *data_views])
        d_step.release(on_seek, [d_step], data_views)
        d_next.click(on_d_step, None, data_views)
        d_play.click(on_d_play, None, d_timer)
        d_pause.click(on_d_pause, None, None, queue=False)
        d_timer.tick(on_d_tick, None, [*data_views, d_timer], trigger_mode="once",
                     show_progress="hidden")
    return app


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch(play: Playground, server: PlayServerConfig) -> tuple[Any, str]:
    """Serve the page from background threads; returns (app, url) once it listens.
    `app.close()` stops it."""
    app = build_app(play)
    token = server.token
    auth = None
    if token:
        def auth(user: str, password: str) -> bool:  # any user name; the token is the password
            return hmac.compare_digest(password.encode(), token.encode())

    port = server.port or free_port(server.host)
    app.queue(default_concurrency_limit=server.max_sessions)
    _, url, _ = app.launch(
        server_name=server.host, server_port=port, share=False, inbrowser=False,
        prevent_thread_lock=True, auth=auth,
        auth_message="robotok playground: any user name, the play token as password",
        ssr_mode=False, mcp_server=False, pwa=False, quiet=True, show_error=True,
        footer_links=[], allowed_paths=[], favicon_path=None)
    return app, url or f"http://{server.host}:{port}/"
