"""Each image's install works on exactly what the build context holds, without Docker.

The Dockerfile's release stages are replayed: the build context is what `.dockerignore` lets
through, each COPY and RUN (its bind mounts included) runs in a scratch folder standing for the
image's filesystem, with uv offline from its cache. Then `python -m <service> --help` runs
from the installed environment. A file the install needs but `.dockerignore` drops, or a
stage that stops working, fails here rather than in the first cluster build.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .manifests import ROOT, WORKLOADS, Overlay

RELEASE_STAGE = "release"
FAST_OFFLINE_UV = {"UV_OFFLINE": "1", "UV_LINK_MODE": "hardlink", "UV_COMPILE_BYTECODE": "0"}


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per line, in order: the last pattern that matches a path decides."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        glob = line.removeprefix("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        patterns.append((excludes, re.compile(regex)))
    return patterns


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` out: a pattern also covers everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    decision = False
    for excludes, pattern in patterns:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            decision = excludes
    return decision


def copy_build_context(destination: Path) -> None:
    patterns = dockerignore_patterns()
    can_reinclude = any(not excludes for excludes, _ in patterns)
    for folder, dirs, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        if not can_reinclude:
            dirs[:] = [d for d in dirs if not ignored(prefix + d, patterns)]
        for name in files:
            if not ignored(prefix + name, patterns):
                target = destination / prefix / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, target)


@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages() -> dict[str, Stage]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ")
            current = stages[name.strip()] = Stage(base.strip())
        elif current is not None:
            current.instructions.append((instruction, rest.strip()))
    return stages


def stage_chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and those it is built FROM, first one first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


@dataclass
class Replay:
    """Runs Dockerfile instructions with ``root`` standing for the image's filesystem."""

    context: Path
    root: Path
    arguments: dict[str, str]
    environment: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"

    def path(self, container_path: str) -> Path:
        absolute = (
            container_path if container_path.startswith("/") else f"{self.workdir}/{container_path}"
        )
        return self.root / absolute.lstrip("/")

    def expand(self, text: str) -> str:
        for name, value in {**self.arguments, **self.environment}.items():
            text = text.replace("${" + name + "}", value).replace("$" + name, value)
        return text

    def run(self, instruction: str, rest: str) -> None:
        rest = self.expand(rest)
        if instruction == "WORKDIR":
            self.workdir = rest
            self.path(rest).mkdir(parents=True, exist_ok=True)
        elif instruction == "ENV":
            for assignment in shlex.split(rest):
                name, _, value = assignment.partition("=")
                self.environment[name] = str(self.path(value)) if value.startswith("/") else value
        elif instruction == "COPY" and not rest.startswith("--from="):
            *sources, target = shlex.split(rest)
            for source in sources:
                self.copy(self.context / source, self.path(target))
        elif instruction == "RUN":
            self.run_command(rest)

    def copy(self, source: Path, target: Path) -> None:
        # As Docker does: a folder's contents go into the target, a file into the target folder.
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / source.name)

    def run_command(self, rest: str) -> None:
        mounts = re.findall(r"--mount=(\S+)\s*", rest)
        command = re.sub(r"--mount=\S+\s*", "", rest)
        bound = []
        for mount in mounts:
            options = dict(option.split("=", 1) for option in mount.split(","))
            if options["type"] == "bind":
                target = self.path(options["target"])
                shutil.copy2(self.context / options["source"], target)
                bound.append(target)
        # What gets installed is checked, not how: offline from uv's cache, hard links instead
        # of copies and no bytecode compilation, which would only make it slower.
        env = os.environ | self.environment | FAST_OFFLINE_UV
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.path(self.workdir),
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        for target in bound:
            target.unlink()
        assert result.returncode == 0, f"RUN {command}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("context")
    copy_build_context(context)
    return context


def test_the_build_context_leaves_out_what_an_image_must_not_hold(build_context: Path) -> None:
    kept = {p.relative_to(build_context).as_posix() for p in build_context.rglob("*")}
    assert {"pyproject.toml", "uv.lock", "common/src/ticketing_common/settings.py"} <= kept
    for left_out in ("tests", ".venv", "local", "infra", ".git", "__pycache__"):
        assert not any(left_out in path.split("/") for path in kept), left_out


@pytest.mark.parametrize("service", WORKLOADS)
def test_the_release_image_installs_and_runs(
    build_context: Path, tmp_path: Path, service: str
) -> None:
    if not (ROOT / service / "pyproject.toml").exists():
        pytest.skip(f"{service}/ is not in the workspace yet")
    uv = os.environ.get("UV") or str(ROOT / ".tools" / "bin" / "uv")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "uv").symlink_to(uv)
    replay = Replay(build_context, tmp_path / "image", {"SERVICE": service})
    replay.environment["PATH"] = f"{tools}:{os.environ['PATH']}"
    stages = dockerfile_stages()
    for stage in stage_chain(stages, "build")[1:]:  # after `base`: users and links only
        for instruction, rest in stage.instructions:
            replay.run(instruction, rest)
    # The release stage copies exactly this environment from the build stage.
    copies = [
        rest for instruction, rest in stages[RELEASE_STAGE].instructions if instruction == "COPY"
    ]
    assert copies == ["--from=build /app/.venv /app/.venv"]
    python = replay.path("/app/.venv/bin/python")
    result = subprocess.run(
        [str(python), "-m", service, "--help"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # Nothing uvicorn would import merely because it is there (the dev image's reloader).
    site_packages = replay.path("/app/.venv").glob("lib/python*/site-packages")
    assert not [p for folder in site_packages for p in folder.glob("watchfiles*")]
    assert "serve" in result.stdout
    # Installed as wheels, not editable: nothing points back at the sources.
    for path_file in replay.path("/app/.venv").rglob("*.pth"):
        assert str(replay.path("/src")) not in path_file.read_text(), path_file.name


def sync_groups(stage: Stage) -> set[str]:
    """The dependency groups a stage's ``uv sync`` installs."""
    return {
        group
        for instruction, rest in stage.instructions
        if instruction == "RUN" and "uv sync" in rest
        for group in re.findall(r"--group[ =](\S+)", rest)
    }


def test_only_the_dev_image_holds_the_reloader_that_the_dev_overlay_runs(dev: Overlay) -> None:
    """The dev overlay's command is watchfiles: the dev stage installs it, from a group of
    its own; the release image does not (uvicorn would import it in every service)."""
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    stages = dockerfile_stages()
    dev_groups = set().union(*(sync_groups(stage) for stage in stage_chain(stages, "dev")))
    release_groups = set().union(*(sync_groups(stage) for stage in stage_chain(stages, "build")))
    for _, pod in dev.pod_templates():
        command = pod["spec"]["containers"][0].get("command")
        if command is None:  # NATS and PostgreSQL
            continue
        (group,) = [g for g in dev_groups if any(r.startswith(command[0]) for r in groups[g])]
        assert group not in release_groups
