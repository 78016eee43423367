"""What the watcher's install uploads, built on the controller (no pyinfra here): the project's
source bundle and the wheel cache of its runtime dependencies, so a host installs offline.

    python -m tasks.operations.watcher_bundle wheels [FOLDER]   # scripts/setup runs this

- The wheel cache (default ``<checkout>/.lab/wheels``): one wheel per distribution the project
  needs at run time (its ``dependencies``, followed through their own requirements, at the
  versions installed in this .venv), plus pip's own wheel (a host's ``python3 -m venv
  --without-pip`` needs no python3-venv package: pip runs from its wheel), and
  ``requirements.txt`` pinning them. Downloaded once with pip (the controller's own index
  configuration); a second call with the same pins downloads nothing.
- The bundles: deterministic tars (sorted entries, fixed times and owners), so the same sources
  make the same bytes and a deploy uploads again only when something changed: ``project.tar.gz``
  (tasks/ without the lab, deploys/, inventories/group_data/, scripts/watch, pyproject.toml) and
  ``wheels.tar`` (the cache). Each is named by its content's hash.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata as metadata
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WHEELS = REPO / ".lab" / "wheels"
PROJECT = "quant-remediation"
PROJECT_GLOBS = ("tasks/**/*.py", "tasks/**/*.yml", "tasks/**/*.json", "deploys/*.py",
                 "inventories/group_data/*.py", "scripts/watch", "pyproject.toml")  # fmt: skip
REQUIREMENTS = "requirements.txt"


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements(project: str = PROJECT) -> dict[str, str]:
    """{distribution: installed version} of what ``project`` needs at run time (no extras)."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    todo = [project]
    while todo:
        name = todo.pop()
        if _key(name) in found:
            continue
        dist = metadata.distribution(name)
        found[_key(name)] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            todo.append(requirement.name)
    found.pop(_key(project), None)
    return dict(sorted(found.items()))


def pins_text(pins: dict[str, str]) -> str:
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def _wheel_names(folder: Path) -> set[str]:
    return {_key(p.name.split("-", 1)[0]) for p in folder.glob("*.whl")}


def download_wheels(folder: Path = DEFAULT_WHEELS, log=print) -> Path:
    """Fill ``folder`` with the runtime wheels and pip's; nothing downloaded when it has them."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = runtime_requirements()
    pip_version = metadata.version("pip")
    wanted = set(pins) | {"pip"}
    requirements = folder / REQUIREMENTS
    if (
        requirements.exists()
        and requirements.read_text() == pins_text(pins)
        and wanted <= _wheel_names(folder)
    ):
        return folder
    for stale in folder.glob("*.whl"):
        stale.unlink()
    pinned = folder / ".download.txt"
    pinned.write_text(pins_text({**pins, "pip": pip_version}))
    log(f"watcher wheels: downloading {len(wanted)} wheels into {folder}")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "-d", str(folder), "-r", str(pinned)],
        check=True,
    )  # fmt: skip
    pinned.unlink()
    missing = wanted - _wheel_names(folder)
    if missing:
        raise RuntimeError(f"watcher wheels: no wheel for {', '.join(sorted(missing))}")
    requirements.write_text(pins_text(pins))
    return folder


def _tar(entries: list[tuple[str, bytes, int]], compress: bool) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    if not compress:
        return raw.getvalue()
    return gzip.compress(raw.getvalue(), mtime=0)


def project_files(repo: Path = REPO) -> list[Path]:
    files = {p for pattern in PROJECT_GLOBS for p in repo.glob(pattern) if p.is_file()}
    return sorted(p for p in files if "__pycache__" not in p.parts and not p.relative_to(repo).as_posix()
                  .startswith("tasks/lab/"))  # fmt: skip


def _write(folder: Path, stem: str, suffix: str, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = folder / f"{stem}-{digest}{suffix}"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    for old in folder.glob(f"{stem}-*{suffix}"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def project_bundle(out: Path, repo: Path = REPO) -> Path:
    """``out/project-<hash>.tar.gz`` of this checkout's files the watcher runs (module doc)."""
    entries = [
        (p.relative_to(repo).as_posix(), p.read_bytes(), 0o755 if p.stat().st_mode & 0o111 else 0o644)
        for p in project_files(repo)
    ]
    return _write(out, "project", ".tar.gz", _tar(entries, compress=True))


def wheels_bundle(out: Path, wheels: Path = DEFAULT_WHEELS) -> Path:
    """``out/wheels-<hash>.tar`` of the wheel cache (wheels are compressed already)."""
    if not (wheels / REQUIREMENTS).is_file():
        raise FileNotFoundError(
            f"no wheel cache at {wheels}: run scripts/setup (or python -m tasks.operations.watcher_bundle wheels)"
        )
    files = [wheels / REQUIREMENTS, *sorted(wheels.glob("*.whl"))]
    return _write(
        out, "wheels", ".tar", _tar([(p.name, p.read_bytes(), 0o644) for p in files], compress=False)
    )


def bundle_hash(path: Path) -> str:
    """The content hash in a bundle's name."""
    return path.name.rsplit("-", 1)[1].split(".", 1)[0]


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "wheels":
        print("usage: python -m tasks.operations.watcher_bundle wheels [FOLDER]", file=sys.stderr)
        raise SystemExit(2)
    download_wheels(Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_WHEELS)
