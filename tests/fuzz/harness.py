"""The fuzz harness: cases, their verdicts, and the worker subprocesses that run them.

A :class:`Case` is one call of the public surface with one argument mutated (or a valid but unusual call).
Its verdict (:func:`judge`): it passes if the call either succeeds with a correct result (``check``, when
the call may succeed) or raises TypeError/ValueError (the project's own errors derive from them; OSError
subclasses where ``errors`` says so, for missing files) whose message names the argument (one of
``names``). It fails on any other exception class (ZeroDivisionError, IndexError, KeyError, RecursionError,
MemoryError, a numba TypingError...), an error that names no argument, an invalid call that returns
(``accepted``), a wrong result, a valid call refused, and, seen from the parent, a signal or a hang.

Cases run in batches in one worker subprocess (``python -m tests.fuzz.harness SURFACE``): importing numba and
loading the cached kernels takes seconds, too long to pay per case. The worker writes a JSON line when a
case starts and one with its verdict, flushed; when it dies by a signal, the started case is run again
alone in a fresh worker to pin it, and the rest of the batch continues in another. Workers run under an
address-space limit (``RLIMIT_AS``), so an unbounded allocation fails the case instead of the machine.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: surface -> the module whose ``cases()`` lists its cases
SURFACES = {
    "kernels": "tests.fuzz.cases_kernels",
    "layers": "tests.fuzz.cases_layers",
    "models": "tests.fuzz.cases_models",
    "loaders": "tests.fuzz.cases_loaders",
    "cli": "tests.fuzz.cases_cli",
    "api": "tests.fuzz.cases_api",
    "selftest": "tests.fuzz.cases_selftest",  # known verdicts, for test_harness.py
}

ADDRESS_LIMIT = 3 << 30  # bytes of address space a worker may map
FILE_LIMIT = 256 << 20  # bytes a worker may write to one file
CASE_TIMEOUT = 300.0  # seconds without a verdict before the worker is killed (the case hangs); a kernel whose
# source changed recompiles on its first call, which takes a minute or more on a busy machine

#: Failure classes, in report order.
CLASSES = ("signal", "timeout", "exception", "unnamed", "accepted", "wrong-result", "refused", "cli-exit",
           "cli-format", "harness")


@dataclasses.dataclass
class Case:
    """One call: ``call()`` runs it and returns what ``check`` reads.

    ``expect``: ``"error"`` (invalid: must raise), ``"ok"`` (valid: must succeed and pass ``check``) or
    ``"either"`` (valid but unusual: an error naming the argument, or success passing ``check``).
    ``names``: an error must name one of them (see :func:`names_in`; ``("*",)``: any message will do).
    ``errors``: the accepted classes.
    ``fix``: the file that should fix a failure of this case (for the report).
    """

    id: str
    call: Callable[[], object]
    expect: str = "error"
    names: tuple[str, ...] = ()
    check: Callable[[object], str | None] | None = None
    errors: tuple[type, ...] = (TypeError, ValueError)
    fix: str = ""


class HarnessError(Exception):
    """A case could not be built: a fault of the harness, reported as such."""


# ------------------------------------------------------------------------------------------------ verdicts

# A name followed by one of these names it ("x: expected", "LlamaConfig.dim: ...", "ids[3]", "eps=0").
_AFTER = r"(?:\s?[:=\[)]|\s\(|\s+(?:must|is|are|has|have|should|expected|needs|exceeds?|cannot|does|holds|of shape))"
# ... and so does a name after one of these nouns ("unknown setting(s) nope", "missing tensor 'w'").
_BEFORE = r"(?:field|setting|key|option|argument|tensor|parameter)(?:\(s\))?:?\s+['\"`]?"


def names_in(message: str, names) -> bool:
    """Whether ``message`` names one of ``names``: a file name (with a dot or a slash) or an option (``--x``)
    anywhere; an argument name quoted ('x', `x`) or followed by ':', '=', '[' or a verb ("x must ...")."""
    for n in names:
        if not n:
            continue
        if n.startswith("-") or "." in n or "/" in n:
            end = r"(?![\w-])" if re.match(r"[\w-]", n[-1]) else ""
            if re.search(re.escape(n) + end, message):
                return True
            continue
        w = re.escape(n)
        if re.search(rf"(?<![\w.-]){w}{_AFTER}", message) or re.search(rf"\.{w}{_AFTER}", message):
            return True
        if re.search(rf"['\"`]{w}['\"`]", message) or re.search(rf"{_BEFORE}{w}(?![\w-])", message):
            return True
    return False


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


def _fail(kind: str, detail: str) -> dict:
    return {"ok": False, "kind": kind, "detail": _short(detail)}


def _error_verdict(case: Case, e: BaseException) -> dict:
    kind = type(e)
    what = f"{kind.__name__}: {e}"
    if isinstance(e, HarnessError):
        return _fail("harness", what)
    if kind.__module__.split(".")[0] == "numba" or not isinstance(e, case.errors):
        return _fail(f"exception:{kind.__name__}", what + " | " + _where(e))
    if case.expect == "ok":
        return _fail("refused", what)
    if case.names != ("*",) and not names_in(str(e), case.names):
        return _fail("unnamed", f"{what} (should name one of {', '.join(map(repr, case.names))})")
    return {"ok": True, "kind": "", "detail": _short(what, 120)}


def _where(e: BaseException) -> str:
    """The innermost frame of the project where the exception was raised."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "qorus_jit" in f.filename]
    if not frames:
        return "raised outside qorus_jit"
    f = frames[-1]
    return f"at {f.filename[f.filename.find('qorus_jit'):]}:{f.lineno}"


