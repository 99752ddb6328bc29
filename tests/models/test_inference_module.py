"""``Model.inference_module``: the optimised copy follows the trainable module and falls back."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from segpipe.models import Model
from segpipe.models._model import optimize_for_inference
from segpipe.models.testing import tiny_card, tiny_model
from segpipe.models.unet import PRESETS, UNet


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("separable", [False, True])
def test_every_preset_is_folded_and_matches(preset: str, separable: bool) -> None:
    torch.manual_seed(0)
    net = UNet(3, 3, PRESETS[preset], separable=separable).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    fast, channels_last = optimize_for_inference(net)
    assert channels_last and fast is not net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        got = fast(x.contiguous(memory_format=torch.channels_last))
        np.testing.assert_allclose(got.numpy(), net(x).numpy(), atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # original untouched


def test_training_the_module_updates_predict() -> None:
    model = tiny_model("binary")
    x = np.random.default_rng(0).normal(0, 1, (1, 1, 32, 32)).astype(np.float32)
    before = model.predict(x)
    first = model.inference_module
    with torch.no_grad():
        model.module.head.bias += 3.0  # in place, as an optimiser step does
    after = model.predict(x)
    assert model.inference_module is not first
    assert (after > before + 1e-3).all()
    with torch.inference_mode():
        ref = torch.sigmoid(model.module(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(after, ref, atol=1e-4)


class _LooseBatchNorm(nn.Module):
    """BatchNorm outside any Sequential, behind data-dependent control flow: left unfolded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if float(y.mean()) > -1e9 else -y


def test_unfoldable_network_still_matches_the_plain_module() -> None:
    card = tiny_card("binary")
    model = Model(_LooseBatchNorm(), card, "cpu")
    model.module.bn.running_mean += 0.5  # non-trivial statistics
    x = np.random.default_rng(1).normal(0, 1, (2, 1, 16, 16)).astype(np.float32)
    out = model.predict(x)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.inference_module.modules())
    with torch.inference_mode():
        ref = torch.sigmoid(model.module(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_optimising_in_one_thread_does_not_break_forwards_in_another() -> None:
    """torch.fx tracing patched nn.Module.__call__ process-wide: concurrent forwards failed."""
    import threading

    card = tiny_card("binary")
    running = Model(UNet(1, 1, PRESETS["tiny"], batch_norm=True), card, "cpu")
    x = np.zeros((1, 1, 32, 32), np.float32)
    errors: list[BaseException] = []
    stop = threading.Event()

    def forwards() -> None:
        try:
            while not stop.is_set():
                running.predict(x)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=forwards)
    worker.start()
    try:
        for _ in range(30):
            assert (
                Model(UNet(1, 1, PRESETS["tiny"], batch_norm=True), card, "cpu").inference_module
                is not None
            )
    finally:
        stop.set()
        worker.join()
    assert not errors, errors[0]


def test_classical_model_runs_its_own_module() -> None:
    from segpipe.models import load_model

    model = load_model("classical", device="cpu")
    assert model.inference_module is model.module and not model.channels_last


def test_pickled_model_rebuilds_its_optimised_copy() -> None:
    model = tiny_model("semantic")
    x = np.random.default_rng(2).normal(0, 1, (1, 1, 32, 32)).astype(np.float32)
    out = model.predict(x)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(again.predict(x), out, atol=1e-6)
