"""A model summary printed like ``torchinfo``: every layer with its type, output shape,
parameter shapes and counts and multiply-adds, then the totals and XLA's own count.

>>> print(summarize_model(create_model("mlp", 10)))

Layers are found by tracing one forward pass (``jax.eval_shape``: nothing is computed) with
``flax.linen.intercept_methods``, so any Flax model works. Multiply-adds are counted per
example, analytically, for the layers that do them: a ``Dense`` does in x out, a ``Conv``
kh x kw x in / groups x out per output pixel, a layer with a ``mult_adds(inputs, output)``
method what it says (the cheap substitutes of ``wsjax.models.substitutes``); normalization,
activations, pooling and the residual sums are not counted (as torchinfo does not). A second
total adds one per element of every BatchNorm output (its scale), as some papers count (the
Wide ResNet mult-adds of the Moonshine line of work, 5.24564e9 for WRN-28-10, are that total).
The footer adds XLA's cost analysis of the compiled forward pass at batch 1 (``flops``, which
counts a multiply-add as 2 and also counts the elementwise work), where the backend reports it.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass
class LayerRow:
    """One layer of a summary: ``path`` ('stage1_block0/conv1'), ``kind`` (its class),
    ``output`` shape at batch 1, its own ``param_shapes`` and ``params`` (not its
    children's), ``mult_adds`` per example and ``depth`` in the module tree."""

    path: str
    kind: str
    output: tuple
    param_shapes: dict
    params: int
    mult_adds: int
    depth: int


@dataclasses.dataclass
class ModelSummary:
    """A model's layers (``rows``, in call order) and totals; ``str()`` is the printed table."""

    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    state_size: int  # batch statistics and other non-trainable collections
    mult_adds: int
    xla_flops: float | None
    input_shape: tuple
    norm_mult_adds: int = 0  # BatchNorm's scale, one per output element

    def __str__(self) -> str:
        head = ("Layer (type)", "Output shape", "Param shapes", "Params", "Mult-adds")
        lines = []
        for r in self.rows:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in r.param_shapes.items())
            name = "  " * (r.depth - 1) + f"{r.path.split('/')[-1]} ({r.kind})"
            lines.append((name, str(r.output), shapes, f"{r.params:,}" if r.params else "-",
                          f"{r.mult_adds:,}" if r.mult_adds else "-"))
        widths = [max(len(row[i]) for row in [head, *lines]) for i in range(5)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
        rule = "=" * len(fmt.format(*head))
        out = [rule, fmt.format(*head), rule, *[fmt.format(*row) for row in lines], rule,
               f"Total params: {self.total_params:,}",
               f"Trainable params: {self.trainable_params:,}",
               f"Non-trainable state (batch statistics): {self.state_size:,}",
               f"Mult-adds per example: {self.mult_adds:,} ({self.mult_adds / 1e6:.2f} M)"]
        if self.norm_mult_adds:
            both = self.mult_adds + self.norm_mult_adds
            out.append(f"  with BatchNorm counted (one per element): {both:,} "
                       f"({both / 1e9:.5f} G)")
        if self.xla_flops is not None:
            out.append(f"XLA flops per example (forward, cost analysis): "
                       f"{self.xla_flops:,.0f} ({self.xla_flops / 1e6:.2f} M)")
        out.append(f"Input shape: {self.input_shape}")
        out.append(rule)
        return "\n".join(out)


def _size(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _mult_adds(module, inputs, output) -> int:
    """Multiply-adds per example of one call (see the module docstring)."""
    if hasattr(module, "mult_adds"):  # a layer that says what it does outside Dense and Conv
        return int(module.mult_adds(inputs, output))
    if isinstance(module, nn.Dense):
        return int(inputs.shape[-1]) * int(module.features)
    if isinstance(module, nn.Conv):
        kernel = math.prod(module.kernel_size)
        groups = module.feature_group_count
        pixels = math.prod(output.shape[1:-1])
        return pixels * kernel * (int(inputs.shape[-1]) // groups) * int(module.features)
    return 0


def _xla_flops(model, variables, x) -> float | None:
    """XLA's flop count of the forward pass, lowered from shapes alone (no weights made)."""
    try:
        compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
            variables, x).compile()
        cost = compiled.cost_analysis()
    except Exception:  # a backend without cost analysis: the table stands without it
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def summarize_model(model: nn.Module, input_shape=(32, 32, 3), *, xla: bool = True,
                    key=None) -> ModelSummary:
    """The summary of ``model`` for one input of ``input_shape`` (H, W, C); ``xla`` adds
    XLA's flop count of the compiled forward pass (it compiles the model once)."""
    x = jnp.zeros((1, *input_shape), jnp.float32)
    key = jax.random.PRNGKey(0) if key is None else key
    variables = jax.eval_shape(lambda k: model.init(k, x, train=False), key)
    params = variables.get("params", {})
    calls = []

    def record(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not context.module.path:
            return next_fun(*args, **kwargs)
        entry = [context.module, args[0] if args else None, None]
        calls.append(entry)  # before its children: the table reads top-down
        entry[2] = next_fun(*args, **kwargs)
        return entry[2]

    def forward(v, x):
        with nn.intercept_methods(record):
            return model.apply(v, x, train=False)

    jax.eval_shape(forward, variables, x)
    rows, seen = [], set()
    for module, inputs, out in calls:
        path = "/".join(module.path)
        if path in seen:  # a module called twice is listed once
            continue
        seen.add(path)
        own = params
        for part in module.path:
            own = own.get(part, {}) if isinstance(own, dict) else {}
        leaves = {k: tuple(v.shape) for k, v in own.items() if hasattr(v, "shape")}
        output = out[0] if isinstance(out, tuple) else out
        rows.append(LayerRow(
            path=path, kind=type(module).__name__,
            output=tuple(getattr(output, "shape", ())),
            param_shapes=leaves, params=int(sum(math.prod(s) for s in leaves.values())),
            mult_adds=_mult_adds(module, inputs, output) if inputs is not None else 0,
            depth=len(module.path)))
    state = {k: v for k, v in variables.items() if k != "params"}
    norm = sum(math.prod(r.output[1:]) for r in rows if "BatchNorm" in r.kind)
    return ModelSummary(
        rows=rows, total_params=_size(params), trainable_params=_size(params),
        state_size=_size(state), mult_adds=sum(r.mult_adds for r in rows),
        xla_flops=_xla_flops(model, variables, x) if xla else None, input_shape=tuple(input_shape),
        norm_mult_adds=norm)