def judge(case: Case) -> dict:
    """Run ``case`` and return its verdict ``{"ok", "kind", "detail"}``."""
    try:
        result = case.call()
    except (Exception, SystemExit) as e:  # MemoryError, RecursionError and SystemExit are verdicts too
        return _error_verdict(case, e)
    if case.expect == "error":
        return _fail("accepted", f"returned {_short(repr(result), 120)} without an error")
    try:
        problem = case.check(result) if case.check else None
    except Exception as e:  # a check that cannot read the result: the result is not what it should be
        problem = f"check failed: {type(e).__name__}: {e}"
    if isinstance(problem, tuple):  # a check that knows the class of its failure
        return _fail(*problem)
    if problem:
        return _fail("wrong-result", problem)
    return {"ok": True, "kind": "", "detail": "returned"}


# -------------------------------------------------------------------------------------------------- worker


def load_cases(surface: str) -> dict[str, Case]:
    """The cases of ``surface`` by id (ids are unique)."""
    cases = importlib.import_module(SURFACES[surface]).cases()
    by_id: dict[str, Case] = {}
    for c in cases:
        if c.id in by_id:
            raise ValueError(f"duplicate case id {c.id}")
        by_id[c.id] = c
    return by_id


def _limit_resources() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_LIMIT, ADDRESS_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def worker(surface: str) -> None:
    """Read ``{"only": [...] | null, "skip": [...]}`` from stdin; run the cases of ``surface`` in order,
    writing ``{"total": n}``, then per case ``{"start": id}`` and ``{"id": id, verdict...}`` lines."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the library prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    faulthandler.enable(sys.stderr)
    _limit_resources()
    req = json.loads(sys.stdin.read())
    cases = load_cases(surface)
    ids = req["only"] if req.get("only") is not None else list(cases)
    skip = set(req.get("skip", ()))
    ids = [i for i in ids if i not in skip]
    proto.write(json.dumps({"total": len(cases)}) + "\n")
    for cid in ids:
        proto.write(json.dumps({"start": cid, "fix": cases[cid].fix}) + "\n")
        proto.flush()
        t0 = time.perf_counter()
        v = judge(cases[cid])
        v.update(id=cid, fix=cases[cid].fix, seconds=round(time.perf_counter() - t0, 4))
        proto.write(json.dumps(v) + "\n")
        proto.flush()


# -------------------------------------------------------------------------------------------------- parent


class _Worker:
    """One worker subprocess and a thread that reads its protocol lines into a list."""

    def __init__(self, surface: str, tmp: Path, request: dict, n: int):
        self.err_path = tmp / f"worker-{n}.err"
        env = {**os.environ, "FUZZ_TMP": str(tmp), "QORUS_CACHE_DIR": str(tmp / "token-cache"),
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "PYTHONFAULTHANDLER": "1"}
        work = tmp / "cwd"
        work.mkdir(exist_ok=True)
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzz.harness", surface], cwd=work, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         start_new_session=True)
        self.lines: list[dict] = []
        self.cond = threading.Condition()
        self.proc.stdin.write(json.dumps(request))
        self.proc.stdin.close()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(json.loads(line))
                self.cond.notify_all()
        with self.cond:
            self.lines.append({"eof": True})
            self.cond.notify_all()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stderr_tail(self, n: int = 1200) -> str:
        text = self.err_path.read_text(errors="replace")
        return text[-n:]


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _run_worker(surface, tmp, request, n, timeout):
    """Run one worker to its end. Returns (total, verdicts by id, the started case without a verdict or None,
    why the worker ended early ('' if it finished))."""
    w = _Worker(surface, tmp, request, n)
    verdicts, started, total, i = {}, None, None, 0
    fixes = {}
    last = time.monotonic()
    while True:
        with w.cond:
            while i >= len(w.lines) and time.monotonic() - last < timeout:
                w.cond.wait(1.0)
            if i >= len(w.lines):
                w.kill()
                return total, verdicts, (started, fixes.get(started, "")), "timeout"
            msg = w.lines[i]
        i += 1
        last = time.monotonic()
        if "eof" in msg:
            break
        if "total" in msg:
            total = msg["total"]
        elif "start" in msg:
            started = msg["start"]
            fixes[started] = msg.get("fix", "")
        else:
            verdicts[msg["id"]] = msg
            started = None
    code = w.proc.wait()
    if started is None and code == 0:
        return total, verdicts, None, ""
    why = f"{_exit_text(code)}; {_short(w.stderr_tail(), 900)}"
    return total, verdicts, None if started is None else (started, fixes.get(started, "")), why


def run_surface(surface: str, timeout: float = CASE_TIMEOUT) -> tuple[int, list[dict], dict]:
    """Run every case of ``surface``; returns (number of cases, failing verdicts, stats)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"qorus-fuzz-{surface}-"))
    done: dict[str, dict] = {}
    stats = {"workers": 0, "pinned": 0}
    total = None
    t0 = time.perf_counter()
    while True:
        stats["workers"] += 1
        n_total, verdicts, started, why = _run_worker(surface, tmp, {"only": None, "skip": list(done)},
                                                      stats["workers"], timeout)
        total = n_total if n_total is not None else total
        done.update(verdicts)
        if not why:
            break
        if started is None:  # the worker died outside any case (import, case listing): nothing more to run
            done[f"{surface}/<worker>"] = {"id": f"{surface}/<worker>", "ok": False, "kind": "harness",
                                           "detail": why}
            break
        started, fix = started
        if why == "timeout":
            done[started] = {"id": started, "ok": False, "kind": "timeout", "fix": fix,
                             "detail": f"no verdict within {timeout:.0f} s"}
            continue
        # Pin the crash: the started case again, alone in a fresh worker.
        stats["workers"] += 1
        stats["pinned"] += 1
        _, alone, again, why_alone = _run_worker(surface, tmp, {"only": [started]}, stats["workers"], timeout)
        if again is not None and again[0] == started:
            done[started] = {"id": started, "ok": False, "kind": "signal", "fix": fix, "detail": f"alone: {why_alone}"}
        else:
            v = alone.get(started, {})
            done[started] = {"id": started, "ok": False, "kind": "signal", "fix": fix,
                             "detail": f"in its batch: {why}; alone it gave {v.get('kind') or 'a pass'} "
                                       f"{v.get('detail', '')} (an earlier case of the batch corrupted memory?)"}
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    if os.environ.get("FUZZ_KEEP"):  # the cases' files, for a look at a failure
        stats["tmp"] = str(tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    timed = sorted(done.values(), key=lambda v: -v.get("seconds", 0))
    stats["slowest"] = [(v["id"], v.get("seconds")) for v in timed[:8]]
    stats["case_seconds"] = round(sum(v.get("seconds", 0) for v in done.values()), 1)
    failures = [v for v in done.values() if not v["ok"]]
    n = total if total is not None else len(done)
    return n, failures, stats


def report(surface: str, n: int, failures: list[dict], stats: dict) -> str:
    """The failing cases grouped by class, one line each (with the file that should fix it)."""
    lines = [f"fuzz {surface}: {n} cases, {len(failures)} failing ({stats.get('seconds', '?')} s, "
             f"{stats.get('workers', '?')} worker(s))"]
    for kind in sorted({f["kind"] for f in failures}, key=lambda k: (CLASSES.index(k.split(":")[0]), k)):
        group = sorted((f for f in failures if f["kind"] == kind), key=lambda f: f["id"])
        lines.append(f"  [{kind}] {len(group)}")
        for f in group:
            where = f" -> {f['fix']}" if f.get("fix") else ""
            lines.append(f"    {f['id']}{where}: {f['detail']}")
    return "\n".join(lines)


if __name__ == "__main__":  # run through the package module, so that its classes are the ones cases use
    from tests.fuzz import harness

    harness.worker(sys.argv[1])
