"""What every benchmark shares: timing, medians, peak memory of a process tree, child runs,
the machine description and the writer of ``docs/benchmarks.md``.

Measurements run in child processes (``python -m benchmarks._child MODE ...``), one per
measured configuration, so that each starts from a clean interpreter and its peak memory
(RSS summed over the child and all its descendants, Dask nannies and workers included) is
not polluted by what ran before. The child prints its own timings (excluding interpreter
start-up and imports) as one JSON line; the parent samples the tree's memory in a thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "DOCS",
    "REPO",
    "BenchError",
    "ChildRun",
    "Outcome",
    "PeakRSS",
    "add_common_args",
    "finish",
    "machine_info",
    "machine_markdown",
    "median",
    "run_child",
    "tree_rss",
    "update_docs",
]

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
DEFAULT_WORKDIR = REPO / "bench-work"
RESULT_TAG = "BENCH-RESULT "
MB = 1024 * 1024


class BenchError(RuntimeError):
    """A measurement could not be made (a child failed, a segpipe part is missing)."""


def median(values: Iterable[float]) -> float:
    """Median of the measured values (the figure every benchmark reports)."""
    vals = [float(v) for v in values]
    if not vals:
        raise BenchError("median of no measurements")
    return float(statistics.median(vals))


# ---- memory ------------------------------------------------------------------------------
def tree_rss(proc: psutil.Process) -> int:
    """RSS in bytes of ``proc`` plus all its descendants (processes that vanish are skipped).

    Summed RSS counts pages shared between processes (e.g. libraries after a fork) once per
    process: it overstates the machine's real use a little, the same way for every run.
    """
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class Sampler:
    """Calls :meth:`sample` every ``interval`` s on a background thread while in a ``with``
    block (once more on entry). Subclasses implement :meth:`sample`."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one sample now."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakRSS(Sampler):
    """Sample the summed RSS of a process tree in a background thread; keep the peak.

    >>> with PeakRSS() as mem:  # doctest: +SKIP
    ...     work()
    >>> mem.peak  # bytes
    """

    def __init__(self, pid: int | None = None, interval: float = 0.05) -> None:
        super().__init__(interval)
        self.proc = psutil.Process(pid if pid is not None else os.getpid())
        self.series: list[tuple[float, int]] = []  # (time.time(), summed RSS)
        self.peak = 0
        self.n_samples = 0
        self.max_procs = 0

    def sample(self) -> None:
        """Take one sample now."""
        try:
            n = 1 + len(self.proc.children(recursive=True))
        except psutil.Error:
            n = 0
        self.max_procs = max(self.max_procs, n)
        rss = tree_rss(self.proc)
        self.series.append((time.time(), rss))
        self.peak = max(self.peak, rss)
        self.n_samples += 1


# ---- child runs --------------------------------------------------------------------------
@dataclass
class ChildRun:
    """One measured child process: its JSON result, wall time and peak tree memory."""

    result: dict[str, Any]
    wall_s: float
    peak_rss: int
    n_procs: int
    log: Path
    series: list[tuple[float, int]] = field(default_factory=list)

    def peak_between(self, t0: float, t1: float) -> int:
        """Peak summed RSS sampled between wall-clock times ``t0`` and ``t1`` (``time.time()``)."""
        return max((rss for t, rss in self.series if t0 <= t <= t1), default=0)


