"""Lab images built locally and cached by a hash of their recipe.

`base` is Debian bookworm from `debootstrap --variant=minbase`, imported with `docker import`; every
other image is a Dockerfile under recipes/ built FROM its parent. An image's tag is the hash of its
recipe files and of its parent's tag, so a changed recipe rebuilds it and everything below it, and an
unchanged one is reused as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import docker.errors

RECIPES = Path(__file__).parent / "recipes"
REPOSITORY = "quantlab"
DEBIAN_SUITE = "bookworm"
DEBOOTSTRAP_ARGS = ["--variant=minbase", DEBIAN_SUITE]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# image -> parent ("base" has none). Order is build order.
PARENTS = {
    "base": None,
    "python": "base",
    "postgres": "base",
    "redis": "base",
    "s3": "python",
    "backend": "python",
    "mlflow2": "python",
    "mlflow3": "python",
    "pipbase": "python",  # the official MLflow image's Python, for the production recipe
    "mlflowprod": "pipbase",
    "sshhost": "base",
    "machine": "base",  # systemd, sshd, cron: a host in miniature (tests/machines.py)
}

# What `--images official` uses instead, for users who can pull from a registry.
OFFICIAL = {
    "postgres": "postgres:15",
    "redis": "redis:7",
    "s3": "minio/minio:latest",
    "mlflow2": "ghcr.io/mlflow/mlflow:v2.9.2",
    "mlflow3": "ghcr.io/mlflow/mlflow:v3.6.0",
}


def _files_digest(folder: Path) -> list[tuple[str, bytes]]:
    return [
        (str(p.relative_to(folder)), p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]


def recipe_hashes() -> dict[str, str]:
    """Each image's recipe hash, its parent's hash folded in."""
    hashes: dict[str, str] = {}
    for name, parent in PARENTS.items():
        digest = hashlib.sha256(name.encode())
        digest.update((hashes.get(parent, "") if parent else "").encode())
        if name == "base":
            digest.update(" ".join(["debootstrap", *DEBOOTSTRAP_ARGS]).encode())
        else:
            for rel, content in _files_digest(RECIPES / name):
                digest.update(rel.encode() + b"\0" + content + b"\0")
        hashes[name] = digest.hexdigest()[:12]
    return hashes


def image_refs() -> dict[str, str]:
    return {name: f"{REPOSITORY}/{name}:{h}" for name, h in recipe_hashes().items()}


def missing_images(client) -> list[str]:
    missing = []
    for name, ref in image_refs().items():
        try:
            client.images.get(ref)
        except docker.errors.ImageNotFound:
            missing.append(name)
    return missing


class Progress:
    """Prints a step, its elapsed time and what it waits for, at most every `every` seconds."""

    def __init__(self, step: str, log=print, every: float = 10.0):
        self.step, self.log, self.every = step, log, every
        self.started = self.last = time.monotonic()
        log(f"lab: {step} ...")

    def tick(self, waiting_for: str, force: bool = False):
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            self.log(f"lab: {self.step}: {now - self.started:.0f}s, {waiting_for}")

    @contextlib.contextmanager
    def heartbeat(self, waiting_for):
        """Tick from a thread while the caller blocks; `waiting_for` is a callable giving the text."""
        stop = threading.Event()

        def beat():
            while not stop.wait(1.0):
                self.tick(waiting_for())

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def done(self, what: str = "done"):
        self.log(f"lab: {self.step}: {what} in {time.monotonic() - self.started:.1f}s")


def _build_base(client, ref: str, log, build_log: Path):
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is not installed: `apt-get install debootstrap`")
    progress = Progress(f"building {ref} (debootstrap {' '.join(DEBOOTSTRAP_ARGS)})", log)
    with tempfile.TemporaryDirectory(prefix="quantlab-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        with open(build_log, "ab") as out:
            proc = subprocess.Popen(
                ["debootstrap", *DEBOOTSTRAP_ARGS, str(rootfs)], stdout=out, stderr=subprocess.STDOUT
            )
            while proc.poll() is None:
                progress.tick("waiting for debootstrap")
                time.sleep(1)
        if proc.returncode != 0:
            raise SystemExit(f"debootstrap failed (exit {proc.returncode}); see {build_log}")
        tarball = Path(tmp) / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            tar.add(rootfs, arcname=".")
        progress.tick("importing the root filesystem", force=True)
        repo, tag = ref.split(":")
        client.api.import_image_from_file(
            str(tarball),
            repository=repo,
            tag=tag,
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                'CMD ["/bin/bash"]',
            ],
        )
    progress.done()


def _build_dockerfile(client, name: str, ref: str, parent_ref: str, log, build_log: Path):
    progress = Progress(f"building {ref} (recipes/{name})", log)
    with tempfile.TemporaryDirectory(prefix=f"quantlab-{name}-") as ctx:
        shutil.copytree(RECIPES / name, ctx, dirs_exist_ok=True)
        # pip inside the build trusts what this host trusts (egress may go through a TLS proxy).
        Path(ctx, "host-ca.crt").write_bytes(HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b"")
        last_step = "starting"
        with open(build_log, "a") as out, progress.heartbeat(lambda: f"at {last_step}"):
            for chunk in client.api.build(
                path=ctx,
                tag=ref,
                buildargs={"BASE": parent_ref},
                rm=True,
                forcerm=True,
                decode=True,
                labels={"quantlab.recipe": name},
            ):
                if "stream" in chunk:
                    out.write(chunk["stream"])
                    if chunk["stream"].startswith("Step "):
                        last_step = chunk["stream"].strip()[:100]
                if "error" in chunk:
                    out.write(chunk["error"] + "\n")
                    raise SystemExit(
                        f"building {ref} failed at {last_step}: {chunk['error'].strip()} "
                        f"(full log: {build_log})"
                    )
    progress.done()


def ensure_images(client, names=None, log=print, build_log: Path | None = None) -> dict[str, str]:
    """Build what is missing (and its parents); return name -> image reference."""
    refs = image_refs()
    wanted = set(names or refs)
    for name in list(wanted):
        parent = PARENTS[name]
        while parent:
            wanted.add(parent)
            parent = PARENTS[parent]
    build_log = build_log or Path(tempfile.gettempdir()) / "quantlab-build.log"
    missing = set(missing_images(client)) & wanted
    for name in PARENTS:  # build order
        if name not in missing:
            continue
        parent = PARENTS[name]
        if parent is None:  # base
            _build_base(client, refs[name], log, build_log)
        else:
            _build_dockerfile(client, name, refs[name], refs[parent], log, build_log)
    if not missing:
        log("lab: images cached (" + ", ".join(sorted(wanted)) + ")")
    return {name: refs[name] for name in wanted}
