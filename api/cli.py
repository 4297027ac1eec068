"""The `diffsearch` command line: index, check, stats, query, dedup, serve, up, train, eval.

The commands live in api/indexing_commands.py (write path) and api/commands.py (read path and
the model); they register on api/options.py's `app`. This module only runs it.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from api.options import app
from indexer.errors import DiffsearchError

log = logging.getLogger("diffsearch")


def one_line(exc: BaseException) -> str:
    """Any fault a user can meet as one line that says what to do (no traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, DiffsearchError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}: check the permissions of that file or folder"
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None) or exc
        return f"the index database cannot be used ({str(orig).splitlines()[0]}): run `diffsearch check --repair`"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("httpx", "diffusers", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    from api import commands, indexing_commands  # noqa: F401 - they register the commands on `app`

    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        typer.secho("interrupted: finished work was saved; run the same command again to continue", err=True)
        sys.exit(130)
    except Exception as exc:  # the last line of defence: a user never sees a traceback for a known fault
        log.debug("fault", exc_info=True)
        typer.secho(f"error: {one_line(exc)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
