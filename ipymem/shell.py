"""IPython glue shared by the magics: option tables, user code, display.

* Options are declared once, as a table of :class:`Opt`; the same table
  drives parsing (IPython's ``parse_options``, so ``-r3`` and ``-r 3`` both
  work, as with ``%timeit``), type conversion with a clear ``UsageError``, and
  the generated usage line and help shown by ``%memit?``.
* User code goes through IPython's own transforms (magics, ``!`` lines,
  AST transformers), is registered in ``linecache`` like a cell, so
  tracebacks and line reports show its source, and runs in the user's
  namespaces, so the names it defines stay defined.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import getopt
import keyword
import os
import re
import selectors
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from IPython.core import async_helpers
from IPython.core.error import UsageError

if TYPE_CHECKING:
    import asyncio


@dataclass(frozen=True)
class Opt:
    """One option of a magic.

    ``flag`` is a single letter (``"r"``) or a long name (``"precision"``);
    ``metavar`` is ``None`` for a switch.  ``convert`` turns the text into
    the value and raises ``ValueError`` with a helpful message on bad input.
    """

    flag: str
    help: str
    metavar: str | None = None
    convert: Callable[[str], Any] = str
    default: Any = None
    repeatable: bool = False

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def spelled(self) -> str:
        dashes = "-" if len(self.flag) == 1 else "--"
        return f"{dashes}{self.flag}" + (f" {self.metavar}" if self.metavar else "")


def _number(kind: type, text: str, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(int, text, "a positive integer")
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(int, text, "an integer of 0 or more")
    if value < 0:
        raise ValueError(f"expected an integer of 0 or more, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text, "a positive number of seconds")
    if not (0 < value < float("inf")):
        raise ValueError(f"expected a positive number of seconds, got {text!r}")
    return value


def identifier(text: str) -> str:
    if not text.isidentifier() or keyword.iskeyword(text):
        raise ValueError(f"expected a Python identifier, got {text!r}")
    return text


#: Names IPython keeps in the user namespace for itself: storing a result there breaks the session
#: (``-v get_ipython`` breaks every later magic, ``-v Out`` the output history).
SHELL_NAMES = frozenset(
    [
        "get_ipython",
        "exit",
        "quit",
        "In",
        "Out",
        "_",
        "__",
        "___",
        "_i",
        "_ii",
        "_iii",
        "_ih",
        "_oh",
        "_dh",
        "_sh",
        "display",
        "__builtins__",
        "__name__",
    ]
)
_HISTORY_NAME = re.compile(r"_i?\d+")  # _5, _i5: IPython's output and input history


def store_name(text: str) -> str:
    """A ``-v NAME``: a Python identifier that IPython itself and Python's builtins do not need."""
    text = identifier(text)
    if text in SHELL_NAMES or _HISTORY_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is a name IPython itself uses; choose another")
    if text in dir(builtins):
        raise ValueError(f"{text!r} is a Python builtin the session relies on; choose another")
    return text


def usage_line(magic: str, opts: Sequence[Opt], tail: str) -> str:
    return f"%{magic} " + " ".join(f"[{o.spelled}]" for o in opts) + f" {tail}"


def make_doc(summary: str, magic: str, opts: Sequence[Opt], tail: str, body: str = "") -> str:
    """Docstring for ``%magic?``, generated from the option table."""
    width = max(len(o.spelled) for o in opts) + 2
    lines = [summary, "", "Usage:", "  " + usage_line(magic, opts, tail), "", "Options:"]
    for o in opts:
        wrapped = textwrap.wrap(o.help, 78 - width - 4) or [""]
        lines.append(f"  {o.spelled:<{width}}{wrapped[0]}")
        lines.extend(" " * (width + 2) + w for w in wrapped[1:])
    if body:
        lines += ["", textwrap.dedent(body).strip()]
    return "\n".join(lines) + "\n"


