"""``renkei-format``: check, encode and decode notice files.

What a 住基 vendor runs against their output before a municipality drops it
into the appliance's outbox, and what engineers use to look inside a batch.

Exit codes: 0 valid / done, 1 the input has problems (listed), 2 usage or I/O
error.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from typing import BinaryIO, TextIO

import click

from . import lasdec
from .atomicwrite import atomic_write
from .errors import NoticeFileError, NoticeWriteError
from .noticefile import (
    FORMAT_TAGS,
    NoticeWriter,
    RowError,
    degenerate_record,
    read_jsonl,
    read_notice_file,
    read_unicode_csv,
    records_to_jsonl,
)
from .records import Record
from .rejections import row_error_entry
from .validation import validate

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2

INPUT_KINDS = ("auto", "juki", "csv", "jsonl")


class UsageError(click.ClickException):
    exit_code = EXIT_USAGE


def sniff(head: bytes) -> str:
    """Guess the input kind from its first bytes: Juki code starts with a zero byte."""
    if head[:1] == b"\x00" or head[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return "juki"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return "jsonl"
    return "csv"


def _open_input(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None


def _rows(handle: BinaryIO, name: str, kind: str) -> tuple[str, Iterator[Record | RowError], bool]:
    """Direction, rows and whether the source was Juki code (so encodability is given)."""
    buffered = io.BufferedReader(handle) if not isinstance(handle, io.BufferedReader) else handle
    if kind == "auto":
        kind = sniff(buffered.peek(4)[:4])
    if kind == "juki":
        reader = read_notice_file(buffered, name=name)
        return reader.direction, iter(reader), True
    text = io.TextIOWrapper(buffered, encoding="utf-8", errors="strict", newline="")
    if kind == "jsonl":
        direction, rows = read_jsonl(text, name=name)
    else:
        direction, rows = read_unicode_csv(text, name=name)
    return direction, rows, False


def _progress(count: int) -> None:
    if count % 100_000 == 0 and sys.stderr.isatty():
        click.echo(f"\r{count:,} 件…", err=True, nl=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="renkei")
def main() -> None:
    """Check, encode and decode renkei notice files (法務省通知 / 市町村通知).

    \b
    Example:
      renkei-format validate 20261127.csv
      renkei-format encode notices.jsonl -o 20261127.csv
      renkei-format decode 20261127.csv -o notices.jsonl
      renkei-format lasdec 131016 011002
    """


@main.command("validate")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--input",
    "kind",
    type=click.Choice(INPUT_KINDS),
    default="auto",
    show_default=True,
    help="Input kind: a notice file in Juki code, or UTF-8 CSV / JSON Lines.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object).")
def validate_command(file: str, kind: str, as_json: bool) -> None:
    """Check every record of FILE against the pattern tables and code tables.

    Lists each problem per record (Japanese for staff; --json for machines).
    Exit 0 if the file is valid, 1 if it has problems, 2 on usage or I/O error.

    \b
    Example:
      renkei-format validate outbox/20261127.csv
      renkei-format validate --json outbox/20261127.csv | jq .invalid
    """
    out = click.get_text_stream("stdout")
    handle = _open_input(file)
    summary = {
        "file": file,
        "direction": None,
        "records": 0,
        "valid": 0,
        "invalid": 0,
        "problems": 0,
    }
    report = _JsonReport(out) if as_json else _TextReport(out)
    try:
        try:
            direction, rows, from_juki = _rows(handle, file, kind)
        except NoticeFileError as exc:
            report.file_error(summary, exc)
            sys.exit(EXIT_PROBLEMS)
        except UnicodeDecodeError as exc:
            report.file_error(summary, _utf8_error(file, exc))
            sys.exit(EXIT_PROBLEMS)
        summary["direction"] = direction
        report.start(summary)
        try:
            for row in rows:
                summary["records"] += 1
                _progress(summary["records"])
                if isinstance(row, RowError):
                    summary["invalid"] += 1
                    summary["problems"] += 1
                    report.row_error(row)
                    continue
                problems = validate(row, check_encoding=not from_juki)
                if problems:
                    summary["invalid"] += 1
                    summary["problems"] += len(problems)
                    report.record(row, problems)
                else:
                    summary["valid"] += 1
        except NoticeFileError as exc:
            report.finish(summary, exc)
            sys.exit(EXIT_PROBLEMS)
        except UnicodeDecodeError as exc:
            report.finish(summary, _utf8_error(file, exc))
            sys.exit(EXIT_PROBLEMS)
        report.finish(summary, None)
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    sys.exit(EXIT_PROBLEMS if summary["invalid"] else EXIT_OK)


def _utf8_error(name: str, exc: UnicodeDecodeError) -> NoticeFileError:
    return NoticeFileError(
        f"not valid UTF-8 at byte {exc.start}",
        message_ja=f"UTF-8 として読めないバイトがあります（{exc.start} バイト目）",
        code="file.encoding",
        name=name,
        offset=exc.start,
    )


class _TextReport:
    def __init__(self, out: TextIO):
        self.out = out

    def file_error(self, summary: dict, exc: NoticeFileError) -> None:
        self.out.write(f"ファイル: {summary['file']}\n")
        self.finish(summary, exc)

    def start(self, summary: dict) -> None:
        kind = "法務省通知" if summary["direction"] == "ministry" else "市町村通知"
        self.out.write(f"ファイル: {summary['file']}（{kind}）\n")

    def row_error(self, row: RowError) -> None:
        rid = f" レコード {row.record_id}" if row.record_id else ""
        self.out.write(f"{row.line} 行目{rid}: [{row.code}] {row.message_ja}\n")

    def record(self, record: Record, problems: list) -> None:
        self.out.write(
            f"レコード {record.record_id or '（番号なし）'}（パターン {record.pattern}）:\n"
        )
        for problem in problems:
            self.out.write(f"  [{problem.code}] {problem.message}\n")

    def finish(self, summary: dict, error: NoticeFileError | None) -> None:
        if error is not None:
            line = f"{error.line} 行目: " if error.line else ""
            self.out.write(f"ファイルエラー: {line}[{error.code}] {error.message_ja}\n")
            self.out.write(f"  ({error.message})\n")
        self.out.write(
            f"結果: {summary['records']} 件中 正常 {summary['valid']} 件、"
            f"問題あり {summary['invalid']} 件（問題 {summary['problems']} 件）\n"
        )


class _JsonReport:
    """Streams one JSON object, so a file with a million bad records needs no memory for it."""

    def __init__(self, out: TextIO):
        self.out = out
        self.first = True

    def file_error(self, summary: dict, exc: NoticeFileError) -> None:
        self.start(summary)
        self.finish(summary, exc)

    def start(self, summary: dict) -> None:
        file_name = json.dumps(summary["file"], ensure_ascii=False)
        direction = json.dumps(summary["direction"])
        self.out.write(f'{{"file": {file_name}, "direction": {direction}, "rejected": [')

    def _item(self, obj: dict) -> None:
        self.out.write(("" if self.first else ",") + "\n  " + json.dumps(obj, ensure_ascii=False))
        self.first = False

    def row_error(self, row: RowError) -> None:
        self._item({**row_error_entry(row), "pattern": None})

    def record(self, record: Record, problems: list) -> None:
        self._item(
            {
                "record_id": record.record_id,
                "pattern": record.pattern,
                "problems": [p.to_json() for p in problems],
            }
        )

    def finish(self, summary: dict, error: NoticeFileError | None) -> None:
        file_error = None
        if error is not None:
            file_error = {
                "code": error.code,
                "line": error.line,
                "offset": error.offset,
                "message": error.message_ja,
                "message_en": error.message,
            }
        tail = {k: summary[k] for k in ("records", "valid", "invalid", "problems")}
        tail["file_error"] = file_error
        tail["ok"] = error is None and summary["invalid"] == 0
        self.out.write("\n], " + json.dumps(tail, ensure_ascii=False)[1:] + "\n")


@main.command("encode")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write here (atomically); default stdout.",
)
@click.option(
    "--input",
    "kind",
    type=click.Choice(("auto", "csv", "jsonl")),
    default="auto",
    show_default=True,
)
@click.option(
    "--degenerate",
    is_flag=True,
    help="Replace characters without a Juki code by their MJ縮退マップ fallback, and list each.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON summary (substitutions included)."
)
def encode_command(
    file: str, output: str | None, kind: str, degenerate: bool, as_json: bool
) -> None:
    """Convert UTF-8 CSV or JSON Lines into a notice file in 住基統一文字コード.

    Nothing is written unless every record converts; a character without a
    Juki code is an error naming record, column and character (or, with
    --degenerate, is replaced and listed).

    \b
    Example:
      renkei-format encode notices.jsonl -o 20261127.csv
      renkei-format encode --degenerate --json export.csv -o 20261127.csv
    """
    handle = _open_input(file)
    substitutions: list[dict] = []
    try:
        direction, rows, _ = _rows(handle, file, kind)
        if output:
            with atomic_write(output) as sink:
                count = _encode_rows(sink, direction, rows, degenerate, substitutions)
        else:
            buffer = io.BytesIO()
            count = _encode_rows(buffer, direction, rows, degenerate, substitutions)
            sys.stdout.buffer.write(buffer.getvalue())
    except (NoticeFileError, NoticeWriteError, _RowFailure) as exc:
        _fail(exc, as_json)
    except UnicodeDecodeError as exc:
        _fail(_utf8_error(file, exc), as_json)
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()
    summary = {
        "records": count,
        "format": FORMAT_TAGS[direction],
        "output": output,
        "substitutions": substitutions,
    }
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False), err=output is None)
    else:
        for sub in substitutions:
            click.echo(
                f"縮退: レコード {sub['record_id']} 項目 {sub['column']} {sub['position'] + 1} 文字目 "
                f"「{sub['original']}」→「{sub['replacement']}」",
                err=True,
            )
        click.echo(f"{count} 件を変換しました", err=True)


class _RowFailure(Exception):
    def __init__(self, row: RowError):
        super().__init__(f"line {row.line}: {row.message}")
        self.message_ja = f"{row.line} 行目: {row.message_ja}"
        self.code = row.code


def _encode_rows(
    sink: BinaryIO,
    direction: str,
    rows: Iterator[Record | RowError],
    degenerate: bool,
    substitutions: list[dict],
) -> int:
    writer = NoticeWriter(sink, direction)
    for row in rows:
        if isinstance(row, RowError):
            raise _RowFailure(row)
        if degenerate:
            row, subs = degenerate_record(row)
            substitutions.extend(subs)
        writer.write(row)
    writer.close()
    return writer.count


def _fail(exc: Exception, as_json: bool) -> None:
    code = getattr(exc, "code", "error")
    message_ja = getattr(exc, "message_ja", str(exc))
    if as_json:
        click.echo(
            json.dumps(
                {"error": {"code": code, "message": message_ja, "message_en": str(exc)}},
                ensure_ascii=False,
            )
        )
    else:
        click.echo(f"エラー: [{code}] {message_ja}", err=True)
        click.echo(f"  ({exc})", err=True)
    sys.exit(EXIT_PROBLEMS)


@main.command("decode")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write here (atomically); default stdout.",
)
def decode_command(file: str, output: str | None) -> None:
    """Convert a notice file in 住基統一文字コード to UTF-8 JSON Lines.

    The first line is {"format": TAG}; then one object per record with its
    non-empty columns.  `encode` turns the result back into the same bytes.

    \b
    Example:
      renkei-format decode inbox/20261127.csv | head
    """
    handle = _open_input(file)
    try:
        reader = read_notice_file(handle, name=file)

        def records() -> Iterator[Record]:
            for row in reader:
                if isinstance(row, RowError):
                    raise _RowFailure(row)
                yield row

        if output:
            with atomic_write(output) as sink:
                text = io.TextIOWrapper(sink, encoding="utf-8", newline="\n", write_through=True)
                records_to_jsonl(reader.direction, records(), text)
                text.flush()
                text.detach()
        else:
            records_to_jsonl(reader.direction, records(), click.get_text_stream("stdout"))
    except (NoticeFileError, _RowFailure) as exc:
        _fail(exc, False)
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


@main.command("lasdec")
@click.argument("codes", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per code, as a list.")
def lasdec_command(codes: tuple[str, ...], as_json: bool) -> None:
    """Check local government codes (全国地方公共団体コード) and name their municipality.

    Exit 0 if every code is valid and known, 1 otherwise.

    \b
    Example:
      renkei-format lasdec 131016 011002
    """
    results = []
    for code in codes:
        problems = lasdec.validate(code)
        municipality = lasdec.lookup(code) if not problems else None
        results.append(
            {
                "code": code,
                "valid": not problems,
                "problems": problems,
                "prefecture": municipality.prefecture if municipality else None,
                "name": municipality.name if municipality else None,
            }
        )
    if as_json:
        click.echo(json.dumps(results, ensure_ascii=False, indent=1))
    else:
        for result in results:
            if result["valid"]:
                click.echo(f"{result['code']}\tOK\t{result['prefecture']} {result['name']}")
            else:
                click.echo(f"{result['code']}\tNG\t{', '.join(result['problems'])}")
    sys.exit(EXIT_OK if all(r["valid"] for r in results) else EXIT_PROBLEMS)


if __name__ == "__main__":  # pragma: no cover
    main()
