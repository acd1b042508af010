"""Scheduling policies for shared LM pools, by name.

    from alto_bus.scheduling import make_policy, register_policy, Policy

    policy = make_policy("prompt-aware")            # the default
    placement = policy.place(RoundInput(instances=[...], figures=..., previous=...))
    inst = policy.choose("verify", placement, loads)

A user policy is a ``Policy`` subclass registered under a new name::

    @register_policy("my-policy")
    class Mine(Policy): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .affinity import Affinity
from .base import (
    Decision,
    InstanceId,
    Loads,
    Placement,
    Policy,
    Prompt,
    PromptFigures,
    RoundInput,
    Spills,
)
from .least_loaded import LeastLoaded
from .preble import Preble
from .prompt_aware import PromptAware
from .round_robin import RoundRobin
from .sglang_cache_aware import SGLangCacheAware

DEFAULT_POLICY = "prompt-aware"

_REGISTRY: dict[str, type[Policy]] = {}
P = TypeVar("P", bound=type[Policy])


def register_policy(name: str, *, replace: bool = False) -> Callable[[P], P]:
    """Class decorator: make ``cls`` available as ``make_policy(name)``.

    A name already taken by another class is an error unless ``replace=True``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a policy name must be a non-empty string, got {name!r}")

    def deco(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise ValueError(f"policy {name!r} must be a subclass of Policy, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old is not cls and not replace:
            raise ValueError(f"policy name {name!r} is already taken by {old.__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def policy_class(name: str) -> type[Policy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; known: "
                         f"{', '.join(available_policies())}") from None


def make_policy(name: str = DEFAULT_POLICY, **params: Any) -> Policy:
    """A new policy instance; unknown or bad parameters raise ValueError."""
    cls = policy_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for policy {name!r}: {exc}") from None


def available_policies() -> list[str]:
    return sorted(_REGISTRY)


for _cls in (RoundRobin, LeastLoaded, Affinity, PromptAware, SGLangCacheAware, Preble):
    register_policy(_cls.name)(_cls)

__all__ = [
    "DEFAULT_POLICY", "Affinity", "Decision", "InstanceId", "LeastLoaded", "Loads",
    "Placement", "Policy", "Preble", "Prompt", "PromptAware", "PromptFigures", "RoundInput",
    "RoundRobin", "SGLangCacheAware", "Spills", "available_policies", "make_policy", "policy_class",
    "register_policy",
]
