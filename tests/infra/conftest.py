"""Fixtures of the manifest checks; what they use lives in ``manifests.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from .manifests import OVERLAYS, Overlay, render


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> Overlay:
    return render(request.param)


@pytest.fixture
def dev() -> Overlay:
    return render("dev")


@pytest.fixture
def prod() -> Overlay:
    return render("prod")


@pytest.fixture(scope="session")
def rendered_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each overlay's rendering in a file, for the tools that read files."""
    folder = tmp_path_factory.mktemp("rendered")
    files = {}
    for name in OVERLAYS:
        files[name] = folder / f"{name}.yaml"
        files[name].write_text(render(name).text)
    return files
