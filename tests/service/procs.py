"""Real processes for the service tests: Redis, Orthanc, `cxr serve`, `cxr worker`, `cxr scp`.

Each starts on free ports (or a Unix socket) in a test's temporary folder and is stopped by
the caller (the fixtures use ``with``). Logs go to files next to the process's data so a
failing test can show them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
CXR = Path(sys.executable).with_name("cxr")
TOKEN = "test-token-0123456789abcdef"
ORTHANC_USER = "cxr-test"
ORTHANC_PASSWORD = "orthanc-test-password-42"
# Modalities of the outputs cxr stores: SR, GSPS (PR), SEG and Secondary Capture (OT).
OUTPUT_MODALITIES = ("SR", "PR", "SEG", "OT")
ONE_OF_EACH = dict.fromkeys(OUTPUT_MODALITIES, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    argv: list[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, cwd=REPO, start_new_session=True
        )
        fh.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up, as a crash or the OOM killer would."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(workdir: Path) -> tuple[Proc, str]:
    """redis-server on a Unix socket (no port to race for); returns the process and its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "redis.sock"
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(workdir), "--appendonly", "yes", "--save", "",
    ]  # fmt: skip
    proc = Proc("redis", argv, workdir / "redis.log").start()
    wait_until(sock.exists, timeout=20, what="redis socket")
    return proc, f"unix://{sock}"


@dataclass
class Orthanc:
    proc: Proc
    http_port: int
    dicom_port: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(ORTHANC_USER, ORTHANC_PASSWORD), timeout=60)

    def upload(self, paths: list[Path]) -> None:
        with self.client() as c:
            for path in paths:
                r = c.post("/instances", content=path.read_bytes())
                r.raise_for_status()

    def outputs(self, study_uid: str) -> dict[str, tuple[int, int]]:
        """Our output modalities in the study (QIDO-RS): modality → (series, instances)."""
        counts: dict[str, list[int]] = {}
        for item in self.series_of_study(study_uid):
            modality = item["00080060"]["Value"][0]
            if modality in OUTPUT_MODALITIES:
                entry = counts.setdefault(modality, [0, 0])
                entry[0] += 1
                entry[1] += int(item["00201209"]["Value"][0])
        return {m: (n[0], n[1]) for m, n in counts.items()}

    def output_series(self, study_uid: str) -> dict[str, int]:
        """Modality → number of our output series in the study."""
        return {m: n[0] for m, n in self.outputs(study_uid).items()}

    def source_settings(self, **extra: object) -> dict[str, object]:
        """cxr settings that make this Orthanc the DICOMweb source (and destination)."""
        return {
            "source_dicomweb_url": self.dicomweb,
            "source_username": ORTHANC_USER,
            "source_password": ORTHANC_PASSWORD,
            **extra,
        }

    def series_of_study(self, study_uid: str) -> list[dict]:
        with self.client() as c:
            r = c.get(f"/dicom-web/studies/{study_uid}/series")
            if r.status_code == 204:
                return []
            r.raise_for_status()
            return r.json()

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        self.proc.stop()
        self.proc.start()
        wait_until(self.ready, timeout=60, what="Orthanc")

    def ready(self) -> bool:
        with self.client() as c:
            return c.get("/system").status_code == 200

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.workdir / "logs").glob("*.log*")))

    def study_id(self, study_uid: str) -> str | None:
        with self.client() as c:
            r = c.post("/tools/lookup", content=study_uid)
            r.raise_for_status()
            return next((x["ID"] for x in r.json() if x["Type"] == "Study"), None)

    def metadata(self, orthanc_id: str) -> dict[str, str]:
        with self.client() as c:
            r = c.get(f"/studies/{orthanc_id}/metadata", params={"expand": ""})
            r.raise_for_status()
            return r.json()


def start_orthanc(workdir: Path, *, plugin_service_url: str | None = None, stable_age: int = 2) -> Orthanc:
    http_port, dicom_port = free_port(), free_port()
    argv = [
        sys.executable, str(REPO / "orthanc" / "launch.py"), "--workdir", str(workdir),
        "--http-port", str(http_port), "--dicom-port", str(dicom_port), "--stable-age", str(stable_age),
        "--user", ORTHANC_USER, "--password", ORTHANC_PASSWORD, "--verbose",
    ]  # fmt: skip
    if plugin_service_url is not None:
        argv += ["--plugin", "--service-url", plugin_service_url, "--api-token", TOKEN]
    orthanc = Orthanc(Proc("orthanc", argv, workdir / "orthanc.out").start(), http_port, dicom_port, workdir)
    wait_until(orthanc.ready, timeout=60, what="Orthanc")
    return orthanc


