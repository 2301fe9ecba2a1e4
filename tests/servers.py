"""Real local servers for integration tests: mosquitto with mutual TLS and per-certificate
topic ACLs (the IoT Core stand-in) and moto in server mode (S3, DynamoDB, SNS).

Used through the fixtures in conftest.py. Each server binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path


BACKEND_CN = "cloud-backend"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


def _issue(directory: Path, name: str, cn: str, ca: tuple[Path, Path], ext: str) -> ClientCert:
    key, csr, crt, extfile = (directory / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr))
    extfile.write_text(ext)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", str(extfile), "-out", str(crt))  # fmt: skip
    for path in (key, crt):
        path.chmod(0o644)  # mosquitto may drop privileges before reading the files
    return ClientCert(crt, key)


@dataclass(frozen=True)
class Pki:
    """A throwaway CA with a server certificate and device certificates, plus a rogue CA.

    A device certificate's CN is its device id (the IoT thing name): the broker's ACL
    lets each certificate publish only on its own ``mpd/{CN}/...`` topics.
    """

    directory: Path
    ca: Path
    ca_key: Path
    server: ClientCert
    device: ClientCert  # CN=test-thing, signed by the trusted CA
    backend: ClientCert  # CN=cloud-backend, the local cloud's subscriber
    rogue_device: ClientCert  # CN=test-thing, signed by another CA

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)  # mosquitto may drop privileges before reading the files

        def make_ca(name: str) -> tuple[Path, Path]:
            key, crt = directory / f"{name}.key", directory / f"{name}.crt"
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                     "-keyout", str(key), "-out", str(crt))  # fmt: skip
            return crt, key

        ca = make_ca("test-ca")
        rogue_ca = make_ca("rogue-ca")
        server = _issue(directory, "server", "localhost", ca,
                        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")  # fmt: skip
        device = _issue(directory, "device", "test-thing", ca, CLIENT_EXT)
        backend = _issue(directory, "backend", BACKEND_CN, ca, CLIENT_EXT)
        rogue = _issue(directory, "rogue", "test-thing", rogue_ca, CLIENT_EXT)
        for path in directory.iterdir():
            path.chmod(0o644)
        return cls(directory, ca[0], ca[1], server, device, backend, rogue)

    def device_for(self, device_id: str) -> ClientCert:
        """The trusted certificate of device ``device_id`` (CN = the id), made on first use."""
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", device_id):
            raise ValueError(f"not a device id for a test certificate: {device_id!r}")
        if device_id == "test-thing":
            return self.device
        crt, key = self.directory / f"device-{device_id}.crt", self.directory / f"device-{device_id}.key"
        with _ISSUE_LOCK:
            if not crt.exists():
                _issue(self.directory, f"device-{device_id}", device_id, (self.ca, self.ca_key), CLIENT_EXT)
        return ClientCert(crt, key)


_ISSUE_LOCK = threading.Lock()

# The broker's topic ACL, the local stand-in for the IoT policies: each device certificate
# (username = its CN, the thing name) publishes only its own match and health topics and
# reads only the gallery announcements, as greengrass/device-policy.json allows on IoT
# Core; the cloud backend reads every device's matches and health and announces galleries.
# mosquitto applies ``pattern`` lines to every client (and warns that the two gallery
# patterns have no %u: expected, they are the same topics for every device).
BROKER_ACL = f"""pattern write mpd/%u/match
pattern write mpd/%u/health
pattern read mpd/gallery/latest
pattern read mpd/gallery/+/latest

user {BACKEND_CN}
topic read mpd/+/match
topic read mpd/+/health
topic write mpd/gallery/latest
topic write mpd/gallery/+/latest
"""


class Mosquitto:
    """A mosquitto broker requiring client certificates, like AWS IoT Core.

    ``stop()`` and ``start()`` keep the same port, so tests can simulate an uplink outage.
    """

    def __init__(self, pki: Pki, workdir: Path) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed: run scripts/setup.sh (apt-get install mosquitto)")
        self.pki = pki
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        self.acl = workdir / "acl.txt"
        self.log = workdir / "mosquitto.log"
        self.acl.write_text(BROKER_ACL)
        self.acl.chmod(0o644)
        user = "user root\n" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"{user}per_listener_settings true\npersistence false\nlog_dest stderr\n"
            f"listener {self.port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server.cert}\nkeyfile {pki.server.key}\n"
            "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
            f"acl_file {self.acl}\nmax_qos 1\nmax_packet_size 131072\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.process is not None:
            return
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config)], stderr=open(self.log, "ab"), stdout=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client_settings(self, cert: ClientCert | str | None = None) -> dict[str, str | int]:
        """Connection settings for ``cert``: a certificate, a device id (its own certificate), or test-thing."""
        cert = self.pki.device_for(cert) if isinstance(cert, str) else cert or self.pki.device
        return {
            "host": self.host,
            "port": self.port,
            "ca": str(self.pki.ca),
            "cert": str(cert.cert),
            "key": str(cert.key),
        }


# moto's server is threaded and its DynamoDB evaluates a ConditionExpression and writes
# without a lock, so two concurrent conditional writes to one item can both succeed:
# real DynamoDB never allows that, and the duplicate and cooldown checks rest on it.
# Our moto runs each request under one lock (one item write at a time, as in DynamoDB).
SERIALIZED_MOTO = """
import sys, threading
import moto.server as server
run_simple, lock = server.run_simple, threading.Lock()

def serialized(host, port, app, **options):
    def one_at_a_time(environ, start_response):
        with lock:
            return list(app(environ, start_response))
    return run_simple(host, port, one_at_a_time, **options)

server.run_simple = serialized
server.main(sys.argv[1:])
"""


class MotoServer:
    """moto in server mode; boto3 reaches it through AWS_ENDPOINT_URL."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "moto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERIALIZED_MOTO, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/moto-api/data.json", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def sent_sms(self) -> list[dict]:
        data = requests.get(f"{self.url}/moto-api/data.json", timeout=10).json()
        return data.get("sns", {}).get("SMS", [])


GST_PYTHON = "/usr/bin/python3"  # the system python, where Debian's python3-gi lives
RTSP_SERVER = Path(__file__).resolve().parent / "rtsp_server.py"


def rtsp_server_available() -> str | None:
    """None when the GStreamer RTSP server can run here, else why not (for a skip message)."""
    check = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    if not Path(GST_PYTHON).exists():
        return f"{GST_PYTHON} is missing"
    done = subprocess.run([GST_PYTHON, "-c", check], capture_output=True, text=True)
    if done.returncode != 0:
        return "GStreamer's RTSP server is not installed (scripts/setup.sh: apt-get install gir1.2-gst-rtsp-server-1.0)"
    return None


class RtspServer:
    """A real RTSP camera stand-in (tests/rtsp_server.py): serves JPEG frames in a loop at
    ``url``, paced at ``fps``. ``stop()`` and ``start()`` keep the port: a camera that goes
    away and comes back."""

    def __init__(self, frames_glob: str, fps: int, workdir: Path) -> None:
        self.frames_glob = frames_glob
        self.fps = fps
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.log = workdir / f"rtsp-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.process is not None:
            return
        self.process = subprocess.Popen(
            [GST_PYTHON, str(RTSP_SERVER), str(self.port), self.frames_glob, str(self.fps)],
            stdout=subprocess.PIPE,
            stderr=open(self.log, "ab"),
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError(f"the RTSP server did not start: {self.log.read_text()[-2000:]}")
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.kill()  # a camera losing power: no goodbye to the client
        self.process.wait()
        self.process.stdout.close()
        self.process = None