class Parsed(dict):
    """Option values by ``dest`` (attribute access too), plus the remaining ``rest`` text."""

    rest: str = ""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def parse(magic: str, line: str, opts: Sequence[Opt], tail: str) -> Parsed:
    """Parse ``line`` against ``opts``; every problem becomes a ``UsageError`` carrying the usage line.

    Options end at the first word that is not an option (or at ``--``); the
    rest of the line is returned verbatim in ``rest``, spacing and quotes
    included, because it is Python source.
    """
    usage = "Usage: " + usage_line(magic, opts, tail)
    short = "".join(o.flag + (":" if o.metavar else "") for o in opts if len(o.flag) == 1)
    long = [o.flag + ("=" if o.metavar else "") for o in opts if len(o.flag) > 1]
    tokens = _tokens(line)
    try:
        found, remaining = getopt.getopt([t for t, _ in tokens], short, long)
    except getopt.GetoptError as exc:
        raise UsageError(f"%{magic}: {exc}\n{usage}") from None
    consumed = len(tokens) - len(remaining)
    rest = line[tokens[consumed - 1][1] :] if consumed else line
    raw: dict[str, list[str]] = {}
    for flag, value in found:
        raw.setdefault(flag.lstrip("-"), []).append(value)
    out = Parsed()
    for o in opts:
        values = raw.get(o.flag)
        if values is None:
            out[o.dest] = [] if o.repeatable else (False if o.metavar is None else o.default)
            continue
        if o.metavar is None:
            out[o.dest] = True
            continue
        converted = []
        for v in values:
            try:
                converted.append(o.convert(_unquote(v)))
            except (ValueError, TypeError) as exc:
                raise UsageError(f"%{magic}: bad value for {o.spelled.split()[0]}: {exc}\n{usage}") from None
        out[o.dest] = converted if o.repeatable else converted[-1]
    out.rest = rest.strip()
    return out


def _tokens(line: str) -> list[tuple[str, int]]:
    """Whitespace-separated words with their end offsets; quotes group words, as in a shell."""
    out = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        start, quote = i, None
        while i < n and (quote or not line[i].isspace()):
            c = line[i]
            if quote:
                if c == "\\":
                    i += 1
                elif c == quote:
                    quote = None
            elif c in "'\"":
                quote = c
            i += 1
        out.append((line[start:i], min(i, n)))
    return out


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def require_statement(magic: str, text: str, opts: Sequence[Opt], tail: str) -> None:
    if not text.strip():
        raise UsageError(f"%{magic}: no statement given\nUsage: " + usage_line(magic, opts, tail))


# -- user code -------------------------------------------------------------------


def compile_user_code(shell: Any, source: str) -> tuple[Callable[[], None], str]:
    """Compile ``source`` as IPython would compile a cell; returns ``(run, filename)``.

    ``run()`` executes it in the user's namespaces.  The source is registered
    in ``linecache`` under the returned file name (IPython's own cell naming,
    so tracebacks say ``Cell In[N]``).  Syntax errors raise here, before
    anything is measured.  ``run.code`` is the compiled code object (``%%mprun``
    profiles it).

    Top-level ``await`` works as in a cell, on the loop a cell would use (see
    :func:`run_awaitable`), so tasks, events and queues made by earlier cells
    keep working.
    """
    if not source.endswith("\n"):
        source += "\n"  # IPython's transformers expect whole lines
    transformed = shell.transform_cell(source)
    filename = shell.compile.cache(transformed, current_cell_number(shell), source)
    tree = shell.compile.ast_parse(transformed, filename=filename)
    tree = shell.transform_ast(tree)
    if tree is None:  # an AST transformer rejected the input and already reported it
        raise UsageError("the input was rejected by an IPython AST transformer")
    user_global_ns, user_ns = shell.user_global_ns, shell.user_ns
    try:
        code = shell.compile(tree, filename, "exec")
    except SyntaxError as exc:
        if "await" not in str(exc) and "async" not in str(exc):
            raise
        flags = shell.compile.flags | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        code = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
        loop = _running_loop()
        # A running loop that cannot be driven from here (not asyncio's own, e.g. uvloop): see call_engine.
        in_thread = loop is not None and not hasattr(loop, "_run_once")

        def run() -> None:
            __tracebackhide__ = True
            coro = eval(code, user_global_ns, user_ns)
            if coro is None:  # nothing was awaited after all
                return
            if in_thread:
                import asyncio

                asyncio.run(coro)
            else:
                run_awaitable(shell, coro)

        run.code = code  # type: ignore[attr-defined]
        run.in_thread = in_thread  # type: ignore[attr-defined]
        return run, filename

    def run() -> None:
        __tracebackhide__ = True
        exec(code, user_global_ns, user_ns)

    run.code = code  # type: ignore[attr-defined]
    run.in_thread = False  # type: ignore[attr-defined]
    return run, filename


def _running_loop() -> asyncio.AbstractEventLoop | None:
    import asyncio  # lazily: asyncio pulls in ssl (~4 MiB of RSS) in terminal IPython

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


#: How long a task cancelled by Ctrl-C gets to finish its cleanup (``finally``, ``except CancelledError``)
#: before the magic reports and re-raises; it stays on the loop and ends there if it takes longer.
CANCEL_GRACE = 2.0


