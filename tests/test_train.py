"""Training: targets, data loading, loss goes down, reproducible, resume, save/load, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from segpipe.errors import ConfigError
from segpipe.models import build_module, load_model
from segpipe.train import (
    TrainConfig,
    evaluate_labels,
    evaluate_run,
    instance_target,
    preset_config,
    train,
)
from segpipe.train._data import folder_items

torch.set_num_threads(1)

# a tiny, fast run: "tiny" U-Net, 48-px crops, 64-px synthetic images
TINY = dict(preset="tiny", crop=48, batch_size=2, epoch_steps=5, synthetic_shape=64, pool=4,
            val_images=1, progress=False, lr=1e-2)


def _cfg(tmp: Path, name: str = "m", **kw: object) -> TrainConfig:
    return preset_config("nuclei", **{**TINY, "out": tmp / name, "checkpoint": tmp / f"{name}.ckpt", **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_instance_target_separates_touching_objects() -> None:
    lab = np.zeros((6, 10), np.uint32)
    lab[1:5, 1:5] = 1
    lab[1:5, 5:9] = 2  # touching along a column
    t = instance_target(lab)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[1:5, 4] == 2).all() and (t[1:5, 5] == 2).all()  # both sides of the contact
    assert t[2, 2] == 1 and t[0, 0] == 0
    thick = instance_target(lab, "thick")
    assert (thick == 2).sum() > (t == 2).sum()


def test_config_validation_is_one_line() -> None:
    with pytest.raises(ConfigError, match="crop"):
        TrainConfig(data="synthetic:nuclei", crop=50)
    with pytest.raises(ConfigError, match="classes"):
        TrainConfig(data="x", task="semantic")
    with pytest.raises(ConfigError, match="unknown training preset"):
        preset_config("cells")


def _write_pairs(folder: Path, n: int = 3, size: int = 64) -> None:
    from segpipe.synthetic import nuclei_sample

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, labels = nuclei_sample((size, size), rng=i, diameter_px=(8, 14))
        tifffile.imwrite(folder / f"img{i}.tif", image[0])
        tifffile.imwrite(folder / f"img{i}.labels.tif", labels)


def test_folder_pairs_and_mismatched_mask(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "ok", n=2)
    items = folder_items(tmp_path / "ok", "instance")
    assert len(items) == 2 and items[0].shape == (64, 64)
    crop = items[0].read(-5, -5, 20, 20)  # outside the image reads as zeros
    assert crop.shape == (1, 25, 25) and (crop[:, :5] == 0).all()
    assert len(items[0].index) > 0  # objects indexed for balanced sampling
    bad = tmp_path / "bad"
    bad.mkdir()
    tifffile.imwrite(bad / "a.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(bad / "a_mask.tif", np.zeros((30, 32), np.uint16))
    with pytest.raises(ConfigError, match=r"a_mask\.tif.*a\.tif"):
        folder_items(bad, "instance")


def test_training_lowers_the_loss_on_a_folder(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "data", n=4)
    cfg = TrainConfig(name="mine", data=str(tmp_path / "data"), out=tmp_path / "mine", steps=30,
                      **{**TINY, "epoch_steps": 10}, patience=5)
    result = train(cfg)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    assert result.weights.exists() and result.card.exists()
    assert result.steps == 30


def test_seeded_runs_are_reproducible_and_resume_matches(tmp_path: Path) -> None:
    a = train(_cfg(tmp_path, "a", steps=10))
    b = train(_cfg(tmp_path, "b", steps=10))
    wa, wb = _weights(a.weights), _weights(b.weights)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # interrupted after the first epoch, then resumed: same weights as the straight run
    first = train(_cfg(tmp_path, "c", steps=10, stop_after=5))
    assert first.steps == 5
    resumed = train(_cfg(tmp_path, "c", steps=10, resume=True))
    assert resumed.steps == 10 and len(resumed.history) == 2
    wc = _weights(resumed.weights)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
    other = _weights(train(_cfg(tmp_path, "d", steps=10, seed=1)).weights)
    assert not all(torch.equal(wa[k], other[k]) for k in wa)
    # batches made ahead on loader threads (the CUDA default) are the same batches
    threaded = _weights(train(_cfg(tmp_path, "e", steps=10, loader_threads=3)).weights)
    assert all(torch.equal(wa[k], threaded[k]) for k in wa)


def test_resume_without_checkpoint_fails(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(_cfg(tmp_path, "x", steps=5, resume=True))


def test_saved_model_round_trips_through_load_model(tmp_path: Path) -> None:
    result = train(_cfg(tmp_path, "rt", steps=5))
    model = load_model(result.weights, device="cpu")
    assert model.card.name == "nuclei" and model.card.sha256 is not None
    state = torch.load(tmp_path / "rt.ckpt", weights_only=True)["best_state"]
    module = build_module(model.card)
    module.load_state_dict(state)
    module.eval()
    x = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).softmax(1).numpy()
    np.testing.assert_allclose(model.predict(x), expected, atol=1e-5)
    # the training record lives in the card (no side file any more)
    assert not (tmp_path / "rt.training.json").exists()
    assert model.card.training is not None
    assert model.card.training["steps"] == 5 and "postprocess_tuning" in model.card.training
    assert model.card.training["config"]["preset"] == "tiny"
    # re-tuning rewrites only the card's post-processing; the weights still verify
    from segpipe.train._tune import retune_saved

    info = retune_saved(_cfg(tmp_path, "rt", steps=5))
    assert set(info["postprocess"]) >= {"seed_threshold", "mask_threshold", "min_seed_size"}
    assert info["val_ap50_tuned"] >= info["val_ap50_before"]
    again = load_model(result.weights, device="cpu").card
    assert again.sha256 == model.card.sha256
    assert again.training is not None and again.training["postprocess_tuning"]["postprocess"] == info["postprocess"]


def test_init_starts_from_given_weights(tmp_path: Path) -> None:
    first = train(_cfg(tmp_path, "a", steps=5))
    start = _weights(first.weights)
    # lr ~ 0: fine-tuning from `init` keeps the weights; from scratch they would differ
    tuned = train(_cfg(tmp_path, "b", steps=1, epoch_steps=1, lr=1e-12, init=first.weights))
    after = _weights(tuned.weights)
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start if start[k].is_floating_point()
               and "running" not in k)
    scratch = _weights(train(_cfg(tmp_path, "c", steps=1, epoch_steps=1, lr=1e-12)).weights)
    assert not all(torch.equal(start[k], scratch[k]) for k in start)


def test_semantic_training_on_class_maps(tmp_path: Path) -> None:
    data = tmp_path / "sem"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.normal(100, 5, (64, 64)).clip(0, 255).astype(np.uint8)
        cls = np.zeros((64, 64), np.uint8)
        cls[10:20, 5:60] = 1  # a bright band
        cls[40:50, 30:40] = 2  # a dark square
        img[cls == 1] = 200
        img[cls == 2] = 20
        tifffile.imwrite(data / f"p{i}.tif", img)
        tifffile.imwrite(data / f"p{i}_mask.tif", cls)
    cfg = TrainConfig(name="sem", data=str(data), task="semantic", classes=["bg", "band", "square"],
                      out=tmp_path / "sem", steps=20, **{**TINY, "epoch_steps": 10})
    result = train(cfg)
    assert result.card.exists()
    assert {"iou_band", "iou_square", "miou_fg"} <= set(result.best_metrics)
    model = load_model(result.weights, device="cpu")
    assert model.card.task == "semantic" and model.card.outputs == ["bg", "band", "square"]


def test_evaluate_labels_flat() -> None:
    t = np.zeros((16, 16), np.uint32)
    t[2:6, 2:6] = 1
    t[8:14, 8:14] = 2
    p = t.copy()
    p[p == 2] = 0
    row = evaluate_labels(t, p)
    assert row["ap_0.5"] == pytest.approx(0.5) and row["recall"] == pytest.approx(0.5)
    sem = evaluate_labels(np.array([[0, 1]]), np.array([[0, 1]]), "semantic", ["a", "b"])
    assert sem["mean_iou"] == 1.0


def _fake_results(root: Path, archive_rel: str, pred: np.ndarray) -> None:
    import zarr

    g = zarr.open_group(str(root / "images" / "img1.ome.zarr"), mode="w")
    g.attrs["segpipe"] = {"source_uri": f"/data/archive/{archive_rel}", "mpp": 0.5}
    g.create_array("0", data=np.zeros((1, *pred.shape), np.uint8))
    g.create_array("labels/segmentation/0", data=pred)


def test_evaluate_run_writes_table_and_plot(tmp_path: Path) -> None:
    truth = np.zeros((64, 64), np.uint32)
    truth[5:15, 5:15] = 1
    truth[20:30, 20:30] = 2
    truth[40:50, 40:50] = 3
    pred = truth.copy()
    pred[40:50, 40:50] = 0  # one missed
    pred[20:30, 25:30] = 9  # one split in two halves
    (tmp_path / "truth" / "slides").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "truth" / "slides" / "s1.labels.tif", truth)
    tifffile.imwrite(tmp_path / "truth" / "slides" / "other.labels.tif", truth)  # no image
    _fake_results(tmp_path / "results", "slides/s1.svs", pred)
    report = evaluate_run(tmp_path / "results", tmp_path / "truth", tmp_path / "eval")
    (row,) = report["images"]
    assert row["image_id"] == "img1" and row["n_true"] == 3 and row["n_pred"] == 3
    assert row["n_split"] == 1
    # TP = object 1 only (each half of object 2 has IoU 0.5 -> one half matches at 0.5)
    assert row["tp_0.5"] == 2 and row["fn_0.5"] == 1 and row["fp_0.5"] == 1
    assert report["summary"]["ap_0.5"] == pytest.approx(2 / 4)
    assert len(report["unmatched"]) == 1
    import pyarrow.parquet as pq

    table = pq.read_table(report["table"])
    assert table.num_rows == 2 and "ap_0.9" in table.column_names
    assert Path(report["plot"]).stat().st_size > 0 and Path(report["csv"]).exists()
    with pytest.raises(ConfigError, match="no truth file matches"):
        evaluate_run(tmp_path / "results", _only(tmp_path, "zz"), None)


def _only(tmp: Path, name: str) -> Path:
    d = tmp / name
    d.mkdir()
    tifffile.imwrite(d / "nothing.labels.tif", np.zeros((4, 4), np.uint32))
    return d


def test_zarr_source_and_scale_and_balanced_crops(tmp_path: Path) -> None:
    import zarr

    from segpipe.train._augment import sample_crop
    from segpipe.train._data import zarr_items

    labels = np.zeros((96, 96), np.uint32)
    labels[70:76, 10:16] = 1  # one small object in a corner
    g = zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="w")
    g.attrs["segpipe"] = {"mpp": 0.25, "modality": "fluorescence"}
    g.create_array("0", data=(labels[None] > 0).astype(np.uint8) * 200)
    g.create_array("labels/nuclei/0", data=labels)
    (item,) = zarr_items(tmp_path / "a.ome.zarr", "instance", None)
    assert item.mpp == 0.25 and item.modality == "fluorescence" and list(item.index) == [1]
    rng = np.random.default_rng(0)
    # balanced crops are centred near the only object; zoom 2 doubles its side
    hits = [sample_crop(item, rng, 32, 1.0, False, 1.0)[1].any() for _ in range(10)]
    assert all(hits)
    _, big = sample_crop(item, rng, 64, 2.0, False, 1.0)
    assert 100 <= (big == 1).sum() <= 196  # 6x6 -> about 12x12


def test_checkpoint_beside_weights_and_heldout_set_is_fixed() -> None:
    from segpipe.train.heldout import nuclei_heldout_set

    assert TrainConfig(data="x", out=Path("a/m.safetensors")).checkpoint_path == Path("a/m.ckpt")
    a, b = nuclei_heldout_set(2, 64), nuclei_heldout_set(2, 64)
    assert [m for _, _, m in a] == ["fluorescence", "brightfield"]
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_heldout_pairs_measures_a_folder_of_annotated_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segpipe.train.heldout import disc_image, heldout_pairs, main

    image, truth = disc_image(side=256, n=12)
    tifffile.imwrite(tmp_path / "discs.tif", image)
    tifffile.imwrite(tmp_path / "discs.labels.tif", truth.astype(np.uint16))
    wrong = truth.copy()
    wrong[wrong == wrong.max()] = 0  # one object missed
    (tmp_path / "b").mkdir()
    tifffile.imwrite(tmp_path / "b" / "discs.tif", image)
    tifffile.imwrite(tmp_path / "b" / "discs.labels.tif", wrong.astype(np.uint16))
    res = heldout_pairs(["classical"], str(tmp_path))["classical"]
    n = int(truth.max())
    assert res["n_true"] == 2 * n - 1 and res["n_pred"] == 2 * n
    assert res["ap_0.5"] == pytest.approx((2 * n - 1) / (2 * n))  # the unannotated disc is a false positive
    assert sorted(res["images"].values()) == [pytest.approx((n - 1) / n), 1.0]
    semantic = tmp_path / "c"
    semantic.mkdir()
    tifffile.imwrite(semantic / "discs.tif", image)
    tifffile.imwrite(semantic / "discs.labels.tif",
                     np.where(truth > 0, 2, 0).astype(np.uint8))  # class map: pits
    assert main(["defects", "--pairs", str(semantic)]) == 0
    out = json.loads(capsys.readouterr().out)["defects"]
    assert set(out) == {"iou_background", "iou_scratch", "iou_pit", "iou_stain", "mean_iou", "images"}
    ious = [out[f"iou_{c}"] for c in ("background", "scratch", "pit", "stain")]
    assert out["mean_iou"] == pytest.approx(np.nanmean(ious)) and all(0 <= v <= 1 for v in ious if v == v)
    assert out["images"] == {str(semantic / "discs.tif"): pytest.approx(out["mean_iou"])}  # one image
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image/mask pairs"):
        heldout_pairs(["classical"], str(tmp_path / "empty"))


def test_heldout_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown model or a folder given as a model: one line on stderr, exit 2, no traceback;
    --n 0 is refused (it used to run the default 20 images)."""
    from segpipe.train.heldout import main

    assert main(["nosuch", "--kind", "defects", "--n", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nosuch'") and len(err.strip().splitlines()) == 1
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {tmp_path}: a folder, not a model (a built-in name or a weights file); "
                           f"to measure a model on the images in it: --pairs {tmp_path} MODEL")  # fmt: skip
    for bad in ("0", "-3", "two"):
        with pytest.raises(SystemExit) as info:
            main(["classical", "--n", bad])
        assert info.value.code == 2
        assert "argument --n: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classical", "--n", "0"])
    assert "must be at least 1, got 0" in capsys.readouterr().err


