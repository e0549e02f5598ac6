"""What each parameter leaf is, and which units a layer owns: the selection every intervention
works through.

*Roles.* A label function ``label_fn(path, leaf) -> role`` names each parameter leaf one of
``ROLES``. ``default_roles`` labels any Flax model built from ``nn.Conv``, ``nn.Dense`` and
``nn.BatchNorm`` (wsjax's models included): kernels by rank, the layer called ``head`` as the
classifier, ``scale``/``bias`` beside each other as a normalization layer. ``role_mask`` turns
roles into the boolean masks of ``wsjax.trees``.

*Units.* ReDo and continual backprop replace hidden units: a unit is one output channel of a
layer, with its incoming kernel slice ``kernel[..., i]``, its bias, the normalization that
follows it, and its outgoing slice in the next layer's kernel. ``UnitLayer`` names those paths;
``unit_layers`` lists them for wsjax's MLP and ResNet-18. The activations of the units are the
ones the models sow into ``'intermediates'`` (``activations``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from wsjax.models import sown_activations
from wsjax.trees import path_str

ROLES = ("conv_kernel", "dense_kernel", "bias", "norm_scale", "norm_bias", "head_kernel",
         "head_bias")
# The leaves of convolutions and linear layers (BatchNorm's affine parameters excluded): what
# DASH and the DASH repository's shrink-perturb touch.
LINEAR_ROLES = ("conv_kernel", "dense_kernel", "bias", "head_kernel", "head_bias")
# Every weight with a ``.weight`` in PyTorch (kernels and BatchNorm scales), no biases: what the
# DASH repository's L2 Init penalizes.
WEIGHT_ROLES = ("conv_kernel", "dense_kernel", "head_kernel", "norm_scale")


def default_roles(params, *, head: str = "head"):
    """A tree of role names with ``params``' structure (see the module docstring).

    A leaf under a top-level layer called ``head`` is ``head_kernel`` or ``head_bias``; a
    ``kernel`` of rank 4 is ``conv_kernel``, of rank 2 ``dense_kernel``; a ``scale`` is
    ``norm_scale`` and a ``bias`` beside a ``scale`` is ``norm_bias``; any other ``bias`` is
    ``bias``. Raises ``ValueError`` naming a leaf that fits none (pass ``label_fn`` to
    ``role_mask`` for such models).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat]
    siblings = {}
    for p in paths:
        parent, _, name = p.rpartition("/")
        siblings.setdefault(parent, set()).add(name)
    roles = []
    for p, (_, leaf) in zip(paths, flat):
        parent, _, name = p.rpartition("/")
        ndim = jnp.ndim(leaf)
        if p.split("/")[0] == head and name in ("kernel", "bias"):
            role = f"head_{name}"
        elif name == "kernel" and ndim == 4:
            role = "conv_kernel"
        elif name == "kernel" and ndim == 2:
            role = "dense_kernel"
        elif name == "scale":
            role = "norm_scale"
        elif name == "bias":
            role = "norm_bias" if "scale" in siblings[parent] else "bias"
        else:
            raise ValueError(f"default_roles: no role for leaf {p!r} (shape {jnp.shape(leaf)}); "
                             f"pass label_fn(path, leaf) -> one of {ROLES}")
        roles.append(role)
    return jax.tree.unflatten(treedef, roles)


def label_tree(params, label_fn: Callable | None = None):
    """Roles of ``params``' leaves: ``label_fn(path: str, leaf) -> role`` or ``default_roles``.
    Raises ``ValueError`` for a role not in ``ROLES``."""
    if label_fn is None:
        roles = default_roles(params)
    else:
        roles = jax.tree_util.tree_map_with_path(lambda p, x: label_fn(path_str(p), x), params)
    for path, role in zip((path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(
            params)[0]), jax.tree.leaves(roles)):
        if role not in ROLES:
            raise ValueError(f"leaf {path!r} has role {role!r}; roles are {ROLES}")
    return roles


def role_mask(params, roles: Iterable[str], label_fn: Callable | None = None):
    """A ``wsjax.trees`` mask that is true for the leaves whose role is in ``roles``.

    >>> role_mask({'head': {'kernel': w, 'bias': b}}, ['head_kernel'])
    {'head': {'bias': False, 'kernel': True}}
    """
    roles = tuple(roles)
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; roles are {ROLES}")
    return jax.tree.map(lambda r: r in roles, label_tree(params, label_fn))


