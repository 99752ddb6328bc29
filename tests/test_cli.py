"""The `segpipe` command: help texts, exit codes, query formats, models, show, the lock."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from segpipe import tables
from segpipe.cli import app
from segpipe.config import load_config
from segpipe.lock import ResultsLock
from segpipe.pipeline import ModelRef, discover_items, process_image

SEGPIPE = str(Path(sys.executable).parent / "segpipe")
COMMANDS = ["run", "demo", "ingest", "synth", "query", "serve", "train", "evaluate", "show", "models"]
runner = CliRunner()


def segpipe(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([SEGPIPE, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> str:
    """A results folder with one segmented image (no Prefect, in-process engine)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "archive").mkdir()
    rng = np.random.default_rng(0)
    img = np.full((300, 300), 20, np.uint8)
    for cy, cx in rng.integers(20, 280, (8, 2)):
        img[cy - 5:cy + 5, cx - 5:cx + 5] = 200
    tifffile.imwrite(root / "archive" / "one.tif", img)
    out = str(root / "results")
    tables.init_results(out)
    cfg = load_config(None, {"infer.model": "classical", "ingest.chunk": 256, "ingest.min_size": 128})
    item = discover_items(str(root / "archive"), cfg)[0]
    assert process_image(item, item.image_id, out, ModelRef("classical"), cfg, None, "run-1").status == "done"
    return out


def test_top_level_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help_with_example(command):
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example: segpipe " + command in " ".join(res.output.split())


def test_models_lists_builtins():
    from segpipe.models import builtin_card, is_installed

    res = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for name in ("nuclei", "defects", "classical"):
        assert name in res.output
    if is_installed("defects"):  # the installed card's halo (context bands: 128), not the registry's 48
        row = next(line for line in res.output.splitlines() if "│ defects" in line)
        assert f"│ {builtin_card('defects').halo} " in row and builtin_card("defects").halo != 48


