"""Attacks (registry ``ATTACKS``): threat models, the one attack loop, evaluation suites, masking audit, CLI.

``threat.ThreatModel`` (project / step / random_init) is separate from ``loop.perturb`` (the one loop), and every
registered attack is a small class that picks a threat model, a loss and a step schedule for that loop.
Inputs are in [0, 1] and normalisation lives inside the model, so ε is always in pixel units.
"""
from robust_core.attacks.loop import ce_loss, cw_margin_loss, perturb
from robust_core.attacks.threat import ThreatModel

__all__ = ["ThreatModel", "perturb", "ce_loss", "cw_margin_loss"]
