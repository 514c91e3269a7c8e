"""FiLM fusion ("Affine"), docs/methods/fusion.md.

Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018, arXiv 1709.07871. Audio
produces (gamma, beta) that modulate the visual features, z = W_out(gamma * h_v + beta), L = CE(z): OGM-GE's
``FiLM`` with x_film=True (GitHub GeWu-Lab/OGM-GE_CVPR2022, ``models/fusion_modules.py``). The head has no
per-modality logits; per-modality accuracy is measured with the other modality's features zeroed.
"""

from baselines.base import FusionMethod
from baselines.registry import register


@register
class FiLM(FusionMethod):
    name = "film"
    title = "Affine (FiLM)"
    DATA_PARALLEL = "exact"  # batch-mean CE of per-sample outputs: averaged gradients are the global batch's
    PAPER = 'Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018, arXiv 1709.07871'
    CODE = 'GitHub GeWu-Lab/OGM-GE_CVPR2022, models/fusion_modules.py, FiLM'
    HEAD = "film"