def run_child(
    mode: str,
    args: Sequence[str],
    workdir: Path,
    *,
    timeout: float = 3600,
    env: dict[str, str] | None = None,
    label: str | None = None,
) -> ChildRun:
    """Run ``python -m benchmarks._child MODE ARGS`` and measure it.

    The child's stderr goes to ``WORKDIR/logs/<label>.log``; its last stdout line tagged
    ``BENCH-RESULT`` is the result. Raises :class:`BenchError` (with the log's tail) when
    the child fails.
    """
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    label = label or mode
    log = logs / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.log"
    cmd = [sys.executable, "-m", "benchmarks._child", mode, *map(str, args)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    t0 = time.perf_counter()
    with open(log, "w") as err:
        err.write("$ " + shlex.join(cmd) + "\n")
        err.flush()
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, env=full_env
        )
        with PeakRSS(proc.pid) as mem:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc.pid)
                proc.communicate()
                raise BenchError(f"{label}: timed out after {timeout:.0f} s (log {log})") from None
    wall = time.perf_counter() - t0
    results = [line[len(RESULT_TAG) :] for line in out.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not results:
        tail = log.read_text(errors="replace").strip().splitlines()[-12:]
        raise BenchError(
            f"{label}: child exited {proc.returncode}; log {log}:\n    " + "\n    ".join(tail)
        )
    return ChildRun(json.loads(results[-1]), wall, mem.peak, mem.max_procs, log, mem.series)


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def emit(result: dict[str, Any]) -> None:
    """Print a child's result line (used by :mod:`benchmarks._child`)."""
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)


# ---- machine -----------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: cores, RAM, CPU, torch, GPU, versions."""
    import torch

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)",
        "os": f"{platform.system()} {platform.release()}",
        "load": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    for mod in ("segpipe", "numpy", "dask", "distributed", "zarr", "tifffile", "monai"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # not installed / no version
            info[mod] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=20
        ).stdout.strip()
        info["commit"] = commit + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    return info


def machine_markdown(info: dict[str, Any]) -> str:
    """The machine as a markdown list."""
    libs = ", ".join(
        f"{k} {info[k]}" for k in ("numpy", "dask", "distributed", "zarr", "tifffile", "monai")
    )
    return "\n".join(
        [
            f"* measured {info['date']}, segpipe {info['segpipe']} (commit {info['commit']})",
            f"* CPU: {info['cpu']}, `nproc` = {info['nproc']}, RAM {info['ram_gib']} GiB",
            f"* GPU: {info['gpu']}",
            f"* Python {info['python']}, torch {info['torch']} ({info['torch_threads']} intra-op threads), {libs}",
            f"* {info['os']}; load average (1, 5, 15 min) when written: {info.get('load', '?')}",
        ]
    )


# ---- outcome, docs -----------------------------------------------------------------------
@dataclass
class Outcome:
    """What one benchmark found: a table, the headline ratio, the target and the verdict."""

    name: str
    title: str
    header: list[str]
    rows: list[list[Any]]
    ratio: float | None
    ratio_label: str
    target: str
    passed: bool | None  # None: could not be measured
    command: str
    notes: list[str] = field(default_factory=list)
    quick: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.extra.get("informational"):
            return "done (no target)"
        if self.passed is None:
            return "NOT MEASURED"
        return "PASS" if self.passed else "FAIL"

    def markdown(self) -> str:
        """The section body written into docs/benchmarks.md."""
        lines = [
            f"Command: `{self.command}`"
            + (" (quick smoke run: small images, 1 repeat)" if self.quick else ""),
            "",
        ]
        if self.rows:
            lines.append("| " + " | ".join(self.header) + " |")
            lines.append("|" + "---|" * len(self.header))
            lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in self.rows]
            lines.append("")
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}"
        lines.append(f"**{self.ratio_label}: {ratio}** — target {self.target} — **{self.verdict}**")
        if self.notes:
            lines.append("")
            lines += [f"* {n}" for n in self.notes]
        return "\n".join(lines)

    def print(self) -> None:
        """Print the result to the terminal."""
        print(f"\n== {self.title} ==")
        if self.rows:
            widths = [
                max(len(_cell(r[i])) for r in [self.header, *self.rows])
                for i in range(len(self.header))
            ]
            for r in [self.header, *self.rows]:
                print("  " + "  ".join(_cell(v).ljust(w) for v, w in zip(r, widths, strict=False)))
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.2f}"
        print(f"  {self.ratio_label}: {ratio}   target {self.target}   {self.verdict}")
        for n in self.notes:
            print(f"  - {n}")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN
            return "—"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _markers(section: str) -> tuple[str, str]:
    return f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"


