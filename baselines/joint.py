"""Joint training with concatenation fusion ("Concat", AUG's "Naive MML"), docs/methods/fusion.md.

L = CE(W[h_a; h_v] + b, y), audio first in the concatenation. Per-modality accuracy uses the split head
z_m = W[:, slice_m] h_m + b/M. Reference: GitHub GeWu-Lab/OGM-GE_CVPR2022, ``models/fusion_modules.py``
(``ConcatFusion``) and ``main.py`` ``train_epoch`` (split-head computation).
"""

from baselines.base import FusionMethod
from baselines.registry import register


@register
class Joint(FusionMethod):
    name = "joint"
    title = "Concat"
    DATA_PARALLEL = "exact"  # batch-mean CE of per-sample outputs: averaged gradients are the global batch's
    PAPER = 'Joint training baseline ("Naive MML" in AUG)'
    CODE = 'GitHub GeWu-Lab/OGM-GE_CVPR2022, models/fusion_modules.py, ConcatFusion'
    HEAD = "concat"
