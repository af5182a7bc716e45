"""Helpers of the end-to-end tests: a small-slice copy of the project, commands run in it,
servers started and stopped around a test, HTTP requests with basic authentication.

The project is copied (as Git would check it out) into a fresh Git repository under a
temporary folder, so the tests never touch the working copy's data, lock file or MLflow
store.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import yaml

from mnist_vae.tracking.runs import file_sha256

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "data": {"train_limit": 512, "test_limit": 128},
    "train": {"epochs": 1, "loss": "logistic_mixture"},  # a codec, for the compress stage
    "generate": {"n_samples": 6},
    "compare": {"n_images": 5},
    "classifier": {"train_limit": 1000, "epochs": 1},
    "evaluate": {"iw_samples": 4, "fid_samples": 100, "interpolations": 3},
    # the learned codecs' mechanics: one lambda, a few hundred digits, one epoch, narrow nets
    "learned_baselines": {
        "lambdas": [0.003],
        "hyperprior_lambdas": [0.003],
        "train_limit": 256,
        "epochs": 1,
        "channels": 8,
        "latent_channels": 8,
        "settle_steps": 300,  # the quantiles never settle after 4 steps: 45 s of 5,000 steps
    },
}
STAGES = {
    "download", "train", "generate", "compare", "classifier", "evaluate", "baselines",
    "learned_baselines", "compress", "rate_distortion", "overview",
}  # fmt: skip
DATA_ONLY = {"download", "classifier", "baselines", "learned_baselines"}  # retraining skips them


def sh(*args: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


def edit_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            params[key].update(value)
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def small_project(folder: Path, mnist_mirror: Path) -> tuple[Path, dict[str, str]]:
    """A fresh Git clone-alike of the project in ``folder`` with small-slice params, and the
    environment to run it in (no MLFLOW_*/DVC_* settings of the caller's)."""
    project = folder / "project"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    edit_params(project, SMALL)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(
        MNIST_MIRROR=str(mnist_mirror),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@localhost",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@localhost",
        # sample CPU and memory every second: the small slice trains for a few seconds only
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
    )
    git = ("git", "-c", "init.defaultBranch=main")
    sh(*git, "init", "-q", cwd=project, env=env)
    sh(*git, "add", "-A", cwd=project, env=env)
    sh(*git, "commit", "-qm", "small-slice copy", cwd=project, env=env)
    return project, env


def store_env(project: Path, env: dict[str, str]) -> dict[str, str]:
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(command: list[str], ready_url: str, cwd: Path, env: dict[str, str]):
    """Start a server, wait until ``ready_url`` answers 200, stop it (and its workers) after."""
    log = cwd / f"server-{Path(command[0]).name}-{command[1]}.log"
    # MLflow 3's tracking server otherwise starts 8 job-runner processes (for GenAI jobs the
    # pipeline never submits): 7 s of CPU at every start (docs/scaling-out.md)
    env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(ready_url, process, log)
        yield process
    finally:
        if process.poll() is None:  # a test may have killed it already
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(ready_url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    """Wait until ``ready_url`` answers 200 (the server's output, in ``log``, if it never does
    or exits first)."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, f"server exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(ready_url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"server not ready:\n{log.read_text()}"
        time.sleep(0.5)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a server started by ``server`` and its workers, as a crash would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Watched:
    """A command whose output (stdout and stderr together) is read as it comes, so that a
    test can act when a line appears, e.g. take a server away after the first epoch."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._arrived:
                self.lines.append(line)
                self._arrived.notify_all()

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        """The first line matching ``pattern`` (a regular expression), waiting for it."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                if found := next((x for x in self.lines if re.search(pattern, x)), None):
                    return found
                assert self.process.poll() is None or self._reader.is_alive(), (
                    f"{pattern!r} never came:\n{''.join(self.lines)}"
                )
                assert time.monotonic() < deadline, f"no {pattern!r} in:\n{''.join(self.lines)}"
                self._arrived.wait(1)

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        """Wait for the command to end: its exit status and its whole output."""
        status = self.process.wait(timeout)
        self._reader.join(timeout=30)
        return status, "".join(self.lines)


def file_hashes(root: Path, folders: list[str]) -> dict[str, str]:
    return {
        str(path.relative_to(root)): file_sha256(path)
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def listening_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses with a socket listening on ``port`` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def group_rss(pgid: int) -> int:
    """Resident memory (KiB) of every process in the process group ``pgid``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # the 5th field of stat: the process group
                status = (stat.parent / "status").read_text()
                total += int(next(line.split()[1] for line in status.splitlines()
                                  if line.startswith("VmRSS:")))  # fmt: skip
        except (OSError, StopIteration, ValueError):
            continue  # a process that ended meanwhile
    return total


def auth_headers(auth: tuple[str, str] | None) -> dict[str, str]:
    """HTTP basic authentication for ``(username, password)``, nothing for None."""
    if auth is None:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(":".join(auth).encode()).decode()}


def get(url: str, auth: tuple[str, str] | None = None) -> dict:
    request = urllib.request.Request(url, headers=auth_headers(auth))
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def post(url: str, payload: dict | bytes, auth: tuple[str, str] | None = None):
    """``(status, JSON body)``; the body as text where it is not JSON (e.g. a 401's)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **auth_headers(auth)}
    request = urllib.request.Request(url, data, headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except json.JSONDecodeError:
            return error.code, body.decode(errors="replace")


def status(url: str, payload: dict | None, auth) -> int:
    """The HTTP status of one request (GET without a payload, POST with one)."""
    if payload is not None:
        return post(url, payload, auth)[0]
    try:
        get(url, auth)
    except urllib.error.HTTPError as error:
        return error.code
    return 200
