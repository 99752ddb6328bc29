"""Stage retries: transient errors (OSError, lost workers) are retried, bad input is not."""

from __future__ import annotations

import pytest

from segpipe.errors import ImageReadError

pytestmark = pytest.mark.usefixtures("prefect_server")


def _flaky(calls: list, exc: BaseException, fail_times: int):
    def thunk():
        calls.append(1)
        if len(calls) <= fail_times:
            raise exc
        return "ok"

    return thunk


def test_transient_error_is_retried():
    from prefect import flow

    from flows import run_stage

    calls: list = []

    @flow
    def one():
        return run_stage.with_options(retries=2, retry_delay_seconds=0)("ingest", "img", _flaky(calls, OSError("reset"), 2))

    assert one() == "ok" and len(calls) == 3


def test_bad_input_is_not_retried():
    from prefect import flow

    from flows import run_stage

    calls: list = []

    @flow
    def one():
        return run_stage.with_options(retries=3, retry_delay_seconds=0)(
            "ingest", "img", _flaky(calls, ImageReadError("x.tif: truncated"), 5))

    with pytest.raises(ImageReadError):
        one()
    assert len(calls) == 1
