"""Training options for faint coarse features: context bands, mild intensity, fine-tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segpipe.errors import ConfigError
from segpipe.models import build_module
from segpipe.train import TrainConfig, preset_config
from segpipe.train.__main__ import parse_args
from segpipe.train._augment import intensity_jitter
from segpipe.train._loop import load_init, make_card

torch.set_num_threads(1)


def test_context_goes_into_the_card_with_a_larger_halo() -> None:
    cfg = preset_config("defects", out=Path("d"), context=[3, 8, 24])
    card = make_card(cfg)
    assert card.architecture == {"type": "unet", "preset": "light", "batch_norm": True,
                                 "context": [3.0, 8.0, 24.0], "context_truncate": 3.0}
    assert card.halo == 128 and card.tile == 768
    assert make_card(preset_config("defects", out=Path("d"))).halo == 48
    with pytest.raises(ConfigError, match="context"):
        TrainConfig(data="x", context=[8, 3])


def test_fine_tuning_a_context_net_starts_from_the_plain_nets_output() -> None:
    plain_cfg = preset_config("defects", out=Path("d"), preset="tiny")
    torch.manual_seed(1)
    plain = build_module(make_card(plain_cfg)).eval()
    ctx = build_module(make_card(preset_config("defects", out=Path("d"), preset="tiny", context=[2, 6]))).eval()
    load_init(ctx, plain.state_dict(), "plain")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain(x), ctx(x), atol=1e-5)
    other = build_module(make_card(preset_config("defects", out=Path("d"), preset="light")))
    with pytest.raises(ConfigError, match="shape"):
        load_init(ctx, other.state_dict(), "light")


def test_mild_intensity_adds_no_noise() -> None:
    x = np.full((1, 32, 32), 0.5, np.float32)
    for s in range(20):
        y = intensity_jitter(x, np.random.default_rng(s), "mild")
        assert y.std() < 1e-6 and 0.3 < y.mean() < 0.8  # flat stays flat: no added noise
    noisy = [intensity_jitter(x, np.random.default_rng(s)).std() for s in range(20)]
    assert max(noisy) > 0.005  # the strong default adds noise in about half the draws


def test_cli_parses_list_options() -> None:
    cfg = parse_args(["--preset", "defects", "--out", "d", "--context", "3,8,24", "--class-weights",
                      "0.2,1,1,1.5", "--intensity", "mild", "--balance", "class"])
    assert cfg.context == [3.0, 8.0, 24.0] and cfg.class_weights == [0.2, 1.0, 1.0, 1.5]
    assert cfg.intensity == "mild" and cfg.balance == "class"
    cfg = parse_args(["--preset", "defects", "--out", "d", "--context", "4,16,40", "--context-truncate", "2",
                      "--select", "miou"])
    card = make_card(cfg)
    assert cfg.select == "miou" and card.architecture["context_truncate"] == 2.0 and card.halo == 128
    assert build_module(card).context.k2.numel() == 161  # sigma 40 truncated at 2 sigma
    with pytest.raises(ConfigError, match="context"):
        parse_args(["--preset", "defects", "--out", "d", "--context", "3,x"])


def test_cli_reaches_every_training_option_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    for name, field in TrainConfig.model_fields.items():
        if name == "command":
            continue  # recorded from the command line itself
        flag = ("--no-" if field.default is True else "--") + name.replace("_", "-")
        assert flag in text, flag
    assert "(default onecycle)" in text and "turn off augmentation" in text
    cfg = parse_args(["--preset", "nuclei", "--out", "n", "--widths", "8,16,32", "--scale-range", "0.5,2",
                      "--no-augment", "--schedule", "cosine", "--loader-threads", "2", "--no-amp"])
    assert cfg.widths == [8, 16, 32] and cfg.scale_range == (0.5, 2.0) and cfg.schedule == "cosine"
    assert not cfg.augment and not cfg.amp and cfg.loader_threads == 2
    assert cfg.stain_jitter and cfg.steps == 5200  # the recipe's values stay where no option is given
    with pytest.raises(ConfigError, match="--schedule: invalid choice: 'linear'"):
        parse_args(["--out", "n", "--data", "synthetic:nuclei", "--schedule", "linear"])


def test_select_miou_scores_background_too(tmp_path: Path) -> None:
    from segpipe.train import train

    cfg = preset_config("defects", out=tmp_path / "d", preset="tiny", crop=48, batch_size=2, steps=2,
                        epoch_steps=2, synthetic_shape=64, pool=2, val_images=1, progress=False,
                        context=[2, 6], select="miou")
    result = train(cfg)
    m = result.best_metrics
    assert m["score"] == m["miou"] != m["miou_fg"]
    ious = [m[f"iou_{c}"] for c in ("background", "scratch", "pit", "stain")]
    assert abs(m["miou"] - float(np.nanmean(ious))) < 1e-9
