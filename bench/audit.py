"""Known vulnerabilities of the pinned dependencies (requirements.lock).

Runs ``pip-audit`` when it can reach its vulnerability services. Where it cannot (this build
machine's PyPI mirror has no per-version JSON and OSV is unreachable), it falls back to PyPI's
project JSON, whose ``vulnerabilities`` field describes the latest release: a pin that is the
latest release is audited that way, and any other pin is listed as not audited. Prints one
line per package with findings, and a summary; exits 1 on a known vulnerability.

    python3 bench/audit.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"


def pins() -> dict[str, str]:
    out = {}
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name.strip()] = version.strip()
    return out


def project_json(name: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=20) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def main() -> None:
    tool = shutil.which("pip-audit")
    if tool:
        run = subprocess.run([tool, "-r", str(LOCK), "--no-deps", "--disable-pip", "--progress-spinner", "off"], capture_output=True, text=True)
        if "could not be audited" not in run.stdout + run.stderr and run.returncode in (0, 1):
            print(run.stdout)
            sys.exit(run.returncode)
        print("pip-audit could not reach its services here; falling back to PyPI's project JSON")
    audited, findings, not_audited = 0, [], []
    for name, version in sorted(pins().items()):
        data = project_json(name)
        if data is None or data["info"]["version"] != version:
            not_audited.append(f"{name}=={version}" + ("" if data is None else f" (latest {data['info']['version']})"))
            continue
        audited += 1
        for vuln in data.get("vulnerabilities") or []:
            findings.append(f"{name}=={version}: {vuln.get('id')} {', '.join(vuln.get('aliases') or [])} fixed in {vuln.get('fixed_in')}")
    for line in findings:
        print("VULNERABLE", line)
    print(f"audited {audited} pins (latest releases): {len(findings)} known vulnerabilities")
    print(f"not audited ({len(not_audited)}): {', '.join(not_audited) or 'none'}")
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
