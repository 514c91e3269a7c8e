"""Prediction weighting ("Weight"), docs/methods/fusion.md, as the project placeholder ``weight_learned_scalar``.

z = w_a z_a + w_v z_v with (w_a, w_v) = softmax of a learnable vector, L = CE(z). AUG cites the same IJCAI 2019
paper as "Sum" and does not state the weight form; this form is ours and is labelled so in tables.
"""

from baselines.base import FusionMethod
from baselines.registry import register


@register
class Weight(FusionMethod):
    name = "weight"
    title = "Weight (learned scalar, ours)"
    DATA_PARALLEL = "exact"  # batch-mean CE of per-sample outputs: averaged gradients are the global batch's
    PAPER = 'Yang et al., IJCAI 2019 (as cited by AUG); weight form is the project placeholder'
    CODE = 'none (project placeholder weight_learned_scalar)'
    HEAD = "weight"
