"""S3 (MinIO) checks: the health path answers, the artifact bucket exists."""

from __future__ import annotations

from tasks.checks import containers
from tasks.checks.http import http_probe, request, where
from tasks.checks.runner import Broken, NotYet, Session
from tasks.settings.stack import S3Service


def check_s3(session: Session, conf: S3Service, memory: tuple[float, float] = (85, 95)) -> None:
    name = conf.container
    if name and not containers.container_checks(session, name, *memory):
        return containers.skip_service(session, "s3", name)
    at = where(conf)
    session.check(
        f"S3 health path {conf.health_path} answers", at, http_probe(session, conf, conf.health_path)
    )
    bucket = conf.bucket
    if not bucket:
        session.skip("S3 artifact bucket exists", at, "no bucket configured")
        return

    def exists():
        code, _, what = request(session, conf, "HEAD", f"/{bucket}")
        if code == 200:
            return f"{what} -> 200"
        if code == 403:
            return f"{what} -> 403 (exists; anonymous access denied)"
        if code == 404:
            raise Broken(f"bucket {bucket} does not exist ({what} -> 404)")
        raise NotYet(f"{what} -> HTTP {code}")

    session.check(f"S3 bucket {bucket} exists", at, exists)
