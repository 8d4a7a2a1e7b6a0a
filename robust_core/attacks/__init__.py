"""Attacks (registry ``ATTACKS``): threat models, the one attack loop, evaluation suites, masking audit, CLI.

``threat.ThreatModel`` (project / step / random_init) is separate from ``loop.perturb`` (the one loop), and every
registered attack is a small class that picks a threat model, a loss and a step schedule for that loop.
Inputs are in [0, 1] and normalisation lives inside the model, so ε is always in pixel units.

The evaluation contract: ``key.AttackKey`` (what a table column names), ``settings.EvalSettings`` (typed, frozen),
``suites.SUITES`` (each suite = the attacks it runs + the inputs it needs, as data), ``evaluate`` (``wire`` the
inputs, ``run_suites``, ``fingerprint`` = the reuse key derived from what a suite runs).
"""
from robust_core.attacks.loop import ce_loss, cw_margin_loss, perturb
from robust_core.attacks.threat import ThreatModel

__all__ = ["ThreatModel", "perturb", "ce_loss", "cw_margin_loss"]
