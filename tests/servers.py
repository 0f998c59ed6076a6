"""Real servers on loopback for the tests: a throwaway PostgreSQL cluster and `mlflow server`.

A test module uses the fixtures by loading this module as a plugin (pytest then finds them by name):

    pytest_plugins = ["tests.servers"]

    def test_something(postgres_url, mlflow_server):
        from tests.servers import running_mlflow_server  # helpers: import them inside the test

(`from tests.servers import postgres_url, mlflow_server` at the top of a module works too, but pyflakes calls
the imports unused and the arguments redefinitions, and pytest warns that a module imported before it loads
it as a plugin cannot have its asserts rewritten: hence the helpers' imports inside the tests.)

- `postgres_url`: a SQLAlchemy URL (postgresql+psycopg://...) of a new, empty database, dropped after the
  test, on one cluster per session that `initdb` and `pg_ctl` start in a temp directory (port on 127.0.0.1,
  socket in the directory). Skips, saying why, when PostgreSQL is not installed; `.ci/run` installs it.
- `mlflow_server`: the http://127.0.0.1:PORT of one `mlflow server` per session (SQLite backend store,
  artifacts served from a temp directory). `running_mlflow_server(backend_uri, directory)` starts another,
  on any backend store (a `postgres_url`, say).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Iterator

import httpx
import pytest

POSTGRES_PASSWORD = "medlora-test"
_databases = count(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Until `url` answers 200; an exited process or the timeout fails with the end of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s; to the whole process group when the process leads one
    (`start_new_session=True`), so that the workers it started go too."""
    def signal_all(signal_number: int) -> None:
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal_number)
            else:
                process.send_signal(signal_number)
        except ProcessLookupError:
            pass

    signal_all(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        signal_all(signal.SIGKILL)
        process.wait()


# PostgreSQL


def postgres_bin() -> Path | None:
    """The directory of `initdb` and `pg_ctl`: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    if found := shutil.which("initdb"):
        return Path(found).parent
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return installed[-1].parent if installed else None


@dataclass(frozen=True)
class PostgresCluster:
    port: int
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres:{POSTGRES_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def execute(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as connection:
            connection.execute(statement)


def _as_cluster_owner() -> dict:
    """initdb refuses to run as root: as root, the cluster belongs to the `postgres` user Debian's package adds."""
    if os.geteuid() != 0:
        return {}
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to own the test cluster "
                    "(Debian's postgresql package adds it)")
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": [], "env": {**os.environ, "HOME": owner.pw_dir}}


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                    "`apt-get install postgresql`, as .ci/run does, to run the PostgreSQL tests")
    owner = _as_cluster_owner()
    # Not pytest's tmp_path: the cluster's owner must reach it, and a socket path has ~100 characters at most.
    directory = Path(tempfile.mkdtemp(prefix="medlora-pg-"))
    if owner:
        os.chown(directory, owner["user"], owner["group"])
    run = dict(check=True, capture_output=True, text=True, cwd=directory, **owner)
    try:
        (directory / "password").write_text(POSTGRES_PASSWORD)
        if owner:
            os.chown(directory / "password", owner["user"], owner["group"])
        try:
            subprocess.run([binaries / "initdb", "-D", directory / "data", "-U", "postgres", "-E", "UTF8",
                            "--auth=scram-sha-256", f"--pwfile={directory / 'password'}", "--no-sync"], **run)
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"initdb failed:\n{error.stdout}\n{error.stderr}") from None
        for attempt in range(3):  # another process may take the free port before the cluster binds it
            port = free_port()
            settings = (f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # throwaway data
            started = subprocess.run([binaries / "pg_ctl", "-D", directory / "data", "-l", directory / "server.log",
                                      "-w", "-t", "60", "-o", settings, "start"], **(run | {"check": False}))
            if started.returncode == 0:
                break
        else:
            raise RuntimeError(f"pg_ctl could not start PostgreSQL:\n{_tail(directory / 'server.log')}")
        try:
            yield PostgresCluster(port, directory)
        finally:
            subprocess.run([binaries / "pg_ctl", "-D", directory / "data", "-m", "immediate", "-w", "stop"],
                           **(run | {"check": False}))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A new, empty database for this test (about 0.2 s), dropped afterwards with whoever is still connected."""
    name = f"medlora_test_{next(_databases)}"
    postgres_cluster.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")  # faster than WAL_LOG for tiny ones
    yield postgres_cluster.url(name)
    postgres_cluster.execute(f"DROP DATABASE {name} WITH (FORCE)")


# MLflow


@contextmanager
def running_mlflow_server(backend_store_uri: str, directory: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with its artifacts under directory/artifacts (proxied: clients upload and
    download through the server); yields its URI and stops it afterwards."""
    executable = Path(sys.executable).parent / "mlflow"
    if not executable.exists():
        pytest.skip(f"{executable} not found: install medlora's requirements in this environment")
    port = free_port()
    log = directory / "mlflow-server.log"
    # The server's own environment: not a tracking URI some test (or MLflow itself) left in this process's.
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PATH"] = f"{executable.parent}:{env.get('PATH', '')}"  # it starts uvicorn from PATH
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # seven job-runner processes (GenAI jobs) we never use
    with log.open("w") as output:
        process = subprocess.Popen([executable, "server", "--backend-store-uri", backend_store_uri,
                                    "--artifacts-destination", str(directory / "artifacts"),
                                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                   cwd=directory, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its uvicorn child stops with it
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process, log)
        yield uri
    finally:
        stop(process)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow_server(f"sqlite:///{directory / 'mlflow.db'}", directory) as uri:
        yield uri
