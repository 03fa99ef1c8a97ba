"""The docs a user reads hold what a reader of the repository can follow.

No absolute path of a development machine, no citation of a file outside the repository,
no relative link or anchor that leads nowhere, and every `scripts/*.py` command in a
README.md code block still parses: hydra composes its config and overrides (`--cfg job`),
so a renamed script, config group or key fails here instead of in a user's shell.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:tmp|root|home|work)/")
UNREACHABLE = re.compile(r"FINDINGS\.md|DESIGN\.md|shared folder")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
CODE_BLOCK = re.compile(r"^```(?:bash|sh|shell)?\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def machine_paths(text: str) -> list[str]:
    """Lines holding an absolute path of a particular machine (/tmp/, /root/, /home/, /work/)."""
    return [line.strip() for line in text.splitlines() if MACHINE_PATH.search(line)]


def unreachable_citations(text: str) -> list[str]:
    """Lines citing a document that is not in the repository."""
    return [line.strip() for line in text.splitlines() if UNREACHABLE.search(line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = CODE_BLOCK.sub("", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """Relative links (and #anchors) in a markdown file whose target does not exist."""
    broken = []
    for target in LINK.findall(CODE_BLOCK.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        checkable = dest.exists() and anchor and dest.suffix == ".md"
        if not dest.exists() or (checkable and anchor not in anchors(dest)):
            broken.append(target)
    return broken


def readme_script_commands(text: str) -> list[list[str]]:
    """`scripts/<name>.py arg ...` of every command line in README.md's code blocks."""
    commands = []
    for block in CODE_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace("$PWD", str(ROOT)), comments=True)
            for i, word in enumerate(words):
                if word.startswith("scripts/") and word.endswith(".py"):
                    args = []
                    for arg in words[i + 1 :]:
                        if arg in ("&", "&&", "|", ";"):
                            break
                        args.append(arg)
                    commands.append([word, *args])
    return commands


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_holds_no_machine_path_or_unreachable_citation(path: Path) -> None:
    text = path.read_text()
    assert machine_paths(text) == [], f"{path.relative_to(ROOT)}: absolute machine paths"
    assert unreachable_citations(text) == [], (
        f"{path.relative_to(ROOT)}: cites a file outside the repository; cite docs/ or a paper"
    )


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_links_and_anchors_resolve(path: Path) -> None:
    assert broken_links(path) == [], f"{path.relative_to(ROOT)}: links that lead nowhere"


def test_the_checks_catch_a_broken_doc(tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text(
        "# Title\n\nRun `python scripts/train.py hydra.run.dir=/tmp/x/run`.\n"
        "As FINDINGS.md says, see [gone](missing.md) and [here](#no-such-heading).\n"
        "Fine: [title](#title), https://example.org/work/x, outputs/tmp/x.\n"
    )
    text = bad.read_text()
    assert len(machine_paths(text)) == 1
    assert len(unreachable_citations(text)) == 1
    assert broken_links(bad) == ["missing.md", "#no-such-heading"]
    assert slug("Speed beside the peers (`make bench`)") == "speed-beside-the-peers-make-bench"
    assert readme_script_commands(
        "```bash\n.venv/bin/python scripts/serve.py checkpoint=PATH &  # comment\n"
        "python scripts/x.py \\\n  a=1 'b=[c]'\n```\n"
    ) == [["scripts/serve.py", "checkpoint=PATH"], ["scripts/x.py", "a=1", "b=[c]"]]


README_COMMANDS = readme_script_commands((ROOT / "README.md").read_text())


def test_readme_shows_the_entry_points() -> None:
    shown = {command[0] for command in README_COMMANDS}
    assert {"scripts/pipeline.py", "scripts/train.py", "scripts/evaluate.py"} <= shown


@pytest.mark.parametrize("command", README_COMMANDS, ids=lambda c: " ".join(c)[:60])
def test_readme_command_parses(command: list[str]) -> None:
    script = ROOT / command[0]
    assert script.exists(), f"README.md names {command[0]}, which does not exist"
    if "@hydra.main" in script.read_text():
        argv = [sys.executable, str(script), *command[1:], "--cfg", "job"]
    else:
        argv = [sys.executable, str(script), "--help"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (
        f"README.md's command `{' '.join(command)}` no longer parses:\n{result.stderr[-2000:]}"
    )