def update_docs(section: str, text: str, path: Path = DOCS) -> None:
    """Replace the marked section ``section`` of docs/benchmarks.md with ``text``.

    The section lies between ``<!-- bench:<section>:start -->`` and
    ``<!-- bench:<section>:end -->``; when the markers are missing the section is appended.
    Everything outside the markers (the explanations) is left as it is.
    """
    start, end = _markers(section)
    doc = path.read_text() if path.exists() else "# segpipe benchmarks\n"
    body = f"{start}\n{text.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(doc):
        doc = pattern.sub(lambda _m: body, doc)
    else:
        doc = doc.rstrip() + "\n\n" + body + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(doc)
    os.replace(tmp, path)


# ---- command line ------------------------------------------------------------------------
def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--quick``, ``--repeats``, ``--workdir``, ``--model``, ``--docs/--no-docs``."""
    p.add_argument("--quick", action="store_true", help="Smoke test: small images, 1 repeat.")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="Runs per configuration (default 3, 1 with --quick); the median is reported.",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("SEGPIPE_BENCH_WORKDIR", DEFAULT_WORKDIR)),
        help="Where test data and results go (default ./bench-work, git-ignored; data is reused between runs).",
    )
    p.add_argument(
        "--model",
        default="auto",
        help="auto (nuclei when its weights are installed, else a light U-Net with random weights built from the nuclei card), classical, or a name / weights path.",
    )
    p.add_argument(
        "--docs",
        dest="docs",
        action="store_true",
        default=None,
        help="Write the figures into docs/benchmarks.md (default: yes, except with --quick).",
    )
    p.add_argument("--no-docs", dest="docs", action="store_false")
    return p


def repeats(args: argparse.Namespace) -> int:
    """Repeats asked for: ``--repeats``, else 1 with ``--quick``, else 3."""
    if args.repeats is not None:
        return max(1, int(args.repeats))
    return 1 if args.quick else 3


def finish(outcome: Outcome, args: argparse.Namespace) -> int:
    """Print the outcome, write docs (full runs, or ``--docs``), return the exit status.

    0 = target met, 1 = target failed, 2 = could not be measured.
    """
    outcome.print()
    write = args.docs if args.docs is not None else not args.quick
    if write:
        update_docs(outcome.name, outcome.markdown())
        update_docs("machine", machine_markdown(machine_info()))
        print(f"  (written to {DOCS.relative_to(REPO)}, section {outcome.name})")
    if outcome.passed is None:
        return 2
    return 0 if outcome.passed else 1


def cli_main(
    module: str,
    doc: str | None,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Outcome],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse the common and the benchmark's own options, run it, print, write docs.

    A measurement that fails (a child error, a segpipe part missing) is reported as
    NOT MEASURED with the reason, exit status 2.
    """
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    add_args(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    args.command = " ".join([f"python -m benchmarks.{module}", *map(shlex.quote, argv)])
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.module = module
    t0 = time.perf_counter()
    try:
        outcome = run(args)
    except (BenchError, ImportError, AttributeError, OSError, ValueError, RuntimeError) as exc:
        title = (doc or module).strip().splitlines()[0]
        outcome = not_measured(
            module.removeprefix("bench_"),
            title,
            args.command,
            f"not measured: {type(exc).__name__}: {exc}",
            args.quick,
        )
    outcome.extra["seconds"] = time.perf_counter() - t0
    args.outcome = outcome
    code = finish(outcome, args)
    print(f"  ({module}: {outcome.extra['seconds']:.0f} s)", flush=True)
    return code


def not_measured(name: str, title: str, command: str, reason: str, quick: bool) -> Outcome:
    """The outcome of a benchmark whose measurement failed (reason in the notes)."""
    return Outcome(name, title, [], [], None, "ratio", "—", None, command, [reason], quick)


def save_json(workdir: Path, name: str, data: dict[str, Any]) -> Path:
    """Keep a benchmark's raw measurements (``WORKDIR/results/<name>.json``)."""
    path = workdir / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def load_json(workdir: Path, name: str) -> dict[str, Any] | None:
    """Raw measurements saved by :func:`save_json`, or None."""
    path = workdir / "results" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def mb(nbytes: float) -> float:
    """Bytes → MiB."""
    return float(nbytes) / MB