@dataclasses.dataclass(frozen=True)
class UnitLayer:
    """One layer of replaceable hidden units, by ``'a/b'`` paths into the params tree.

    - ``name``: the layer, whose kernel is ``<name>/kernel`` (bias ``<name>/bias`` when it has
      one) and whose activations are sown as ``<name>_act`` in ``'intermediates'``;
    - ``norm``: the normalization layer right after it (``scale``/``bias`` in params,
      ``mean``/``var`` in batch_stats), or ``None``;
    - ``outgoing``: the next layer's kernel path; its input axis (``-2``) holds the units, or,
      for a flattened NHWC feature map, ``positions * units`` rows in which unit ``c`` owns rows
      ``p * units + c`` (channels interleave; see ``outgoing_rows``).
    """

    name: str
    outgoing: str
    norm: str | None = None


def unit_layers(params) -> tuple[UnitLayer, ...]:
    """The ``UnitLayer``s of a wsjax MLP (``hidden_i`` into the next hidden layer or ``head``)
    or ResNet-18 (the stem and every block conv, each into the conv that reads its output, the
    last into ``head``; shortcut convs are skipped, as in continual backprop's ResNet form).
    Raises ``ValueError`` for other trees: build the tuple by hand for them."""
    names = list(params)
    hidden = sorted((n for n in names if re.fullmatch(r"hidden_\d+", n)),
                    key=lambda n: int(n.split("_")[1]))
    if hidden and "head" in names:
        nexts = hidden[1:] + ["head"]
        return tuple(UnitLayer(h, f"{n}/kernel") for h, n in zip(hidden, nexts))
    blocks = sorted((n for n in names if re.fullmatch(r"stage\d+_block\d+", n)),
                    key=lambda n: tuple(int(x) for x in re.findall(r"\d+", n)))
    if "stem_conv" in names and blocks and "head" in names:
        chain = [("stem_conv", "stem_bn")]
        for b in blocks:
            chain += [(f"{b}/conv1", f"{b}/bn1"), (f"{b}/conv2", f"{b}/bn2")]
        outs = [f"{n}/kernel" for n, _ in chain[1:]] + ["head/kernel"]
        return tuple(UnitLayer(n, o, norm) for (n, norm), o in zip(chain, outs))
    raise ValueError(f"unit_layers knows wsjax's MLP and ResNet-18; these params have layers "
                     f"{names[:8]}: list UnitLayer(name, outgoing, norm) by hand")


def get_path(tree, path: str):
    """The subtree at ``'a/b/c'`` (a ``KeyError`` names the missing part)."""
    node = tree
    for part in path.split("/"):
        if part not in node:
            raise KeyError(f"{path!r}: no {part!r} here; keys are {sorted(node)}")
        node = node[part]
    return node


def set_path(tree, path: str, value):
    """A copy of nested dict ``tree`` with ``'a/b/c'`` replaced by ``value`` (the rest shared)."""
    head, _, rest = path.partition("/")
    if head not in tree:
        raise KeyError(f"{path!r}: no {head!r} here; keys are {sorted(tree)}")
    new = dict(tree)
    new[head] = set_path(tree[head], rest, value) if rest else value
    return new


def outgoing_rows(unit_mask, rows: int):
    """The rows of an outgoing kernel owned by the masked units: ``unit_mask`` (C,) booleans to
    (rows,) booleans. ``rows == C`` is the plain case; ``rows == P * C`` is a flattened NHWC map,
    where row ``r`` belongs to channel ``r % C`` (channels interleave, so tiling the mask is
    right and repeating each channel over a contiguous block is not)."""
    c = unit_mask.shape[-1]
    if rows % c:
        raise ValueError(f"outgoing kernel has {rows} input rows, not a multiple of the layer's "
                         f"{c} units")
    return jnp.tile(unit_mask, rows // c)


def activations(model, variables, images, *, train: bool = False) -> dict:
    """The post-activation outputs the model sows (as ``<layer>_act``), keyed by layer path
    ``{'a/b': array}`` (e.g. ``hidden_0``, ``stage1_block0/conv1``: the ``UnitLayer`` names).
    Evaluation mode by default: BatchNorm uses its running statistics and ``batch_stats`` is
    never changed (the diagnostics must not move them)."""
    _, state = model.apply(dict(variables), images, train=train,
                           mutable=["intermediates", "batch_stats"] if train else
                           ["intermediates"])
    return sown_activations(state.get("intermediates"))
