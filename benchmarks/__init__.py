"""segpipe benchmarks: segpipe side by side with its alternatives, in one run, on one machine.

Run them all with ``make bench`` (``python -m benchmarks.run_all``), or one with
``python -m benchmarks.bench_throughput`` etc.; ``--quick`` is a smoke test (small images,
one repeat). Each prints its ratio and exits non-zero when its target fails. Figures and
the machine they were measured on are written into ``docs/benchmarks.md``. None of this
is part of the unit test suite.
"""

__all__: list[str] = []
