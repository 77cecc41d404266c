"""What every ``renkei-server`` command shares: options, config and database opening, exits.

Split from ``server/cli.py`` so command groups can live in their own modules
(``operator_cli.py``) without importing the main group.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from common.printable import printable, printable_json

from .config import ServerConfig, load_config
from .errors import ConfigError
from .storage import Storage, business_day

__all__ = [
    "DATE_OPTION",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "Failure",
    "config_option",
    "echo",
    "echo_json",
    "json_option",
    "load",
    "now",
    "open_new_storage",
    "open_storage",
    "report_day",
]

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class Failure(click.ClickException):
    """Usage, configuration or I/O error: nothing was done (exit 2)."""

    exit_code = EXIT_USAGE

    def format_message(self) -> str:
        """The message, which may quote a file name or a value, as :func:`echo` shows text."""
        return printable(self.message, keep="\n")


def now() -> datetime:
    return datetime.now(UTC)


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config FILE`` on every command (default: $RENKEI_SERVER_CONFIG, then built-in defaults)."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="TOML configuration file (default: $RENKEI_SERVER_CONFIG; see docs/operations.md).",
    )(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(
        command
    )


def load(path: Path | None) -> ServerConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise Failure(exc.message) from None


def open_new_storage(config: ServerConfig) -> Storage:
    """The configured database's :class:`Storage`, which may not exist yet (``init`` makes it)."""
    try:
        return Storage(config.database_url)
    except ConfigError as exc:
        raise Failure(exc.message) from None


def open_storage(config: ServerConfig) -> Storage:
    """The configured database, which must exist and be initialised; else a Failure saying so."""
    storage = open_new_storage(config)
    database = storage.engine.url.database
    if storage.engine.dialect.name == "sqlite" and database and not Path(database).exists():
        storage.dispose()  # opening would create an empty file
        raise Failure(f"there is no database at {database}; run `renkei-server init` first")
    try:
        version = storage.schema_version()
    except SQLAlchemyError as exc:  # an unreachable database: report it plainly
        storage.dispose()
        raise Failure(f"cannot open the database {storage.safe_url}: {exc}") from None
    if version == 0:
        storage.dispose()
        raise Failure(
            f"the database {storage.safe_url} is not initialised; run `renkei-server init`"
        )
    return storage


def echo_json(obj: Any) -> None:
    """``--json`` output: Japanese readable, every character a terminal acts on as ``\\uXXXX``.

    ``ensure_ascii=False`` keeps names readable but leaves C1 controls, DEL,
    bidirectional and other format characters (and lone surrogates) raw in
    strings; stored text from terminals and files may hold them
    (``common.printable``).  The escaped text parses to the same value.
    """
    click.echo(printable_json(json.dumps(obj, ensure_ascii=False, indent=1)))


def echo(text: str = "", *, err: bool = False) -> None:
    """Human output: each line with every control, format or bidirectional character escaped.

    Every line a command prints for people goes through here, because lines
    carry stored strings (agent versions, file names, record ids, messages
    quoting values) that came from terminals or files; a raw ``ESC``/``0x9B``
    or a bidirectional override would act on the operator's terminal instead
    of being shown.  Tabs and line breaks are the command's own layout and
    stay; the values that could carry them (agent versions, file names) are
    refused with them on the way in.
    """
    click.echo(printable(text, keep="\t\n"), err=err)


def report_day(value: datetime | None) -> date:
    return value.date() if value is not None else business_day(now())


DATE_OPTION = click.option(
    "--date",
    "day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Business date YYYY-MM-DD (default: today in Japan).",
)
