"""Quality floor of the shipped ``nuclei`` weights on images unlike its training renderer.

The acceptance check's slide (flat, sharp-edged grey discs with Gaussian noise) once gave
0 objects; these tests keep that from coming back, and check that held-out synthetic
fluorescence and H&E still segment well. Small images: about 10 s on one thread.
"""

from __future__ import annotations

import pytest
import torch

from segpipe.metrics import instance_metrics
from segpipe.models import load_model
from segpipe.normalize import image_stats
from segpipe.predict import segment_array
from segpipe.train.heldout import disc_image, nuclei_heldout_set

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def nuclei_model():  # type: ignore[no-untyped-def]
    return load_model("nuclei", device="cpu")


def test_flat_sharp_discs_are_found(nuclei_model) -> None:  # type: ignore[no-untyped-def]
    image, truth = disc_image(side=600, seed=0, n=24)
    pred = segment_array(image, model=nuclei_model, mpp=0.5)
    m = instance_metrics(truth, pred)
    assert m["recall"]["0.5"] >= 0.9, m["recall"]
    assert m["ap"]["0.5"] >= 0.85, m["ap"]
    assert abs(m["n_pred"] - m["n_true"]) <= max(2, 0.1 * m["n_true"])


def test_heldout_synthetic_fluorescence_and_he(nuclei_model) -> None:  # type: ignore[no-untyped-def]
    data = nuclei_heldout_set(n=4, shape=256)[2:]  # one of each modality, diameters 14-24 px
    assert [d[2] for d in data] == ["fluorescence", "brightfield"]
    for image, truth, modality in data:
        stats = image_stats(image, nuclei_model.card, modality)
        pred = segment_array(image, model=nuclei_model, modality=modality, stats=stats)
        ap = instance_metrics(truth, pred)["ap"]["0.5"]
        assert ap >= 0.6, (modality, ap)
