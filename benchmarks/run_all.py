"""Run every benchmark in one go on this machine: ``make bench`` / ``python -m benchmarks.run_all``.

Order: throughput first (MONAI and scaling reuse its segpipe runs), then MONAI, the
memory run (its 32k² slide is the longest and the most important figure), incremental
before overhead (which reuses its empty-archive run), scaling, ingest, queries, the profile. Options are passed to every benchmark (``--quick``, ``--repeats``, ``--workdir``,
``--model``, ``--docs/--no-docs``); ``--only`` / ``--skip`` pick benchmarks. The summary
table and the machine go into docs/benchmarks.md. Exit status: 0 when every target is met,
1 when one fails, 2 when one could not be measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from benchmarks._harness import add_common_args, machine_info, machine_markdown, update_docs

ORDER = [
    "throughput",
    "monai",
    "memory",
    "incremental",
    "overhead",
    "scaling",
    "ingest_raw",
    "query",
    "profile",
]
MODULES = {name: f"bench_{name}" for name in ORDER} | {"profile": "profile_segment"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run_all",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(p)
    p.add_argument("--only", default="", help=f"Comma-separated subset of {','.join(ORDER)}.")
    p.add_argument("--skip", default="", help="Comma-separated benchmarks to leave out.")
    p.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="Start no further benchmark once this many minutes have passed (they are reported as not run).",
    )
    args = p.parse_args(argv)
    names = [
        n
        for n in ORDER
        if (not args.only or n in args.only.split(",")) and n not in args.skip.split(",")
    ]
    # pass every option on except --only / --skip (and their values)
    cleaned, skip_next = [], False
    for a in argv:
        if skip_next:
            skip_next = False
            continue
        if a in ("--only", "--skip", "--budget-min"):
            skip_next = True
            continue
        if a.startswith(("--only=", "--skip=", "--budget-min=")):
            continue
        cleaned.append(a)
    passthrough = cleaned
    t0 = time.perf_counter()
    results = []
    for name in names:
        if args.budget_min is not None and time.perf_counter() - t0 > 60 * args.budget_min:
            print(
                f"\n== {MODULES[name]}: not run, the {args.budget_min:g}-min budget is spent ==",
                flush=True,
            )
            results.append((name, 3))
            continue
        mod = importlib.import_module(f"benchmarks.{MODULES[name]}")
        code = mod.main(passthrough)
        results.append((name, code))
    total = time.perf_counter() - t0
    # merge with the benchmarks an earlier run_all of this work directory already ran
    store = args.workdir.resolve() / "results" / "summary.json"
    try:
        previous = json.loads(store.read_text())
    except (OSError, ValueError):
        previous = {}
    merged = {**previous, **{n: c for n, c in results}}
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(merged))
    results = [(n, merged[n]) for n in ORDER if n in merged]
    write = args.docs if args.docs is not None else not args.quick
    lines = ["| benchmark | verdict | exit |", "|---|---|---|"]
    verdict = {0: "PASS", 1: "FAIL", 2: "NOT MEASURED", 3: "not run (time budget)"}
    lines += [
        f"| `{MODULES[n]}` | {'done (no target)' if n == 'profile' and c == 0 else verdict.get(c, c)} | {c} |"
        for n, c in results
    ]
    cmd = "python -m benchmarks.run_all" + (" " + " ".join(argv) if argv else "")
    lines += ["", f"Whole suite: `{cmd}` (= `make bench`), {total / 60:.1f} min."]
    print("\n== summary ==")
    for n, c in results:
        print(f"  {MODULES[n]:<18} {verdict.get(c, c)}")
    print(f"  total {total / 60:.1f} min")
    if write:
        update_docs("summary", "\n".join(lines))
        update_docs("machine", machine_markdown(machine_info()))
    codes = [c for _, c in results]
    return 1 if 1 in codes else (2 if {2, 3} & set(codes) else 0)


if __name__ == "__main__":
    sys.exit(main())
