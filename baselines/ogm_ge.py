"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement (docs/methods/ogm.md).

Paper: Xiaokang Peng, Yake Wei, Andong Deng, Dong Wang, Di Hu, "Balanced Multimodal Learning via On-the-fly Gradient
Modulation", CVPR 2022, arXiv 2203.15332, Eq. (10) and §3.3. Official code: GitHub GeWu-Lab/OGM-GE_CVPR2022,
``main.py``, ``train_epoch`` (``--modulation OGM_GE``, the default).

Identical to OGM (``baselines/ogm.py``: ratio, coefficients, window, heads and knobs) except for the edit of each
conv-kernel gradient inside the window: g <- k_m g + eps, eps ~ N(0, (std(g) + 1e-8)^2) drawn elementwise, with std
the per-tensor std of the *unscaled* gradient. The noise is added to **both** encoders, including the one with
k = 1. The paper motivates the noise as Gaussian with the covariance of the SGD gradient noise; the official code (and
this implementation) uses the per-tensor scalar std. Noise is drawn from the torch generator of the gradient's device,
which the runner seeds and checkpoints; in a data-parallel run every rank draws and rank 0's draw is used (its std
from the averaged gradient), so the noise is the single-process one, not an average over ranks.

Cost: as joint training, plus one Normal draw per conv weight per step (data-parallel: plus one broadcast of the
edited conv gradients).

BB divergences are listed in ``baselines/ogm.py``; BB also adds the noise to every non-1-D encoder tensor.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from baselines.ogm import OGM
from baselines.registry import register


@register
class OGMGE(OGM):
    name = "ogm_ge"
    title = "OGM-GE"
    DATA_PARALLEL = "exact"  # as OGM; the noise is rank 0's, drawn on synced gradients
    NOISE = True

    @classmethod
    def mechanism_acted(cls, history: Sequence[Mapping[str, Any]]) -> bool | None:
        """Whether OGM-GE edited a conv gradient: some epoch inside the window (diag ``ogm_window`` 1.0), where every
        step adds Gaussian noise to both encoders' conv gradients whatever k is (with alpha > 0 one modality's k is
        also below 1 at every step: rho >= 1 for the suppressed one). None for a history without ``ogm_window``."""
        flags = [r["diag"]["ogm_window"] for r in history if "ogm_window" in r.get("diag", {})]
        if not flags:
            return None
        return any(f == 1.0 for f in flags)
