"""What the commands print: stdout and stderr consoles (a closed pipe ends a command quietly), JSON output, table
cells (clipped text, statuses, local times, numbers, durations) and tables fitted to the terminal's width.

Nothing here knows a command or a ``HistoryDB`` shape: ``runlake.cli.render`` builds the tables of each shape
from these pieces.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text

# ---- consoles -----------------------------------------------------------------------------------------------
_PIPE_WIDTH = 240  # output to a file or a pipe: no terminal to fit, so tables keep their columns


def _stdout_closed() -> NoReturn:
    """Stop quietly because the reader of stdout went away (``runlake history | head -1``, a pager quit early).

    Exit status 0, no message: the reader took what it wanted, so nothing failed. Not 1, which rich and some click
    versions use, nor death by SIGPIPE (141, what C tools do): either makes ``set -o pipefail`` scripts fail for a
    plain ``| head``, and a message would be noise on stderr. stdout is pointed at /dev/null first, so that the
    interpreter's last flush of what is still buffered cannot fail and print "Exception ignored ... BrokenPipeError"
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe). ``SystemExit`` rather than ``typer.Exit``: it
    passes the commands' ``except Exception`` blocks, which would report it as an error.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout): nothing to flush into a pipe
        pass
    raise SystemExit(0)


def _stdout_file() -> tuple[int, int] | None:
    """What file descriptor 1 is (device, inode), or None without one."""
    try:
        info = os.fstat(1)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def quiet_when_stdout_closes(run: Any) -> None:
    """Call ``run()``; end with status 0 where its console found stdout's reader gone and stopped with status 1.

    For the consoles runlake does not make (Typer's ``--help`` and usage errors): rich's own answer to a closed pipe
    points stdout at /dev/null and exits 1, which is recognised here by stdout having become /dev/null. A usage error
    whose message met the closed pipe (``runlake runs --bogus 2>&1 | true``) still failed: it ends with the error's
    own status (2), found in the exceptions the closed pipe interrupted.
    """
    before = _stdout_file()
    try:
        run()
    except SystemExit as stop:
        if stop.code == 1 and before is not None and before != _devnull() and _stdout_file() == _devnull():
            raise SystemExit(_interrupted_error_status(stop)) from None
        raise


def _interrupted_error_status(stop: BaseException) -> int:
    """The exit status of a click error being reported when the pipe closed (in ``stop``'s context chain), else 0.

    Recognised by its shape (an int ``exit_code`` and ``format_message``): Typer brings its own copy of click."""
    seen: BaseException | None = stop.__context__
    for _ in range(8):
        if seen is None:
            break
        code = getattr(seen, "exit_code", None)
        if isinstance(code, int) and callable(getattr(seen, "format_message", None)):
            return code
        seen = seen.__context__
    return 0


def _devnull() -> tuple[int, int]:
    info = os.stat(os.devnull)
    return info.st_dev, info.st_ino


class _StdoutConsole(Console):
    """The console of every command's output on stdout: a closed pipe ends the command quietly (``_stdout_closed``)
    instead of rich's default (exit 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _stdout_closed()


def _stdout() -> Console:
    console = _StdoutConsole(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


class _StderrConsole(Console):
    """The console of messages on stderr: a closed stderr pipe only silences them. Rich's default (exit 1, stdout
    pointed at /dev/null) would end the command there, and as if stdout's reader had gone (status 0): an error
    reported by ``fail`` must still end with its own status."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # no file descriptor (a test's captured stderr)
            pass


def _stderr() -> Console:
    return _StderrConsole(stderr=True, highlight=False)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text: str) -> str:
    """``text`` with control characters (terminal escapes among them) shown as ``\\xNN`` instead of obeyed."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


# ---- JSON ---------------------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Write ``value`` as indented JSON to stdout (plain, no colour, no wrapping; NaN and infinities as null)."""
    value = _finite(value)
    text = json.dumps(value, indent=2, ensure_ascii=False, default=_json_default)
    try:
        try:
            sys.stdout.write(text + "\n")
        except UnicodeEncodeError:  # a stdout that cannot encode the data: same JSON, \u-escaped
            sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=True, default=_json_default) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()


# ---- table cells --------------------------------------------------------------------------------------------
_STATUS_STYLES = {
    "completed": "green",
    "ok": "green",
    "failed": "red",
    "error": "red",
    "running": "yellow",
}
_MISSING = Text("—", style="dim")


def _clip(value: Any, limit: int = 120) -> Text:
    """One line of at most ``limit`` characters (whitespace collapsed, ellipsis when cut) for a table cell."""
    if value is None:
        return _MISSING.copy()
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=_json_default)
    text = _safe(" ".join(text.split()))
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return Text(text)


def _red(text: Text) -> Text:
    text.stylize("red")
    return text


def _status(status: str | None) -> Text:
    if not status:
        return _MISSING.copy()
    return Text(status, style=_STATUS_STYLES.get(status, ""))