def run_awaitable(shell: Any, coro: Any) -> Any:
    """Run the coroutine of a cell's top-level ``await`` to its end, on the loop IPython's autoawait uses.

    Terminal IPython (no loop running while a cell runs): IPython's own
    persistent loop, the one its async cells run on.  Under ipykernel the
    kernel's loop is running, and it is running this very cell: a magic is a
    synchronous call inside it (``%memit await x`` is
    ``get_ipython().run_line_magic(...)``, which IPython does not see as
    async).  So the coroutine becomes a task on that loop, and this function
    turns the loop's crank (``_run_once``) until the task is done, with the
    kernel's task for this cell set aside meanwhile (asyncio allows one
    current task per loop).  The loop runs everything it would run while an
    async cell awaits: tasks and timers of earlier cells, comm messages;
    new cells wait, as they do for any running cell.  The measurement
    around the call therefore covers exactly the awaited work, in this thread.

    Ctrl-C (KeyboardInterrupt in this thread) cancels the task, gives its
    cleanup up to :data:`CANCEL_GRACE` seconds, and propagates with a
    traceback that ends where the user's code was waiting.  Another runner
    (``%autoawait trio``) is IPython's business: it gets the coroutine.
    """
    import asyncio

    __tracebackhide__ = True
    loop = _running_loop()
    running = loop is not None
    if loop is None:
        if shell.loop_runner is not async_helpers._asyncio_runner:
            return shell.loop_runner(coro)
        loop = async_helpers.get_asyncio_loop()
    from asyncio import tasks

    from .engine.interrupts import deferred_interrupts

    task = loop.create_task(coro)
    outer = tasks.current_task(loop) if running else None
    if outer is not None:
        tasks._leave_task(loop, outer)
    try:
        try:
            _until_done(loop, task, running)
        except BaseException as exc:
            if not task.done():
                task.cancel()
                with deferred_interrupts():
                    _until_done(loop, task, running, grace=CANCEL_GRACE)
            tb = exc.__traceback__
            if task.cancelled():
                try:
                    task.result()
                except asyncio.CancelledError as cancelled:
                    # The one raised where the user's code waited: this one (3.11+) or its context (3.10).
                    for candidate in (cancelled, cancelled.__context__):
                        if isinstance(candidate, asyncio.CancelledError) and _user_frames(candidate.__traceback__):
                            tb = candidate.__traceback__
                            break
            elif task.done():
                task.exception()  # retrieved: no "exception was never retrieved" log later
            raise exc.with_traceback(_user_frames(tb) or exc.__traceback__)  # noqa: B904 (its own cause kept)
    finally:
        if outer is not None:
            tasks._enter_task(loop, outer)
    try:
        return task.result()
    except BaseException as exc:
        raise exc.with_traceback(_user_frames(exc.__traceback__) or exc.__traceback__)  # noqa: B904


def _until_done(loop: Any, task: Any, running: bool, grace: float | None = None) -> None:
    """Turn ``loop`` until ``task`` is done (or, with ``grace``, at most that many seconds)."""
    import asyncio

    if not running:  # a loop at rest (terminal IPython between cells): run it, as IPython's runner does
        if grace is None:
            loop.run_until_complete(task)
        else:
            loop.run_until_complete(asyncio.wait([task], timeout=grace))
        return
    if grace is None:
        from .engine.interrupts import interrupts_between_turns

        with interrupts_between_turns(loop, task) as pending:
            while not task.done():
                loop._run_once()
                if pending.hit:
                    raise KeyboardInterrupt
        return
    deadline = loop.time() + grace
    wake = loop.call_at(deadline, lambda: None)  # select() returns by the deadline however idle the loop is
    try:
        while not task.done() and loop.time() < deadline:
            loop._run_once()
    finally:
        wake.cancel()


@functools.lru_cache(maxsize=1)
def _machinery() -> tuple[str, ...]:
    import asyncio

    return (
        os.path.dirname(asyncio.__file__) + os.sep,
        selectors.__file__,
        async_helpers.__file__,
        os.path.dirname(os.path.abspath(__file__)) + os.sep,  # ipymem itself
    )


def _user_frames(tb: Any) -> Any:
    """``tb`` with only the user's frames: none of asyncio's, selectors', IPython's loop runner's or ipymem's.

    IPython hides frames marked ``__tracebackhide__`` except the last one,
    so when Ctrl-C lands in the loop's ``select()``, the traceback must end
    at the user's ``await``, not in the machinery that was waiting for it.
    """
    kept = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_machinery()):
            kept.append(tb)
        tb = tb.tb_next
    out = None
    for entry in reversed(kept):
        out = types.TracebackType(out, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return out


def call_engine(measure: Callable[[], tuple[Any, BaseException | None]], run: Any) -> tuple[Any, BaseException | None]:
    """``measure()``; for top-level ``await`` under a running loop ipymem cannot drive, in a helper thread.

    That last case (a loop that is not asyncio's own, such as uvloop) runs
    the whole measurement in a helper thread (``ipymem-async``) on a fresh
    loop, so a per-thread tracer sees the user's code; the result says so.
    """
    if not getattr(run, "in_thread", False):
        return measure()

    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(measure()), name="ipymem-async", daemon=True)
    thread.start()
    thread.join()
    if not out:
        raise RuntimeError("ipymem: the measuring thread failed")
    result, error = out[0]
    note = "top-level await ran on a fresh event loop in a helper thread (the kernel's loop is not asyncio's own)"
    return dataclasses.replace(result, notes=(*result.notes, note)), error


