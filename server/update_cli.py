"""``renkei-server publish-update``, ``update-keys``, ``update-timestamp``, ``update-status``.

The operator's side of the terminals' application updates (docs/updates.md):
a thin shell over server.update_repo (publishing, the hourly re-signing),
server.update_keys (the key ceremony) and server.update_status.  Registered
on the main group by ``server/cli.py``.

Exit codes:

* 0 — done (``update-status``: nothing to report);
* 1 — ``publish-update``: the bundle was refused (not a release bundle, or
  not newer than the highest published) and nothing was published;
  ``update-timestamp``: signed, but the root or targets metadata expires
  soon or has expired, which only the offline keys can fix;
  ``update-status``: a problem is listed (expired or expiring metadata, or
  a TUF client refuses the repository);
* 2 — usage, configuration, key, repository or I/O error: nothing was done.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .cli_options import (
    EXIT_OK,
    EXIT_PROBLEMS,
    Failure,
    config_option,
    echo,
    echo_json,
    json_option,
)
from .cli_options import load as load_config
from .cli_options import now as clock_now
from .config import ServerConfig
from .errors import ServerError
from .update_bundle import BundleError
from .update_keys import init_repository, renew_root, rotate_keys
from .update_repo import OFFLINE_ROLES, ROLES, UpdateRepository, load_signer
from .update_status import repository_status

__all__ = ["UPDATE_COMMANDS"]

T = TypeVar("T")
#: Codes of a refusal of the operator's input (exit 1), not a failure of the server (exit 2).
_REFUSED = {"update.not_newer"}


class Refused(click.ClickException):
    """The input was refused; nothing was done (exit 1)."""

    exit_code = EXIT_PROBLEMS


def _run(action: Callable[[], T]) -> T:
    """Run a core call; its errors become a message naming the file and the reason."""
    try:
        return action()
    except BundleError as exc:
        raise Refused(exc.message) from None
    except ServerError as exc:
        if exc.code in _REFUSED:
            raise Refused(exc.message) from None
        raise Failure(exc.message) from None
    except OSError as exc:
        raise Failure(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None


def _repository(config_path: Path | None) -> tuple[ServerConfig, UpdateRepository]:
    config = load_config(config_path)
    return config, UpdateRepository.for_data_dir(config.data_dir)


KEY_FILE = click.Path(exists=False, dir_okay=False, path_type=Path)
TARGETS_KEY = click.option(
    "--targets-key",
    "targets_key",
    type=KEY_FILE,
    help="The offline targets key file (from update-keys init or rotate).",
)
ROOT_KEY = click.option(
    "--root-key",
    "root_keys",
    type=KEY_FILE,
    multiple=True,
    help="An offline root key file; repeat for a threshold above 1.",
)
OFFLINE_DIR = click.option(
    "--offline-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for new offline keys (removable media), never under the data folder.",
)


def _echo_problems(problems: list[dict[str, str]]) -> None:
    for problem in problems:
        echo(f"[{problem['code']}] {problem['message']}", err=True)


# --- publish-update ----------------------------------------------------------------------------


@click.command("publish-update")
@config_option
@click.argument("package", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--targets-key",
    "targets_key",
    type=KEY_FILE,
    required=True,
    help="The offline targets key file (from update-keys init or rotate).",
)
@json_option
def publish_update_command(
    config_path: Path | None, package: Path, targets_key: Path, as_json: bool
) -> None:
    """Publish an agent release (make release's tar.gz) to the terminals, signed with TUF.

    Checks the bundle (release.json, the tree), refuses a version not newer
    than every published one, copies it into the repository and signs the
    targets (with --targets-key), snapshot and timestamp metadata; the
    terminals install it at their next update run.  Publishing the same file
    again changes nothing.  Exit 0 published (or already), 1 refused (bad
    bundle, not newer), 2 key, repository or I/O error.

    \b
    Example:
      renkei-server publish-update dist/renkei-agent-0.2.0.tar.gz \\
          --targets-key /media/keys/targets-1a2b3c4d5e6f7081.pem
    """
    _, repo = _repository(config_path)
    signer = _run(lambda: load_signer(targets_key))
    result = _run(lambda: repo.publish(package, signer, now=clock_now()))
    if as_json:
        echo_json(result)
        return
    if result["already_published"]:
        echo(f"renkei-agent {result['version']} は公開済みです（変更なし）")
        return
    echo(
        f"renkei-agent {result['version']} を公開しました: {result['target']} "
        f"（targets v{result['targets_version']}、snapshot v{result['snapshot_version']}、"
        f"timestamp v{result['timestamp_version']}）"
    )
    echo(f"SHA-256 {result['sha256']}、{result['length']} バイト")


# --- update-keys -------------------------------------------------------------------------------


@click.group("update-keys")
def update_keys_group() -> None:
    """The key ceremony of the update repository: init, rotate, renew (docs/updates.md).

    \b
    Example:
      renkei-server update-keys init --offline-dir /media/keys
      renkei-server update-keys rotate --role timestamp --root-key /media/keys/root-….pem
    """


def _print_keys(result: dict[str, Any]) -> None:
    echo(f"root v{result['root_version']}: {result['root']}")
    echo(f"  SHA-256 {result['root_sha256']}、有効期限 {result['root_expires']}")
    for role, paths in result["key_files"].items():
        where = "オフライン" if role in OFFLINE_ROLES else "オンライン"
        for path in paths:
            echo(f"新しい {role} 鍵（{where}）: {path}")
    for warning in result["warnings"]:
        echo(f"注意: {warning}", err=True)


@update_keys_group.command("init")
@config_option
@OFFLINE_DIR
@click.option(
    "--root-keys", type=click.IntRange(1, 9), default=1, show_default=True, help="Root keys made."
)
@click.option(
    "--threshold",
    type=click.IntRange(1, 9),
    default=1,
    show_default=True,
    help="Root keys needed to sign a new root.",
)
@json_option
def keys_init_command(
    config_path: Path | None,
    offline_dir: Path | None,
    root_keys: int,
    threshold: int,
    as_json: bool,
) -> None:
    """Create the repository: four roles' keys and their first metadata.

    The root and targets private keys go to --offline-dir only (refused under
    the data folder); the snapshot and timestamp keys stay on the server in
    DATA_DIR/updates/keys (0600).  Prints the path and SHA-256 of 1.root.json:
    the image ships it (RENKEI_UPDATE_ROOT=FILE for make image).  Refused when
    a repository exists.  Exit 0 created, 2 refused or error.

    \b
    Example:
      renkei-server update-keys init --offline-dir /media/renkei-keys
      renkei-server update-keys init --offline-dir /media/keys --root-keys 3 --threshold 2
    """
    if offline_dir is None:
        raise Failure("name the folder for the offline keys with --offline-dir (removable media)")
    config, repo = _repository(config_path)
    result = _run(
        lambda: init_repository(
            repo,
            data_dir=config.data_dir,
            offline_dir=offline_dir,
            now=clock_now(),
            root_keys=root_keys,
            threshold=threshold,
        )
    ).to_json()
    if as_json:
        echo_json(result)
        return
    _print_keys(result)
    echo(
        f"イメージには {result['root']} を入れてください（RENKEI_UPDATE_ROOT）。"
        f"{offline_dir} の鍵は取り外して保管してください。"
    )


@update_keys_group.command("rotate")
@config_option
@click.option(
    "--role",
    "roles",
    type=click.Choice(ROLES),
    multiple=True,
    required=True,
    help="The role whose key is replaced; repeat for several.",
)
@ROOT_KEY
@OFFLINE_DIR
@TARGETS_KEY
@json_option
def keys_rotate_command(
    config_path: Path | None,
    roles: tuple[str, ...],
    root_keys: tuple[Path, ...],
    offline_dir: Path | None,
    targets_key: Path | None,
    as_json: bool,
) -> None:
    """Replace a role's key: new key, and a new root signed by the old and new root keys.

    Needs the current root key(s) (--root-key).  A new root or targets key is
    written to --offline-dir; a new snapshot or timestamp key to the server.
    For --role targets give the current targets key too (--targets-key), so
    the terminals accept the repository at every moment of the change.
    Exit 0 rotated, 2 wrong key or error.

    \b
    Example:
      renkei-server update-keys rotate --role timestamp --root-key /media/keys/root-1a2b.pem
      renkei-server update-keys rotate --role targets --root-key /media/keys/root-1a2b.pem \\
          --targets-key /media/keys/targets-9f8e.pem --offline-dir /media/keys
    """
    config, repo = _repository(config_path)
    if not root_keys:
        raise Failure("give the current root key file(s) with --root-key")
    signers = [_run(lambda path=path: load_signer(path)) for path in root_keys]
    old_targets = _run(lambda: load_signer(targets_key)) if targets_key is not None else None
    result = _run(
        lambda: rotate_keys(
            repo,
            roles,
            signers,
            data_dir=config.data_dir,
            now=clock_now(),
            offline_dir=offline_dir,
            old_targets_signer=old_targets,
        )
    ).to_json()
    if as_json:
        echo_json(result)
    else:
        _print_keys(result)


@update_keys_group.command("renew")
@config_option
@click.option("--role", type=click.Choice(OFFLINE_ROLES), required=True, help="root or targets.")
@ROOT_KEY
@TARGETS_KEY
@json_option
def keys_renew_command(
    config_path: Path | None,
    role: str,
    root_keys: tuple[Path, ...],
    targets_key: Path | None,
    as_json: bool,
) -> None:
    """Re-sign root or targets metadata with the same key and a fresh expiry.

    Root lives 365 days and targets 90; update-status warns 30 and 14 days
    before.  Publishing a release renews targets too.  Exit 0 renewed, 2
    wrong key or error.

    \b
    Example:
      renkei-server update-keys renew --role targets --targets-key /media/keys/targets-9f8e.pem
      renkei-server update-keys renew --role root --root-key /media/keys/root-1a2b.pem
    """
    _, repo = _repository(config_path)
    now = clock_now()
    if role == "root":
        if not root_keys:
            raise Failure("give the root key file(s) with --root-key")
        signers = [_run(lambda path=path: load_signer(path)) for path in root_keys]
        result = _run(lambda: renew_root(repo, signers, now=now)).to_json()
        if as_json:
            echo_json(result)
        else:
            _print_keys(result)
        return
    if targets_key is None:
        raise Failure("give the targets key file with --targets-key")
    signer = _run(lambda: load_signer(targets_key))
    state = _run(lambda: repo.renew_targets(signer, now=now))
    summary = repo.role_summary(state)["targets"]
    if as_json:
        echo_json({"targets": summary})
    else:
        echo(f"targets v{summary['version']} に署名しました（有効期限 {summary['expires']}）")


# --- update-timestamp, update-status -----------------------------------------------------------


@click.command("update-timestamp")
@config_option
@json_option
def update_timestamp_command(config_path: Path | None, as_json: bool) -> None:
    """Re-sign the timestamp (and the snapshot when it expires within 3 days): run hourly.

    The timestamp lives one day, so terminals notice within a day when they
    are held on old metadata.  A systemd timer runs this every hour
    (docs/units/).  Exit 0 signed, 1 signed but root or targets metadata
    expire soon (the offline keys are needed: see the message), 2 nothing
    signed (no repository, online key missing, I/O error).

    \b
    Example:
      renkei-server update-timestamp
      renkei-server update-timestamp --json
    """
    _, repo = _repository(config_path)
    result = _run(lambda: repo.refresh_timestamp(now=clock_now()))
    if as_json:
        echo_json(result)
    else:
        roles = result["roles"]
        snapshot = "、snapshot も再署名" if result["snapshot_resigned"] else ""
        echo(
            f"timestamp v{roles['timestamp']['version']} に署名しました"
            f"（有効期限 {roles['timestamp']['expires']}{snapshot}）"
        )
    _echo_problems(result["problems"])
    sys.exit(EXIT_PROBLEMS if result["problems"] else EXIT_OK)


@click.command("update-status")
@config_option
@click.option("--no-check", is_flag=True, help="Skip the TUF client check of the repository.")
@json_option
def update_status_command(config_path: Path | None, no_check: bool, as_json: bool) -> None:
    """Show the update repository: versions, expiries, keys, releases, problems.

    Also runs a real TUF client from 1.root.json over the files (unless
    --no-check), as a new terminal would.  Exit 0 healthy, 1 a problem is
    listed (expired or expiring metadata, the client refuses), 2 no
    repository or an error.

    \b
    Example:
      renkei-server update-status
      renkei-server update-status --json
    """
    _, repo = _repository(config_path)
    status = _run(lambda: repository_status(repo, now=clock_now(), check=not no_check))
    if as_json:
        echo_json(status)
    else:
        echo(f"更新リポジトリ {status['repository']}")
        for role, info in status["roles"].items():
            echo(
                f"  {role:<9} v{info['version']:<6} 有効期限 {info['expires']}  "
                f"鍵 {', '.join(info['keys'])}（閾値 {info['threshold']}）"
            )
        echo(f"公開中のリリース: {len(status['releases'])} 件")
        for release in status["releases"]:
            echo(f"  {release['version']}\t{release['length']} バイト\t{release['sha256']}")
        check = status.get("client_check")
        if check is not None:
            echo("TUF クライアント検査: " + ("受理" if check["ok"] else "拒否"))
    _echo_problems(status["problems"])
    sys.exit(EXIT_PROBLEMS if status["problems"] else EXIT_OK)


#: What server/cli.py adds to ``renkei-server``.
UPDATE_COMMANDS = (
    publish_update_command,
    update_keys_group,
    update_timestamp_command,
    update_status_command,
)
