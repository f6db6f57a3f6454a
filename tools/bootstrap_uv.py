"""Install uv into ``.tools/`` with nothing but Python 3.11+ (``make`` runs this first).

The usual way is a virtual environment with pip in it. Some system Pythons ship without
``venv``/``ensurepip`` (Debian's, until python3-venv is installed); there the uv wheel is taken
straight from the package index and its binary unpacked, checked against the index's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import urllib.request
import venv
import zipfile
from io import BytesIO
from pathlib import Path

UV_VERSION = "0.13.9"
INDEX = "https://pypi.org/simple/uv/"


def with_pip(tools: Path) -> None:
    venv.create(tools, with_pip=True, clear=True)
    subprocess.run(
        [str(tools / "bin" / "python"), "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"],
        check=True,
    )


def _wheel_matches(filename: str) -> bool:
    machine = platform.machine().lower()
    if sys.platform == "linux":
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        return "manylinux" in filename and f"_{arch}." in filename
    if sys.platform == "darwin":
        return "macosx" in filename and machine in filename
    return False


def from_index(tools: Path) -> None:
    request = urllib.request.Request(
        INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    wheel = next(
        f
        for f in files
        if f["filename"].startswith(f"uv-{UV_VERSION}-") and _wheel_matches(f["filename"])
    )
    with urllib.request.urlopen(wheel["url"], timeout=300) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != wheel["hashes"]["sha256"]:
        raise RuntimeError(f"{wheel['filename']}: sha256 does not match the index")
    with zipfile.ZipFile(BytesIO(data)) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".data/scripts/uv"))
        target = tools / "bin" / "uv"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(member))
        target.chmod(0o755)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tools", type=Path)
    parser.add_argument("--from-index", action="store_true", help="skip the venv + pip way")
    args = parser.parse_args()
    if sys.version_info < (3, 11):  # noqa: UP036 - run by whatever python3 the machine has
        print("Python 3.11 or newer is required", file=sys.stderr)
        return 1
    if not args.from_index:
        try:
            with_pip(args.tools)
            return 0
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"no venv with pip here ({exc}); fetching the uv wheel instead", file=sys.stderr)
            shutil.rmtree(args.tools, ignore_errors=True)
    from_index(args.tools)
    return 0


if __name__ == "__main__":
    sys.exit(main())
