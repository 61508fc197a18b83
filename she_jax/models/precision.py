"""Mixed-precision matmuls: operands in the compute dtype, accumulation and result float32.

Every dot of the model goes through `einsum`. With a bfloat16 compute dtype both operands
are rounded to bfloat16 and the dot accumulates in float32 (`preferred_element_type`), the
form that runs on bf16 hardware paths (TPU MXU, GPU tensor cores, CPU AMX-BF16); XLA:CPU
takes its fast bf16 kernels only for this form, not for bf16 x bf16 -> bf16.

Its gradient keeps that form. JAX's own transpose of such a dot multiplies the float32
cotangent by the bfloat16 operand (a mixed f32 x bf16 dot, which XLA runs in float32), so
`einsum` has a custom VJP: the cotangent is rounded to bfloat16 and both gradient dots are
bf16 x bf16 -> f32, returning float32 (or the operand's own dtype) gradients. Parameters
and their gradients therefore stay float32; only matmul inputs are ever bfloat16. The
forward saves the bfloat16 copies of the operands for the backward pass (half the memory
of the float32 ones).

With a float32 compute dtype `einsum` is `jnp.einsum(..., preferred_element_type=float32)`:
the same program as a plain float32 einsum.

`resolve_dtype('auto')` picks the compute dtype for the machine: bfloat16 where bf16 x bf16
-> f32 matmuls have a fast path (TPU, GPU, a CPU with AMX-BF16), float32 elsewhere (an
AVX2-only CPU runs bf16 matmuls at or below its float32 rate; docs/results/bf16_sft_think).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp

AUTO = "auto"
COMPUTE_DTYPES = ("float32", "bfloat16")


@functools.lru_cache(maxsize=None)
def cpu_has_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU lists the `amx_bf16` flag (Linux /proc/cpuinfo; False elsewhere)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split(":", 1)[-1].split()
    except OSError:
        pass
    return False


def resolve_dtype(name: str) -> str:
    """A compute dtype name, with 'auto' resolved for this process's default backend:
    'bfloat16' on TPU and GPU and on a CPU with AMX-BF16, else 'float32'. Raises ValueError
    naming the accepted values for anything else."""
    if name in COMPUTE_DTYPES:
        return name
    if name != AUTO:
        raise ValueError(f"compute dtype {name!r} is not one of {[*COMPUTE_DTYPES, AUTO]}")
    backend = jax.default_backend()
    if backend in ("tpu", "gpu", "cuda", "rocm") or (backend == "cpu" and cpu_has_amx_bf16()):
        return "bfloat16"
    return "float32"


# One operand's labels: letters, optionally with one leading, inner or trailing '...'.
_OPERAND = re.compile(r"^[a-zA-Z]*(\.\.\.)?[a-zA-Z]*$")


def _labels(operand: str) -> list[str]:
    """'b...e' -> ['b', '...', 'e']: the labels, '...' as one."""
    head, _, tail = operand.partition("...")
    return list(head) + (["..."] if "..." in operand else []) + list(tail)


@functools.lru_cache(maxsize=None)
def gradient_equations(equation: str) -> tuple[str, str]:
    """The einsum equations of the two gradients of `equation` ('lhs,rhs->out').

    Returns (d lhs = einsum('out,rhs->lhs', g, rhs), d rhs = einsum('lhs,out->rhs', lhs, g)).
    Raises ValueError unless the equation has two operands and an explicit output, no label
    repeated within an operand, and every operand label also in the other operand or the
    output (so each gradient is a plain contraction, with no broadcast back).
    """
    spec = equation.replace(" ", "")
    inputs, arrow, out = spec.partition("->")
    operands = inputs.split(",")
    if not arrow or len(operands) != 2 or not all(
            _OPERAND.match(part) for part in (*operands, out)):
        raise ValueError(f"precision.einsum needs 'lhs,rhs->out' with letters and '...', got "
                         f"{equation!r}")
    lhs, rhs = operands
    for name, part, others in (("lhs", lhs, (rhs, out)), ("rhs", rhs, (lhs, out))):
        labels = _labels(part)
        if len(set(labels)) != len(labels):
            raise ValueError(f"precision.einsum {equation!r}: {name} repeats a label")
        known = set(_labels(others[0])) | set(_labels(others[1]))
        missing = [label for label in labels if label not in known]
        if missing:
            raise ValueError(f"precision.einsum {equation!r}: {name} label(s) {missing} are "
                             "summed within one operand; sum them before the einsum")
    return f"{out},{rhs}->{lhs}", f"{lhs},{out}->{rhs}"


def einsum(equation: str, x: jax.Array, y: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """`jnp.einsum(equation, x, y)` with operands in `dtype`, float32 accumulation and result.

    equation: 'lhs,rhs->out' (two operands, explicit output; see `gradient_equations`);
    x, y: any float dtype (cast to `dtype` here); dtype: the compute dtype (float32 or
    bfloat16). Returns the float32 product. Gradients: float32 dots for float32, and
    `dtype` x `dtype` -> float32 dots otherwise (module docstring), returned in x's / y's
    own dtypes.
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return jnp.einsum(equation, x, y, preferred_element_type=jnp.float32)
    gradient_equations(equation)  # validates before tracing the custom VJP
    return _low_precision_einsum(equation, dtype, jnp.dtype(x.dtype), jnp.dtype(y.dtype), x, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _low_precision_einsum(equation, dtype, x_dtype, y_dtype, x, y):
    return jnp.einsum(equation, x.astype(dtype), y.astype(dtype),
                      preferred_element_type=jnp.float32)


def _forward(equation, dtype, x_dtype, y_dtype, x, y):
    del x_dtype, y_dtype
    x, y = x.astype(dtype), y.astype(dtype)
    return jnp.einsum(equation, x, y, preferred_element_type=jnp.float32), (x, y)


def _backward(equation, dtype, x_dtype, y_dtype, saved, grad):
    x, y = saved
    grad = grad.astype(dtype)
    x_equation, y_equation = gradient_equations(equation)
    grad_x = jnp.einsum(x_equation, grad, y, preferred_element_type=jnp.float32)
    grad_y = jnp.einsum(y_equation, x, grad, preferred_element_type=jnp.float32)
    return grad_x.astype(x_dtype), grad_y.astype(y_dtype)


_low_precision_einsum.defvjp(_forward, _backward)
