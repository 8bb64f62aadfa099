#!/usr/bin/env python3
"""Start Orthanc (Debian packages) configured for cxr; used by `make up` and by the tests.

Stdlib only. Writes ``<workdir>/orthanc.json`` from ``orthanc/orthanc.base.json`` plus the
ports, credentials and folders given here, then replaces itself with
``Orthanc --logdir=<workdir>/logs <workdir>/orthanc.json`` (the process id stays the same, so a
caller can stop Orthanc by signalling it).

Credentials come from --user/--password or the environment (CXR_ORTHANC_USER,
CXR_ORTHANC_PASSWORD); they are written only into the generated configuration (mode 0600),
never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PLUGINS = {
    "python": "libOrthancPython.so",
    "dicomweb": "libOrthancDicomWeb.so",
    "gdcm": "libOrthancGdcm.so",
}


def build_config(args: argparse.Namespace) -> dict:
    config = json.loads((HERE / "orthanc.base.json").read_text(encoding="utf-8"))
    workdir = Path(args.workdir).resolve()
    config["StorageDirectory"] = str(workdir / "storage")
    config["IndexDirectory"] = str(workdir / "index")
    config["HttpPort"] = args.http_port
    config["DicomPort"] = args.dicom_port
    config["DicomAet"] = args.aet
    config["StableAge"] = args.stable_age
    config["RegisteredUsers"] = {args.user: args.password}
    plugins = ["dicomweb", "gdcm"]
    script = args.python_script or (str(HERE.parent / "plugin" / "cxr_plugin" / "entry.py") if args.plugin else None)
    if script:
        plugins.insert(0, "python")  # first: the first plugin that registers a URL wins it
        config["PythonScript"] = str(Path(script).resolve())
        config["PythonVerbose"] = False
        config["Cxr"] = {"ServiceUrl": args.service_url, "ApiToken": args.api_token or ""}
    config["Plugins"] = [str(PLUGIN_DIR / PLUGINS[name]) for name in plugins]
    for entry in args.set or []:
        key, _, value = entry.partition("=")
        config[key] = json.loads(value)
    return config


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="folder for storage, index, logs and the generated config")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--aet", default="ORTHANC")
    parser.add_argument("--stable-age", type=int, default=3, help="seconds before STABLE_STUDY fires (<= 5)")
    parser.add_argument("--user", default=os.environ.get("CXR_ORTHANC_USER"))
    parser.add_argument("--password", default=os.environ.get("CXR_ORTHANC_PASSWORD"))
    parser.add_argument("--plugin", action="store_true", help="load the cxr plugin (plugin/cxr_plugin/entry.py)")
    parser.add_argument("--python-script", default=None, help="another Orthanc Python plugin entry file")
    parser.add_argument("--service-url", default=os.environ.get("CXR_SERVICE_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-token", default=os.environ.get("CXR_API_TOKEN"), help="the service's bearer token")
    parser.add_argument("--set", action="append", metavar="KEY=JSON", help="override a top-level configuration key")
    parser.add_argument("--verbose", action="store_true", help="Orthanc's info-level log (shows the plugin's info lines)")
    parser.add_argument("--print-config", action="store_true", help="write the configuration and exit")
    return parser


def main(args: argparse.Namespace) -> None:
    if not args.user or not args.password:
        sys.exit("launch.py: set CXR_ORTHANC_USER and CXR_ORTHANC_PASSWORD (or --user/--password)")
    if not 0 < args.stable_age <= 5:
        sys.exit(f"launch.py: --stable-age must be 1-5 seconds, got {args.stable_age}")
    binary = shutil.which("Orthanc")
    if binary is None:
        sys.exit("launch.py: Orthanc is not installed (apt-get install orthanc orthanc-python orthanc-dicomweb orthanc-gdcm)")
    workdir = Path(args.workdir).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    path = workdir / "orthanc.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(build_config(args), fh, indent=2)
    if args.print_config:
        print(path)
        return
    os.environ["CXR_PLUGIN_ROOT"] = str(HERE.parent / "plugin")
    argv = [binary, f"--logdir={workdir / 'logs'}"] + (["--verbose"] if args.verbose else []) + [str(path)]
    os.execv(binary, argv)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