def _rare_class_items(n: int = 10) -> list:
    """``n`` 64-px class maps: class 1 (a band) in every one, class 2 (a square) in the first only."""
    from segpipe.train._data import array_item

    items = []
    for i in range(n):
        cls = np.zeros((64, 64), np.int64)
        cls[5:9, :] = 1
        if i == 0:
            cls[40:56, 40:56] = 2
        image = (cls[None] * 80 + 20).astype(np.uint8)
        items.append(array_item(f"rare{i}", image, cls, "semantic", "grey"))
    return items


def test_class_first_balancing_shows_a_rare_class_more_often() -> None:
    from segpipe.models import builtin_card
    from segpipe.train._loop import Batcher

    items = _rare_class_items()

    def share_with_rare(balance: str) -> float:
        cfg = TrainConfig(data="x", task="semantic", classes=["bg", "band", "square"], crop=32,
                          batch_size=16, balanced=1.0, balance=balance, scale_range=(1.0, 1.0))
        batcher = Batcher(cfg, builtin_card("defects"), items)
        ys = [batcher.batch(s)[1] for s in range(4)]
        return float(np.mean([(y == 2).any().item() for b in ys for y in b]))

    item_share, class_share = share_with_rare("item"), share_with_rare("class")
    assert class_share > 0.35  # about half the crops: class 2 is one of two classes
    assert item_share < 0.2  # about 1/20: the rare class's image is drawn 1 time in 10
    assert class_share > 2 * item_share


