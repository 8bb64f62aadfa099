"""``cxr serve [--host H] [--port P]``: the API (and, by default, an embedded worker)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from cxr_service.api import create_app
from cxr_service.settings import load_settings

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the cxr API (settings: CXR_* environment variables or .env)")
    parser.add_argument("--host", default=None, help="address to bind (default CXR_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to bind (default CXR_PORT, 8000)")
    parser.add_argument("--no-worker", action="store_true", help="do not run the embedded worker (use `cxr worker`)")
    return parser


def main(args: argparse.Namespace) -> None:
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.no_worker:
        overrides["embedded_worker"] = False
    settings = load_settings(**overrides)
    app = create_app(settings)
    logger.info("cxr API on http://%s:%d (%s queue)", settings.host, settings.port, settings.queue_backend)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, server_header=False)
