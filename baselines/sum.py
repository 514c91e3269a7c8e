"""Prediction summation ("Sum"), docs/methods/fusion.md.

z = (W_a h_a + b_a) + (W_v h_v + b_v), L = CE(z). AUG cites Yang, Wang, Zhan, Xiong, Jiang, "Comprehensive
Semi-Supervised Multi-Modal Learning", IJCAI 2019; implemented as OGM-GE's ``SumFusion`` (GitHub
GeWu-Lab/OGM-GE_CVPR2022, ``models/fusion_modules.py``) [project reading].
"""

from baselines.base import FusionMethod
from baselines.registry import register


@register
class Sum(FusionMethod):
    name = "sum"
    title = "Sum"
    DATA_PARALLEL = "exact"  # batch-mean CE of per-sample outputs: averaged gradients are the global batch's
    PAPER = 'Yang, Wang, Zhan, Xiong, Jiang, "Comprehensive Semi-Supervised Multi-Modal Learning", IJCAI 2019'
    CODE = 'GitHub GeWu-Lab/OGM-GE_CVPR2022, models/fusion_modules.py, SumFusion'
    HEAD = "sum"
