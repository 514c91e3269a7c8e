"""``augbench parity``: float64 precision of the shared step code, the golden parity records, the lockstep
comparison and the CLI's errors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from baselines.base import StepInfo, confidence_scores, loss_precision
from baselines.hparams import resolve
from baselines.ogm import OGM
from benchmarks.config import method_hparams
from tests.conftest import first_batch, make_context


# --- float64 runs keep float64 losses and scores (what parity in float64 needs) --------------------------------------
def test_loss_precision_promotes_half_and_keeps_float64():
    assert loss_precision(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert loss_precision(torch.zeros(2, dtype=torch.float32)).dtype == torch.float32
    assert loss_precision(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


def test_confidence_scores_of_float64_logits_are_float64():
    z = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    s = confidence_scores({"audio": z}, y)["audio"]
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, torch.softmax(z, 1)[torch.arange(5), y].sum(), rtol=1e-15, atol=1e-15)


def test_ogm_step_in_float64_reports_the_float64_loss(tiny_bundle):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        method = OGM(tiny_bundle.task, resolve("ogm", method_hparams(OGM), "synthetic", {}), make_context())
        batch = {k: (v.double() if v.is_floating_point() else v) for k, v in first_batch(tiny_bundle).items()}
        with torch.no_grad():
            _, z, _ = method.model(method.inputs(batch))
            expected = F.cross_entropy(z, batch["label"]).item()
        logs = method.update(batch, StepInfo(0, 0, 1, 1))
    finally:
        torch.set_default_dtype(old)
    assert logs["loss"] == expected   # a float32 loss would differ from the float64 one at ~1e-8