def test_widths_give_a_deeper_unet_with_a_larger_halo() -> None:
    from segpipe.models import build_module
    from segpipe.train._loop import make_card

    cfg = preset_config("defects", out=Path("d"), widths=[16, 32, 64, 128, 128])
    card = make_card(cfg)
    assert card.architecture == {"type": "unet", "widths": [16, 32, 64, 128, 128], "batch_norm": True}
    assert card.halo == 96 and card.tile % 16 == 0
    module = build_module(card).eval()
    with torch.no_grad():
        assert module(torch.zeros(1, 1, 32, 32)).shape == (1, 4, 32, 32)
    with pytest.raises(ConfigError, match="widths"):
        TrainConfig(data="x", widths=[16])


def test_size_binned_counts_put_objects_in_their_bins() -> None:
    from segpipe.train.heldout import size_binned_counts

    truth = np.zeros((64, 64), np.int32)
    truth[2:6, 2:6] = 1  # ~4.5 px across: missed
    truth[10:30, 10:30] = 2  # ~22.6 px: found
    pred = np.zeros_like(truth)
    pred[10:30, 10:31] = 7
    pred[40:60, 40:60] = 8  # a false positive, ~22.6 px
    counts = size_binned_counts(truth, pred, (0.0, 10.0, 40.0))
    assert counts.tolist() == [[0, 0, 1], [1, 1, 0]]
