"""Transform base class and selectors.

Transforms map ``(input_dict, target_dict) -> (input_dict, target_dict)`` for one example
inside ``tf.data`` (graph mode). Selectors address items: ``input/<path>`` or
``target/<path>`` (singular, as rslearn's code — its docs' plural forms are not
recognised), a bare path means the input dict; ``/`` separates nested keys. Images are
``[T, H, W, C]`` tensors.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf


def split_selector(input_dict: dict, target_dict: dict, selector: str) -> tuple[dict, list[str]]:
    """(dict addressed by the prefix, remaining path parts)."""
    if not isinstance(selector, str):
        raise TypeError(f"selector must be a string, got {type(selector).__name__} {selector!r}")
    if selector.startswith("input/"):
        d, rest = input_dict, selector[len("input/"):]
    elif selector.startswith("target/"):
        d, rest = target_dict, selector[len("target/"):]
    else:
        d, rest = input_dict, selector
    return d, [p for p in rest.split("/") if p] if rest else []


def selector_exists(input_dict: dict, target_dict: dict, selector: str) -> bool:
    cur: Any
    cur, parts = split_selector(input_dict, target_dict, selector)
    for part in parts:
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return True


def read_selector(input_dict: dict, target_dict: dict, selector: str) -> Any:
    cur: Any
    cur, parts = split_selector(input_dict, target_dict, selector)
    for i, part in enumerate(parts):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(f"selector {selector!r}: no item {'/'.join(parts[: i + 1])!r}")
        cur = cur[part]
    return cur


def write_selector(input_dict: dict, target_dict: dict, selector: str, value: Any) -> None:
    d, parts = split_selector(input_dict, target_dict, selector)
    if not parts:
        if not isinstance(value, dict):
            raise ValueError(f"selector {selector!r} designates a whole dict; the value must be a dict")
        if value is not d:
            d.clear()
            d.update(value)
        return
    cur = d
    for part in parts[:-1]:
        cur = cur[part]
    cur[parts[-1]] = value


class Transform:
    """Base class of transforms.

    Args:
        skip_missing: silently skip selectors whose item does not exist (default false).
    """

    def __init__(self, skip_missing: bool = False):
        self.skip_missing = skip_missing

    def apply_fn(self, fn: Callable[..., Any], input_dict: dict, target_dict: dict, selectors: list[str], **kwargs: Any) -> None:
        """Replaces each selected item ``x`` by ``fn(x, **kwargs)``."""
        for selector in selectors:
            if self.skip_missing and not selector_exists(input_dict, target_dict, selector):
                continue
            write_selector(input_dict, target_dict, selector, fn(read_selector(input_dict, target_dict, selector), **kwargs))

    def __call__(self, input_dict: dict, target_dict: dict) -> tuple[dict, dict]:
        return self.forward(input_dict, target_dict)

    def forward(self, input_dict: dict, target_dict: dict) -> tuple[dict, dict]:  # pragma: no cover
        raise NotImplementedError


class Identity(Transform):
    """No-op transform."""

    def forward(self, input_dict, target_dict):
        return input_dict, target_dict


class Sequential(Transform):
    """Applies transforms in order (rslearn ``rslearn.train.transforms.Sequential``).

    Args:
        *transforms: the transforms, applied first to last.
    """

    def __init__(self, *transforms: Transform):
        super().__init__()
        self.transforms = list(transforms)

    def forward(self, input_dict, target_dict):
        for t in self.transforms:
            input_dict, target_dict = t(input_dict, target_dict)
        return input_dict, target_dict


def parent_of(input_dict: dict, target_dict: dict, selector: str) -> tuple[dict | None, str | None]:
    """(the dict holding the selected item, its key), or (None, None) for a whole dict."""
    d, parts = split_selector(input_dict, target_dict, selector)
    if not parts:
        return None, None
    cur: Any = d
    for part in parts[:-1]:
        cur = cur[part]
    return cur, parts[-1]


def coin() -> tf.Tensor:
    """A fair random boolean (graph; the global TF RNG)."""
    return tf.random.uniform([]) < 0.5


def int_range(value: int | list[int] | tuple[int, int], name: str) -> tuple[int, int]:
    """``c`` -> (c, c + 1); ``[min, max]`` -> (min, max), validated (half-open range)."""
    if isinstance(value, int):
        return value, value + 1
    if len(value) != 2 or value[0] >= value[1]:
        raise ValueError(f"{name} must be an int or a [min, max) range with min < max, got {value!r}")
    return int(value[0]), int(value[1])
