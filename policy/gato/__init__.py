"""Gato (Reed et al. 2022, https://arxiv.org/abs/2205.06175) for one embodiment: GatoConfig
in configuration.py, GatoPolicy in modeling.py, registered as the policy kind "gato".

``policy.gato.GatoConfig`` and ``policy.gato.GatoPolicy`` stay the public paths (conf/policy's
``_target_`` names them); importing this package registers the kind.
"""

from policy.gato.configuration import IMAGE_TOKENIZERS, READOUTS, TEXT_POSITIONS, GatoConfig
from policy.gato.modeling import TEXT_STEP, GatoPolicy, window_mask

__all__ = ["IMAGE_TOKENIZERS", "READOUTS", "TEXT_POSITIONS", "TEXT_STEP", "GatoConfig",
           "GatoPolicy", "window_mask"]
