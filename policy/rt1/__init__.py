"""RT-1 (Brohan et al. 2022, https://arxiv.org/abs/2212.06817): RT1Config in configuration.py,
RT1Policy in modeling.py, registered as the policy kind "rt1".

``policy.rt1.RT1Config`` and ``policy.rt1.RT1Policy`` stay the public paths (conf/policy's
``_target_`` and checkpoints' train_config.yaml name them); importing this package
registers the kind.
"""

from policy.rt1.configuration import RT1Config
from policy.rt1.modeling import RT1Policy

__all__ = ["RT1Config", "RT1Policy"]
