"""The one error type users see: a clear one-line message, never a traceback."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Every rsz command and subcommand takes -h as well as --help. Set on each command, not only its group:
# click caches a command's help option the first time it is built (a test may call a subcommand directly).
HELP_OPTIONS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class RszError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The message must fit on one line and name the file or value at fault.
    """


def first_line(err: BaseException | str, default: str | None = None, limit: int | None = None) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), at most `limit`
    characters; `default` (or the exception type's name) when the message is empty."""
    text = str(err).strip()
    if not text:
        return default or (type(err).__name__ if isinstance(err, BaseException) else "")
    return text.splitlines()[0][:limit]


_handling_interrupts = 0  # one_line_errors calls running: a KeyboardInterrupt there is their one line


def one_line_errors(func: F) -> F:
    """Wrap a CLI entry point: an RszError (or a plain OSError) prints one line and exits 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _handling_interrupts
        _handling_interrupts += 1
        try:
            return func(*args, **kwargs)
        except RszError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except OSError as err:  # a permission or disk problem: the OS message names the file
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        finally:
            _handling_interrupts -= 1

    return wrapper  # type: ignore[return-value]


def one_line_callback(check: Callable[[Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """A click option callback that returns check(value). Click runs callbacks while it parses, before the
    command's one_line_errors wrapper: without this an RszError from the check is a traceback."""

    @one_line_errors
    def callback(_ctx: Any, _param: Any, value: Any) -> Any:
        return check(value)

    return callback


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside this block SIGTERM (`kill PID`, `timeout`, a scheduler's or `docker stop`'s stop) ends a job as
    Ctrl-C does: the batch loop stops, what finished is written out, exit 130. Python's own SIGTERM ends
    the process at once, leaving the outputs unwritten. Further SIGTERMs while the outputs are written are
    ignored (a scheduler's SIGKILL still ends it; the run log or the index journal keep what finished).
    The previous handler comes back afterwards (the CLI also runs inside test and notebook processes).
    Outside any command (the entry points' imports, click parsing the command line) there is nothing to
    stop and no one_line_errors to say it: SIGTERM and Ctrl-C (SIGINT, unless a caller set its own handler)
    give the same line and exit 130 at once (outside_commands)."""
    global _sigterm_stop
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return

    def stop(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        outside_commands()
        raise KeyboardInterrupt

    def ctrl_c(_signum: int, _frame: object) -> None:  # Python's own, but outside commands
        outside_commands()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:  # not one a caller (a notebook, a test) set
        signal.signal(signal.SIGINT, ctrl_c)
    previous_stop, _sigterm_stop = _sigterm_stop, stop
    try:
        yield
    finally:
        _sigterm_stop = previous_stop  # an enclosing block's (the entry point's) is the one again
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


def outside_commands() -> None:
    """A stop before any command runs (the entry points' imports, click parsing the command line): the
    commands' line and exit 130 at once, where click would turn the KeyboardInterrupt into "Aborted!" and
    exit 1. Inside a command (one_line_errors) this returns and the KeyboardInterrupt stops the job."""
    if not _handling_interrupts:
        print("interrupted", file=sys.stderr)
        sys.exit(130)  # SystemExit: click lets it through


_sigterm_stop: Callable[[int, object], None] | None = None  # sigterm_as_ctrl_c's handler, inside its block


def reclaim_sigterm() -> None:
    """Put sigterm_as_ctrl_c's handler back after a library set its own: ray.init's ends the driver at
    once (sys.exit) and Ray's native one prints a stack dump, leaving the job's outputs unwritten."""
    if _sigterm_stop is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_stop)