def cxr_env(data_dir: Path, **settings: object) -> dict[str, str]:
    env = {
        "CXR_API_TOKEN": TOKEN,
        "CXR_DATA_DIR": str(data_dir),
        "CXR_DEVICE": "cpu",
        "CXR_LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",
    }
    env.update({f"CXR_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()})
    return env


@dataclass
class Service:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, *, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def job(self, job_id: str) -> dict:
        with self.client() as c:
            r = c.get(f"/v1/jobs/{job_id}")
            r.raise_for_status()
            return r.json()

    def wait_job(self, job_id: str, *, states: tuple[str, ...] = ("done", "failed"), timeout: float = 180) -> dict:
        return wait_until(
            lambda: (j := self.job(job_id))["state"] in states and j, timeout=timeout, interval=0.2, what=f"job {job_id} in {states}"
        )

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        self.proc.stop()
        self.proc.start()
        wait_until(lambda: httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200, timeout=90, what="cxr serve ready")


def start_service(data_dir: Path, *, worker: bool = True, port: int | None = None, **settings: object) -> Service:
    port = port or free_port()
    argv = [str(CXR), "serve", "--host", "127.0.0.1", "--port", str(port)] + ([] if worker else ["--no-worker"])
    proc = Proc("serve", argv, data_dir / "serve.log", env=cxr_env(data_dir, **settings)).start()
    service = Service(proc, port)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"cxr serve exited:\n{proc.output()[-3000:]}")
        with httpx.Client(timeout=5) as c:
            return c.get(f"{service.url}/readyz").status_code == 200

    wait_until(ready, timeout=90, what="cxr serve ready")
    return service


def c_store(paths: list[Path], *, port: int, ae_title: str = "ORTHANC") -> list[int]:
    """Send files with a pynetdicom SCU, each in a context of its own transfer syntax."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title="CXRTEST")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {ae_title} on port {port}")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def start_worker(data_dir: Path, *, name: str = "worker", **settings: object) -> Proc:
    return Proc(name, [str(CXR), "worker"], data_dir / f"{name}.log", env=cxr_env(data_dir, **settings)).start()


def relabelled(paths: list[Path], *, study_uid: str, patient_id: str, salt: str, keep_sop_uids: bool = False) -> list[bytes]:
    """The files as another study (``study_uid``) of ``patient_id``: new series and SOP Instance
    UIDs derived from ``salt`` (or the SOP Instance UIDs kept, as a study sent again after a
    patient merge is)."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.PatientID = patient_id
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[salt, str(ds.SeriesInstanceUID)])
        if not keep_sop_uids:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[salt, str(ds.SOPInstanceUID)])
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def orthanc_studies(orthanc: Orthanc, study_uid: str) -> dict[str, dict]:
    """Patient ID → {"id", "images": SOP UIDs of its CR/DX, "outputs": parsed SR/PR/SEG/OT}, for
    every Orthanc study (Patient ID + StudyInstanceUID) under the UID."""
    import io

    import pydicom

    found: dict[str, dict] = {}
    with orthanc.client() as c:
        ids = [x["ID"] for x in c.post("/tools/lookup", content=study_uid).json() if x["Type"] == "Study"]
        for orthanc_id in ids:
            study = c.get(f"/studies/{orthanc_id}").json()
            entry = found.setdefault(study["PatientMainDicomTags"]["PatientID"], {"id": orthanc_id, "images": set(), "outputs": []})
            for instance in c.get(f"/studies/{orthanc_id}/instances").json():
                ds = pydicom.dcmread(io.BytesIO(c.get(f"/instances/{instance['ID']}/file").content))
                if ds.Modality in ("CR", "DX"):
                    entry["images"].add(str(ds.SOPInstanceUID))
                else:
                    entry["outputs"].append(ds)
    return found

