"""Which policy kinds exist: each kind's config dataclass and Policy class.

A policy registers itself in its own modeling module, with ``@register_policy(kind,
config_class)`` on its Policy subclass. The factory functions in policy/base.py
(``make_policy``, ``Policy.from_pretrained``, ``register_policy_configs``,
``load_policy_yaml``) ask :func:`policies`, which first imports the modules named in
:data:`POLICY_MODULES`; so policy/base.py imports no policy, and a policy imports only
policy/base.py. This is the split of LeRobot's ``configs/policies.py`` (config classes
registered by name) and ``policies/factory.py`` (a policy's modules imported only when a
factory needs them).

Standard library only: importing this module loads neither torch nor a policy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import is_dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from policy.base import Policy, PolicyConfig

# The modules that register this project's policies, imported the first time the registry is
# read. Adding a policy adds its package here; a module outside this list registers its
# policy by being imported before the factory is called.
POLICY_MODULES: tuple[str, ...] = ("policy.rt1", "policy.gato")

_POLICIES: dict[str, type[Policy]] = {}

PolicyClass = TypeVar("PolicyClass", bound=type)


def register_policy(kind: str, config_class: type[PolicyConfig]
                    ) -> Callable[[PolicyClass], PolicyClass]:
    """Class decorator for a Policy subclass: sets its ``kind`` (the name saved in a
    checkpoint's config.json and the hydra node ``policy/<kind>_base``) and its
    ``config_class`` (the dataclass ``make_policy`` dispatches on), and records it."""
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"policy kind {kind!r}; expected an identifier such as 'rt1'")
    if not (isinstance(config_class, type) and is_dataclass(config_class)):
        raise TypeError(f"policy kind {kind!r}: config_class {config_class!r} is not a "
                        "dataclass; expected a PolicyConfig subclass")

    def decorate(policy_class: PolicyClass) -> PolicyClass:
        known = _POLICIES.get(kind)
        if known is not None and _name(known) != _name(policy_class):
            raise ValueError(f"policy kind {kind!r} is registered twice: by {_name(known)} and "
                             f"by {_name(policy_class)}")
        for other, klass in _POLICIES.items():
            if other != kind and klass.config_class is config_class:
                raise ValueError(f"{config_class.__name__} already configures policy kind "
                                 f"{other!r}; give {kind!r} a config class of its own")
        policy_class.kind = kind
        policy_class.config_class = config_class
        _POLICIES[kind] = policy_class  # type: ignore[assignment]
        return policy_class

    return decorate


def policies() -> dict[str, type[Policy]]:
    """Every registered kind -> its Policy class, after importing :data:`POLICY_MODULES`."""
    for module in POLICY_MODULES:
        importlib.import_module(module)
    return dict(_POLICIES)


def _name(klass: type) -> str:
    return f"{klass.__module__}.{klass.__qualname__}"