def test_query_formats(results, tmp_path):
    res = segpipe("query", results, "select count(*) as n from regions", "--format", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["n"] == 8
    res = segpipe("query", results, "select image_id, status from images", "--format", "csv")
    assert res.returncode == 0 and res.stdout.splitlines() == ["image_id,status", "one,done"]
    out = tmp_path / "r.parquet"
    res = segpipe("query", results, "select * from regions", "--format", "parquet", "--output", str(out))
    assert res.returncode == 0 and out.stat().st_size > 0


def test_bad_sql_exits_nonzero_with_duckdb_message(results):
    res = segpipe("query", results, "select nonsense from nowhere")
    assert res.returncode == 1
    assert "nowhere" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_not_a_results_folder(tmp_path):
    res = segpipe("query", str(tmp_path), "select 1")
    assert res.returncode == 1 and "not a segpipe results folder" in res.stderr


def test_usage_errors_exit_2():
    assert segpipe("run").returncode == 2
    assert segpipe("query", "only-one-arg").returncode == 2
    assert segpipe("show", "r", "i", "--region", "1,2,3").returncode == 2


def test_config_error_one_line_exit_1(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[infer]\nbacth = 2\n")
    res = segpipe("run", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(bad))
    assert res.returncode == 1
    assert res.stderr.strip() == f"error: {bad}: unknown key 'infer.bacth' (valid keys here: model, batch, halo, device)"


def test_run_refuses_results_in_use(results, tmp_path):
    with ResultsLock(results, owner="run-nightly", lease_s=30):
        res = segpipe("run", str(tmp_path), "--out", results)
    assert res.returncode == 1
    assert "is in use by run run-nightly" in res.stderr and "Traceback" not in res.stderr


def test_show_writes_png(results, tmp_path):
    png = tmp_path / "o.png"
    res = runner.invoke(app, ["show", results, "one", "--out", str(png), "--region", "0,0,128,128"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    assert Image.open(png).size == (128, 128)
    jpg = tmp_path / "o.jpg"  # the extension picks the format
    res = runner.invoke(app, ["show", results, "one", "--out", str(jpg), "--region", "0,0,128,128"])
    assert res.exit_code == 0, res.output
    assert Image.open(jpg).format == "JPEG"


def test_evaluate_without_truth_is_clear(results, tmp_path):
    res = segpipe("evaluate", results, "--truth", str(tmp_path / "missing"))
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_evaluate_shows_the_metrics_of_the_task(results, tmp_path):
    """Instance truth: AP, F1, splits and merges per image; no empty semantic columns."""
    import zarr

    from segpipe.io import zarr_store

    labels = zarr.open_group(store=zarr_store(f"{results}/images/one.ome.zarr", read_only=True), mode="r")
    truth = tmp_path / "truth"
    truth.mkdir()
    tifffile.imwrite(truth / "one.labels.tif", np.asarray(labels["labels/classical/0"][...]))
    res = segpipe("evaluate", results, "--truth", str(truth))
    assert res.returncode == 0, res.stderr[-2000:]
    header = res.stdout.split("per image", 1)[1].split("\n1 row", 1)[0]
    assert "ap_0.5" in header and "n_split" in header and "iou_" not in header and "NULL" not in header
    assert "ap_0.5: 1" in res.stdout  # the run's own labels as truth


def test_evaluate_reads_the_folder_it_is_given(results, tmp_path):
    """The images table records where the run wrote (relative to the run's directory when it
    was given a relative path); a copied or moved results folder is read where it is now."""
    import shutil

    import zarr

    from segpipe.train._evaluate import evaluate_run

    moved = tmp_path / "moved"
    shutil.copytree(results, moved)
    labels = zarr.open_array(str(moved / "images" / "one.ome.zarr" / "labels" / "classical" / "0"), mode="r+")
    (tmp_path / "truth").mkdir()
    tifffile.imwrite(tmp_path / "truth" / "one.labels.tif", np.asarray(labels[...]))
    labels[...] = 0  # the copy's labels now find nothing; the original's are unchanged
    (row,) = evaluate_run(moved, tmp_path / "truth", None)["images"]
    assert row["n_pred"] == 0 and row["n_true"] > 0


def test_evaluate_takes_a_small_uint16_mask_as_instances_for_an_object_model(results, tmp_path):
    """A uint16 instance mask with 3 objects or fewer was scored as defect classes."""
    import zarr

    from segpipe.train._evaluate import evaluate_run

    labels = np.asarray(zarr.open_array(f"{results}/images/one.ome.zarr/labels/classical/0", mode="r")[...])
    truth = np.where(labels <= 2, labels, 0).astype(np.uint16)  # two of the run's objects
    (tmp_path / "truth").mkdir()
    tifffile.imwrite(tmp_path / "truth" / "one.labels.tif", truth)
    (row,) = evaluate_run(results, tmp_path / "truth", None)["images"]
    assert row["task"] == "instance" and row["n_true"] == 2


def test_progress_reporters():
    import io

    from rich.console import Console

    from segpipe.cli._progress import LineReporter, RichReporter
    from segpipe.pipeline import ImageOutcome

    buf = io.StringIO()
    lines = LineReporter(Console(file=buf, width=200))
    lines.run_started("run-1", 1, 2)
    lines.image_started("a")
    for i in range(1, 101):
        lines.chunks("a", i, 100)
    lines.image_finished(ImageOutcome("a", "/x/a.tif", "done", None, 7, 1.5))
    text = buf.getvalue().splitlines()
    assert text[0] == "run run-1: 1 image(s) to segment, 2 unchanged"
    assert sum("chunks" in t for t in text) == 4 and "a: 100/100 chunks" in text  # throttled to quarters
    assert text[-1] == "a: done, 7 regions in 1.5 s [1/1]"

    buf = io.StringIO()
    with RichReporter(Console(file=buf, force_terminal=True, width=100)) as bars:
        bars.run_started("run-1", 2, 0)
        bars.image_started("a")
        bars.chunks("a", 5, 10)
        bars.image_finished(ImageOutcome("a", "/x/a.tif", "failed", "a.tif: truncated", 0, 0.1))
        # rich markup in a path (a folder "a[", a file "x].png") is text, not a closing tag
        bars.image_finished(ImageOutcome("b", "/a[/x].png", "failed", "/a[/x].png: truncated", 0, 0.1))
    assert "images" in buf.getvalue() and "a: failed: a.tif: truncated" in buf.getvalue()
    assert "b: failed: /a[/x].png: truncated" in buf.getvalue()


def test_ingest_command(tmp_path, dask_client):
    (tmp_path / "arc").mkdir()
    tifffile.imwrite(tmp_path / "arc" / "x.tif", np.zeros((200, 300), np.uint8))
    res = segpipe("ingest", str(tmp_path / "arc"), "--out", str(tmp_path / "res"),
                  "--cluster", dask_client.scheduler.address)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("x: ") and (tmp_path / "res" / "images" / "x.ome.zarr" / "zarr.json").exists()


def test_ingest_keeps_images_that_have_results(results):
    """Re-ingesting would drop the labels that the image's visible regions belong to."""
    from pathlib import Path

    labels = Path(results) / "images" / "one.ome.zarr" / "labels" / "classical" / "zarr.json"
    before = labels.read_bytes()
    res = segpipe("ingest", str(Path(results).parent / "archive"), "--out", results)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "one: kept (it has the results of run run-1)"
    assert labels.read_bytes() == before and not (Path(results) / ".segpipe.lock").exists()  # released


def test_serve_needs_a_prefect_server(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_PROFILES_PATH"] = str(tmp_path / "profiles.toml")  # no profile with an API URL
    res = segpipe("serve", str(tmp_path), "--out", str(tmp_path / "r"), env=env)
    assert res.returncode == 1 and "needs a Prefect server" in res.stderr


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--cron", "61 * * * *"], "is not a valid cron expression"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--source-missing"], "does not exist"),
    ],
)
def test_serve_checks_what_a_nightly_run_would_stop_at(tmp_path, args, error):
    """Each is one line before "serving" (it used to fail every night, with a traceback)."""
    import os

    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never contacted: checks fail first
    source = str(tmp_path / ("missing" if args == ["--source-missing"] else ""))
    args = [] if args == ["--source-missing"] else args
    res = segpipe("serve", source, "--out", str(tmp_path / "r"), *args, env=env)
    assert res.returncode == 1 and error in res.stderr, res.stderr
    assert "serving" not in res.stdout and "Traceback" not in res.stderr


def test_an_archive_without_images_is_a_note(tmp_path):
    """Not an error (an archive may be empty yet), but said: a mistyped --include looks the same."""
    (tmp_path / "empty").mkdir()
    res = segpipe("run", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--model", "classical")
    assert res.returncode == 0, res.stderr
    assert "note: no images found in" in res.stdout and "0 done" in res.stdout
    res = runner.invoke(app, ["query", str(tmp_path / "r"), " "])
    assert res.exit_code == 1 and "no SQL given" in str(res.exception)


def test_results_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    res = segpipe("run", str(tmp_path), "--out", str(tmp_path / "file" / "results"), "--model", "classical")
    assert res.returncode == 1 and "is not a folder" in res.stderr and "NotADirectoryError" not in res.stderr


def test_train_bad_recipe_is_one_line(tmp_path):
    res = segpipe("train", "--recipe", "bogus", "--out", str(tmp_path / "m.safetensors"))
    assert res.returncode == 1 and "bogus" in res.stderr and "Traceback" not in res.stderr
    res = segpipe("train", "--recipe", "nuclei", "--out", str(tmp_path / "m.safetensors"), "--lr", "fast")
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert "--lr" in res.stderr and "usage" not in res.stderr


def test_train_takes_every_option_of_the_training_module(tmp_path):
    """`segpipe train` passes options it does not declare (here --init: fine-tuning) through."""
    weights = Path(__file__).parents[1] / "segpipe" / "models" / "weights" / "nuclei.safetensors"
    if not weights.exists():
        pytest.skip("the nuclei weights are not installed")
    res = segpipe("train", "--recipe", "nuclei", "--out", str(tmp_path / "m.safetensors"), "--steps", "2",
                  "--epoch-steps", "1", "--val-images", "1", "--pool", "2", "--crop", "64", "--batch-size", "2",
                  "--synthetic-shape", "96", "--no-progress", "--no-tune-postprocess", "--init", str(weights))
    assert res.returncode == 0, res.stderr[-2000:]
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["training"]["config"]["init"] == str(weights) and card["training"]["config"]["crop"] == 64
    assert card["training"]["command"].startswith("segpipe train --out")


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    res = segpipe("demo", "--dir", str(tmp_path / "demo"), "--size", "1024", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "3 done" in res.stdout and "segpipe query" in res.stdout and "report:" in res.stdout


def test_missing_source_fails_fast(tmp_path):
    res = segpipe("run", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert res.returncode == 1 and "does not exist" in res.stderr
    assert not (tmp_path / "r").exists()


def test_unreachable_cluster_is_one_line_before_the_flow(tmp_path):
    """The cluster start is awaited before the flow runs: no Prefect traceback, and no
    temporary API server left behind."""
    archive = tmp_path / "archive"
    archive.mkdir()
    tifffile.imwrite(archive / "one.tif", np.zeros((64, 64), np.uint8))
    res = segpipe("run", str(archive), "--out", str(tmp_path / "results"), "--model", "classical",
                  "--cluster", "tcp://127.0.0.1:1")  # fmt: skip
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith("error: cannot reach the Dask scheduler") and "Traceback" not in res.stderr


def test_a_failed_image_is_reported_once_with_its_error(tmp_path):
    """The CLI prints each image's outcome itself: the failure's one-line error shows in the
    image's progress line and in the summary, not also as Prefect task logs."""
    archive = tmp_path / "archive"
    archive.mkdir()
    tifffile.imwrite(archive / "good.tif", np.full((96, 96), 30, np.uint8))
    (archive / "broken.tif").write_bytes(b"not a tiff at all")
    res = segpipe("run", str(archive), "--out", str(tmp_path / "results"), "--model", "classical")
    text = res.stdout + res.stderr
    assert res.returncode == 1, text[-2000:]  # an image failed
    assert "1 done" in res.stdout and "1 failed" in res.stdout
    error = "broken.tif: not a supported image"
    assert text.count(error) == 2, text  # the progress line and the summary
    assert "Task run" not in text and "Traceback" not in text



def test_a_truncated_table_file_is_one_line_naming_it(results, tmp_path):
    """A half-copied images or regions file: query, a rerun and show each fail with one line
    naming the file, and write nothing."""
    import shutil

    archive = str(Path(results).parent / "archive")
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for table, commands in (
        ("images", [("query", str(copy), "select count(*) from regions"),
                    ("run", archive, "--out", str(copy), "--model", "classical")]),
        ("regions", [("query", str(copy), "select count(*) from regions"),
                     ("show", str(copy), "one", "--out", str(tmp_path / "one.png"))]),
    ):  # fmt: skip
        bad = next((copy / "tables" / table / "one").glob("*.parquet"))
        good = bad.read_bytes()
        bad.write_bytes(good[: len(good) // 2])
        before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
        for args in commands:
            res = segpipe(*args)
            assert res.returncode == 1, (args, res.stdout, res.stderr)
            assert res.stderr.strip().splitlines() == [
                f"error: {bad}: not a Parquet file (truncated or corrupt); "
                f"restore it or move it out of {copy}/tables/{table}"
            ], args
        assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before
        assert not (tmp_path / "one.png").exists()
        bad.write_bytes(good)


def test_evaluate_names_a_damaged_images_file(results, tmp_path):
    """It fell back to scanning the image stores, as if the results had no tables."""
    import shutil

    from segpipe.errors import TableFileError
    from segpipe.train._evaluate import evaluate_run

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    bad = next(p for p in (copy / "tables" / "images").rglob("*.parquet") if "_skipped" not in p.parts)
    bad.write_bytes(bad.read_bytes()[:20])
    (tmp_path / "truth").mkdir()
    tifffile.imwrite(tmp_path / "truth" / "one.labels.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(TableFileError, match=f"{bad}: not a Parquet file"):
        evaluate_run(copy, tmp_path / "truth", None)
