"""Checks and masks over parameter pytrees, shared by the warm-start transforms and loaders.

A *mask* is a tree with the structure of the parameters and one Python or array boolean per
leaf (as in ``optax.masked``): true leaves are touched by a transform, false ones are left as
they are. ``module_mask`` builds one from top-level layer names, ``path_mask`` from a predicate
on the path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np


def leaf_paths(tree) -> list[str]:
    """The paths of a tree's leaves as ``'a/b/c'`` strings, in flatten order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def path_str(path) -> str:
    """Formats a JAX key path as ``'a/b/c'``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def check_same_structure(name_a: str, a, name_b: str, b, *, shapes: bool = True) -> None:
    """Raises ``ValueError`` naming the first path where trees ``a`` and ``b`` differ.

    Compares the set of leaf paths and, with ``shapes``, each leaf's shape.
    """
    fa = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(a)[0]}
    fb = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(b)[0]}
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    if only_a or only_b:
        raise ValueError(
            f"{name_a} and {name_b} have different structures: only in {name_a}: "
            f"{only_a[:5] or 'nothing'}; only in {name_b}: {only_b[:5] or 'nothing'}. "
            f"Pass trees of the same model (e.g. both from init_variables of one architecture)."
        )
    if shapes:
        for path, x in fa.items():
            sa, sb = np.shape(x), np.shape(fb[path])
            if sa != sb:
                raise ValueError(
                    f"{name_a} and {name_b} differ in shape at {path!r}: {sa} vs {sb}. "
                    f"They must come from the same architecture and class count."
                )


def path_mask(tree, predicate: Callable[[str], bool]):
    """A mask that is true where ``predicate('a/b/c')`` is true for the leaf's path."""
    return jax.tree_util.tree_map_with_path(lambda p, _: bool(predicate(path_str(p))), tree)


def module_mask(params, names: Iterable[str]):
    """A mask that is true for every leaf under the top-level layers named in ``names``.

    >>> module_mask({'head': {'kernel': 1, 'bias': 2}, 'hidden_0': {'kernel': 3}}, ['head'])
    {'head': {'bias': True, 'kernel': True}, 'hidden_0': {'kernel': False}}
    """
    names = set(names)
    missing = names - set(params)
    if missing:
        raise ValueError(
            f"module_mask: no top-level layer named {sorted(missing)}; the layers are "
            f"{sorted(params)}"
        )
    return {k: jax.tree.map(lambda _: k in names, v) for k, v in params.items()}


def check_mask(mask, tree, tree_name: str = "params") -> None:
    """Raises ``ValueError`` unless ``mask`` has ``tree``'s structure with boolean leaves."""
    if jax.tree.structure(mask) != jax.tree.structure(tree):
        check_same_structure("mask", mask, tree_name, tree, shapes=False)
        raise ValueError(
            f"mask does not have the tree structure of {tree_name}; build it with "
            f"wsjax.trees.module_mask or path_mask"
        )
    for path, m in zip(leaf_paths(mask), jax.tree.leaves(mask)):
        dtype = m.dtype if hasattr(m, "dtype") else np.asarray(m).dtype
        if dtype != bool:
            raise ValueError(f"mask leaf {path!r} is {m!r}; mask leaves must be booleans")
