"""moto's S3 server on :9000, answering MinIO's health paths too (a stand-in, not MinIO)."""
import logging

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

HEALTH_PATHS = {"/minio/health/live", "/minio/health/ready"}
s3_app = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    if environ.get("PATH_INFO") in HEALTH_PATHS:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    return s3_app(environ, start_response)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run_simple("0.0.0.0", 9000, app, threaded=True, request_handler=MotoRequestHandler)