def resolve_function(shell: Any, magic: str, expr: str, check: Callable[[Any], object]) -> Any:
    """Evaluate a ``-f`` expression in the user's namespace; ``UsageError`` unless ``check`` accepts it."""
    expected = "expected an expression naming a Python function, method, generator or coroutine function"
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise UsageError(f"%{magic}: -f {expr!r} is not a Python expression; {expected}") from None
    if any(isinstance(node, ast.Call) for node in ast.walk(tree)):
        raise UsageError(f"%{magic}: -f {expr!r} is a call; give the function itself (-f name, not -f name(...))")
    try:
        obj = eval(compile(tree, "<-f>", "eval"), shell.user_global_ns, shell.user_ns)
    except Exception as exc:
        raise UsageError(f"%{magic}: -f {expr!r}: {type(exc).__name__}: {exc}; {expected}") from None
    try:
        check(obj)
    except TypeError as exc:
        raise UsageError(f"%{magic}: -f {expr!r}: {exc}") from None
    return obj


def cell_files(shell: Any) -> dict[str, int]:
    """File name -> execution count of every cell IPython compiled (``Cell In[N]`` in tracebacks)."""
    return getattr(shell.compile, "_filename_map", {})


def current_cell_number(shell: Any) -> int:
    """N of the cell ``In[N]`` whose code is running, to name the code a magic compiles from it.

    ``execution_count`` is already N + 1 while cell N runs (IPython counts a
    cell before running it), so the number comes from the running cell's own
    frame up the stack; with no cell on the stack (a magic called from Python),
    it is the count of the next cell, as IPython would give it.
    """
    files = cell_files(shell)
    frame = sys._getframe(1)
    while frame is not None:
        number = files.get(frame.f_code.co_filename)
        if number is not None:
            return number
        frame = frame.f_back
    return getattr(shell, "execution_count", 0)


def cell_label(shell: Any, filename: str) -> str:
    """``Cell In[5]`` for a cell's file name, as IPython's tracebacks say; the name itself otherwise."""
    number = cell_files(shell).get(filename)
    return f"Cell In[{number}]" if number is not None else filename


def publish(text: str, html: str) -> None:
    """Show a report: HTML where the frontend renders it, text elsewhere (terminals, logs)."""
    from IPython.display import display

    display({"text/plain": text, "text/html": html}, raw=True)


# -- %memwho ---------------------------------------------------------------------


def output_bookkeeping(shell: Any) -> list[Any]:
    """IPython's other references to cached outputs: the display hook's ``_``/``__``/``___`` and the hidden copies.

    ``push(..., interactive=False)`` keeps each cache name's value in
    ``user_ns_hidden`` too; both go when the cache is cleared (``%reset out``).
    """
    refs = []
    hook = getattr(shell, "displayhook", None)
    for attr in ("_", "__", "___"):
        value = getattr(hook, attr, None)
        if value is not None and not (isinstance(value, str) and value == ""):
            refs.append(value)
    hidden = getattr(shell, "user_ns_hidden", {})
    for name, value in list(hidden.items()):
        if (name in ("_", "__", "___") or (name[1:].isdigit() and name[:1] == "_")) and value is not None:
            refs.append(value)
    return refs


def output_holders(shell: Any) -> dict[str, Any]:
    """References IPython keeps to past results that the user namespace does not show, by label.

    The output cache (``Out[12]``; its ``_12``, ``_``, ``__`` names are in the
    namespace already) and the execution results that keep the last value
    displayed.  Each is one real reference, which the census counts as a holder.
    """
    holders: dict[str, Any] = {}
    out = shell.user_ns.get("Out")
    if isinstance(out, dict):
        for n, value in list(out.items()):
            holders[f"Out[{n}]"] = value
    last = getattr(shell, "last_execution_result", None)
    if getattr(last, "result", None) is not None:
        holders["IPython's last execution result"] = last.result
    current = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    if current is not None and current is not last and getattr(current, "result", None) is not None:
        holders["IPython's current execution result"] = current.result
    return holders


class ProgressLine:
    """A one-line progress report on stderr for long walks, rewritten in place (``\\r``) and erased at the end."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = 0

    def __call__(self, p: Any) -> None:
        text = (
            f"%memwho: {p.objects:,} objects walked in {p.elapsed:.1f} s, "
            f"{p.names_walked} of {p.names_total} names (now {p.current})"
        )
        self.width = max(self.width, len(text))
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()

    def close(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
