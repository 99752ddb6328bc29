"""One shared test class for the Model interface, subclassed per implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segpipe.errors import ModelError
from segpipe.models import Model, ModelCard, load_model
from segpipe.models.testing import tiny_model


class ModelTests:
    """Behaviour every model must have; subclasses provide :meth:`make_model`."""

    def make_model(self) -> Model:
        raise NotImplementedError

    @pytest.fixture
    def model(self) -> Model:
        return self.make_model()

    def batch(
        self, model: Model, n: int = 3, h: int = 48, w: int = 64, seed: int = 0
    ) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.normal(0.3, 0.4, (n, model.card.in_channels, h, w)).astype(np.float32)
        x[:, :, h // 4 : h // 2, w // 4 : w // 2] += 1.0  # something object-like
        return x

    def test_has_card_module_device(self, model: Model) -> None:
        assert isinstance(model.card, ModelCard)
        assert isinstance(model.module, torch.nn.Module)
        assert model.device == torch.device("cpu")
        assert not model.module.training

    def test_predict_shape_and_dtype(self, model: Model) -> None:
        out = model.predict(self.batch(model))
        assert isinstance(out, np.ndarray)
        assert out.shape == (3, model.card.n_outputs, 48, 64)
        assert out.dtype == np.float32

    def test_probabilities(self, model: Model) -> None:
        out = model.predict(self.batch(model))
        assert np.isfinite(out).all()
        assert out.min() >= 0.0 and out.max() <= 1.0
        if model.card.task != "binary":  # softmax heads sum to one over K
            np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
        assert out.std() > 0  # not a constant

    @pytest.mark.parametrize(("h", "w"), [(37, 29), (1, 5), (17, 64)])
    def test_odd_sizes(self, model: Model, h: int, w: int) -> None:
        out = model.predict(self.batch(model, n=2, h=h, w=w))
        assert out.shape == (2, model.card.n_outputs, h, w)
        assert np.isfinite(out).all()

    def test_deterministic(self, model: Model) -> None:
        x = self.batch(model)
        np.testing.assert_array_equal(model.predict(x), model.predict(x))

    def test_sub_batches_equal_one_batch(self, model: Model) -> None:
        x = self.batch(model, n=5)
        whole = model.predict(x)
        model.batch_size = 2
        np.testing.assert_allclose(model.predict(x), whole, atol=1e-6)
        np.testing.assert_allclose(model.predict(x[3:4])[0], whole[3], atol=1e-6)

    def test_accepts_torch_and_numpy(self, model: Model) -> None:
        x = self.batch(model)
        np.testing.assert_array_equal(model.predict(torch.from_numpy(x)), model.predict(x))
        np.testing.assert_allclose(model.predict(x.astype(np.float64)), model.predict(x), atol=1e-6)

    def test_wrong_channels_refused(self, model: Model) -> None:
        with pytest.raises(ModelError, match="takes"):
            model.predict(np.zeros((1, model.card.in_channels + 1, 16, 16), np.float32))
        with pytest.raises(ModelError):
            model.predict(np.zeros((16, 16), np.float32))

    def test_empty_batch(self, model: Model) -> None:
        assert model.predict(np.zeros((0, model.card.in_channels, 8, 8))).shape == (
            0,
            model.card.n_outputs,
            8,
            8,
        )

    def test_card_json_round_trip(self, model: Model) -> None:
        assert ModelCard.from_json(model.card.to_json()) == model.card
        assert ModelCard.model_validate_json(model.card.model_dump_json()) == model.card

    def test_load_model_returns_a_model_as_is(self, model: Model) -> None:
        assert load_model(model) is model

    def test_optimised_network_matches_the_plain_module(self, model: Model) -> None:
        """``predict`` runs ``inference_module`` (BN folded, channels_last): same outputs."""
        x = self.batch(model, n=2, h=64, w=96)
        with torch.inference_mode():
            logits = model.module(torch.from_numpy(x))
        act = torch.sigmoid if model.card.task == "binary" else (lambda t: torch.softmax(t, 1))
        np.testing.assert_allclose(model.predict(x), act(logits).numpy(), atol=1e-4)
        fast = model.inference_module
        assert not fast.training
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
        assert model.module.training is False  # the plain module is left as it was


class TestClassical(ModelTests):
    def make_model(self) -> Model:
        return load_model("classical", device="cpu")

    def test_threshold_meaning(self, model: Model) -> None:
        x = np.zeros((1, 1, 32, 32), np.float32)
        x[..., 8:24, 8:24] = 1.0
        p = model.predict(x)[0, 0]
        assert p[16, 16] > 0.99 and p[0, 0] < 0.01
        flat = model.predict(np.full((1, 1, 16, 16), 0.5, np.float32))
        np.testing.assert_allclose(flat, 0.5, atol=1e-6)

    def test_cached(self, model: Model) -> None:
        assert load_model("classical", device="cpu") is model


class TestClassicalWatershed(ModelTests):
    def make_model(self) -> Model:
        return load_model("classical-watershed", device="cpu")


class TestTinyUNetBinary(ModelTests):
    def make_model(self) -> Model:
        return tiny_model("binary")


class TestTinyUNetSemantic(ModelTests):
    def make_model(self) -> Model:
        return tiny_model("semantic")


class TestTinyUNetInstance(ModelTests):
    def make_model(self) -> Model:
        return tiny_model("instance")


class TestTinyUNetRGB(ModelTests):
    def make_model(self) -> Model:
        return tiny_model("semantic", in_channels=3, channel_mode="rgb")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("task", ["binary", "semantic", "instance"])
def test_cuda_predict_matches_cpu(task: str) -> None:
    """bf16 (fp16) autocast on CUDA stays close to float32 on CPU."""
    cpu = tiny_model(task, seed=2)
    gpu = tiny_model(task, seed=2, device="cuda")
    assert gpu.device.type == "cuda"
    x = np.random.default_rng(0).normal(0, 1, (20, 1, 64, 96)).astype(np.float32)
    out = gpu.predict(x)
    assert out.dtype == np.float32 and out.shape == (20, cpu.card.n_outputs, 64, 96)
    np.testing.assert_allclose(out, cpu.predict(x), atol=0.05)