def _as_datetime(moment: float | str | dt.datetime | None) -> dt.datetime | None:
    if moment is None:
        return None
    if isinstance(moment, dt.datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
    if isinstance(moment, str):
        try:
            parsed = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromtimestamp(float(moment), tz=dt.timezone.utc)


def _local_time(moment: float | str | dt.datetime | None) -> Text:
    """Local, readable ISO time (``2025-06-01 14:03:22``); the table caption names the zone."""
    when = _as_datetime(moment)
    if when is None:
        return _MISSING.copy() if moment is None else Text(str(moment))
    return Text(when.astimezone().strftime("%Y-%m-%d %H:%M:%S"))


def _zone() -> str:
    """The machine's zone as its abbreviations (``PST/PDT``): the times shown may lie on either side of a clock
    change, so the one in force now does not name them all."""
    names = [n for n in dict.fromkeys(time.tzname) if n]
    return "/".join(names) or dt.datetime.now().astimezone().strftime("%z")


def _count(n: int, noun: str) -> str:
    """``1 node``, ``2 nodes``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _zone_caption() -> str:
    return f"times in {_zone()}, this machine's time zone"


def _duration(started: float | None, ended: float | None) -> Text:
    from ..history import format_duration

    if started is None or ended is None:
        return _MISSING.copy()
    return Text(format_duration(int(started * 1e9), int(ended * 1e9)) or "—")


def _number(value: Any) -> Text:
    if value is None:
        return _MISSING.copy()
    if isinstance(value, bool):
        return Text(str(value))
    if isinstance(value, int):
        return Text(f"{value:,}")
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float):
        return Text(f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}")
    return Text(str(value))


def _ms(value: float | None) -> Text:
    """A duration given in milliseconds, in the unit that reads best."""
    if value is None:
        return _MISSING.copy()
    if value < 1000:
        return Text(f"{value:,.0f} ms")
    if value < 120_000:
        return Text(f"{value / 1000:,.1f} s")
    return Text(f"{value / 60_000:,.1f} min")


def _failures(count: int) -> Text:
    """A count of failures, red when there are any."""
    return _red(_number(count)) if count else _number(count)


def _rate(value: float | None) -> Text:
    return _MISSING.copy() if value is None else Text(f"{value:.1%}")


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _empty(message: str) -> None:
    _stdout().print(Text(_safe(message), style="dim"), soft_wrap=True)


# ---- tables -------------------------------------------------------------------------------------------------
@dataclass
class _Col:
    """A table column. ``text`` columns shrink (with an ellipsis) to fit; the others keep their width.

    When even the shrunk table does not fit the terminal, columns with the lowest ``keep`` go first. A text column
    is shown down to ``min_width`` characters (default ``_MIN_TEXT``); with ``wrap`` its cells take more lines
    instead of an ellipsis (words longer than the column are cut across lines): for short values that must be read
    whole, like the figures of ``runlake stats``.
    """

    header: str
    text: bool = False
    max_width: int | None = None
    keep: int = 5
    justify: Literal["left", "right"] = "left"
    style: str | None = None
    wrap: bool = False
    min_width: int | None = None


_MIN_TEXT = 16  # a free-text column narrower than this is not worth showing


def _fit_table(
    cols: Sequence[_Col],
    rows: Sequence[Sequence[Text]],
    title: str | None = None,
    caption: str | None = None,
    width: int | None = None,
) -> tuple[Table, list[str]]:
    """A table whose column widths fit ``width`` (the terminal); returns it with the headers left out."""
    width = width or _stdout().width
    natural = []
    for index, col in enumerate(cols):
        size = max([len(col.header), *(row[index].cell_len for row in rows)])
        natural.append(min(size, col.max_width) if col.text and col.max_width else size)
    active = list(range(len(cols)))
    while True:
        texts = [i for i in active if cols[i].text]
        room = width - (3 * len(active) + 1) - sum(natural[i] for i in active if not cols[i].text)
        shortest = sum(min(natural[i], _MIN_TEXT if cols[i].min_width is None else cols[i].min_width) for i in texts)
        if room >= shortest or len(active) <= 1:
            break
        active.remove(min(active, key=lambda i: (cols[i].keep, -i)))
    widths = {i: natural[i] for i in active if not cols[i].text}
    remaining = max(room, 0)
    ordered = sorted(texts, key=lambda i: natural[i])
    for done, index in enumerate(ordered):
        share = remaining // (len(ordered) - done)
        widths[index] = max(1, min(natural[index], share))
        remaining -= widths[index]
    table = Table(
        title=Text(_safe(title)) if isinstance(title, str) else title,  # data in titles is never markup
        title_justify="left",
        title_style="bold",
        caption=caption,
        caption_justify="left",
        caption_style="dim",
        header_style="bold",
    )
    for index in active:
        col = cols[index]
        table.add_column(
            Text(_safe(col.header)),
            justify=col.justify,
            style=col.style,
            no_wrap=not col.wrap,
            overflow="fold" if col.wrap else "ellipsis",
            width=widths[index],
        )
    for row in rows:
        table.add_row(*(row[i] for i in active))
    return table, [cols[i].header for i in range(len(cols)) if i not in active]


def _print_table(
    console: Console,
    cols: Sequence[_Col],
    rows: Sequence[Sequence[Text]],
    title: str | None = None,
    caption: str | None = None,
) -> None:
    table, hidden = _fit_table(cols, rows, title, caption, console.width)
    console.print(table)
    if hidden:
        names = ", ".join(hidden) if len(hidden) <= 6 else f"{len(hidden)} columns: {', '.join(hidden[:4])}, …"
        console.print(
            Text(f"(not shown for lack of width: {names}; widen the terminal or use --json)", style="dim"),
            soft_wrap=True,
        )
