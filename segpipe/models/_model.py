"""``Model``: a module, its card and a device, with a batched ``predict``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.errors import ModelError
from segpipe.models._card import ModelCard

__all__ = ["Model", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → ``cuda`` when available, else ``cpu``; ``"cuda"`` → ``cuda:0``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {str(device)!r} requested but CUDA is not available; use device='cpu'"
            )
        dev = torch.device(
            "cuda", dev.index if dev.index is not None else torch.cuda.current_device()
        )
    return dev


class Model:
    """A segmentation network ready to predict: ``.card``, ``.module``, ``.device``.

    Parameters
    ----------
    module : torch.nn.Module
        Returns logits ``(N, K, H, W)`` for input ``(N, C, H, W)``; its attribute
        ``size_multiple`` (default 1) is the number H and W must be divisible by.
    card : ModelCard
        The model's card; ``card.task`` picks the activation (sigmoid for binary,
        softmax over K for semantic and instance).
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    batch_size : int, optional
        Largest sub-batch sent to the device at once (default 8 on CPU, 16 on CUDA).
    """

    def __init__(
        self,
        module: nn.Module,
        card: ModelCard,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.card = card
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.size_multiple = int(getattr(module, "size_multiple", 1))
        self.batch_size = int(batch_size or (16 if self.device.type == "cuda" else 8))

    def __repr__(self) -> str:
        return (
            f"Model(name={self.card.name!r}, task={self.card.task!r}, device={str(self.device)!r})"
        )

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _chunks(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        for i in range(0, x.shape[0], self.batch_size):
            yield x[i : i + self.batch_size]

    def predict(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities for a batch of prepared (normalised) input.

        Parameters
        ----------
        batch : (N, C, H, W) array or tensor
            Converted to float32; ``C`` must equal ``card.in_channels``. Any H, W: sizes that
            are not a multiple of the module's ``size_multiple`` are reflect-padded and the
            output cropped back.

        Returns
        -------
        (N, K, H, W) float32 ndarray
            Sigmoid probabilities (binary) or softmax probabilities summing to 1 over K
            (semantic, instance). Runs under ``torch.inference_mode()``, in sub-batches of
            ``batch_size``; on CUDA with bf16 (fp16) autocast and pinned, non-blocking copies.
        """
        x = torch.as_tensor(batch)
        if x.ndim != 4 or x.shape[1] != self.card.in_channels:
            raise ModelError(
                f"model {self.card.name!r} takes (N, {self.card.in_channels}, H, W) input, "
                f"got shape {tuple(x.shape)}"
            )
        x = x.to(dtype=torch.float32, device="cpu")
        n, _, h, w = x.shape
        k = self.card.n_outputs
        out = np.empty((n, k, h, w), np.float32)
        if n == 0 or h == 0 or w == 0:
            return out
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), self._autocast():
            start = 0
            for part in self._chunks(x):
                if ph or pw:
                    mode = "reflect" if ph < h and pw < w else "replicate"
                    part = F.pad(part, [0, pw, 0, ph], mode=mode)
                if cuda:
                    part = part.contiguous().pin_memory().to(self.device, non_blocking=True)
                logits = self.module(part)[:, :, :h, :w].float()
                if self.card.task == "binary":
                    probs = torch.sigmoid(logits)
                else:
                    probs = torch.softmax(logits, dim=1)
                if probs.shape[1] != k:
                    raise ModelError(
                        f"model {self.card.name!r} returned {probs.shape[1]} channels, "
                        f"its card declares {k} outputs {self.card.outputs}"
                    )
                out[start : start + part.shape[0]] = probs.cpu().numpy()
                start += part.shape[0]
        return out
