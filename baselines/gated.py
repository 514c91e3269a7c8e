"""Gated fusion, docs/methods/fusion.md.

Kiela et al., "Efficient Large-Scale Multi-Modal Classification", AAAI 2018, arXiv 1802.02892. Audio gates the
visual features, z = W_out(sigmoid(W_x h_a) * (W_y h_v)), L = CE(z): OGM-GE's ``GatedFusion`` with x_gate=True
(GitHub GeWu-Lab/OGM-GE_CVPR2022, ``models/fusion_modules.py``). Per-modality accuracy is measured with the other
modality's features zeroed.
"""

from baselines.base import FusionMethod
from baselines.registry import register


@register
class Gated(FusionMethod):
    name = "gated"
    title = "Gated"
    DATA_PARALLEL = "exact"  # batch-mean CE of per-sample outputs: averaged gradients are the global batch's
    PAPER = 'Kiela et al., "Efficient Large-Scale Multi-Modal Classification", AAAI 2018, arXiv 1802.02892'
    CODE = 'GitHub GeWu-Lab/OGM-GE_CVPR2022, models/fusion_modules.py, GatedFusion'
    HEAD = "gated"
