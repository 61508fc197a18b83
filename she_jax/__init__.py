"""she_jax: train LLMs that judge query–item relevance with chain-of-thought, in JAX.

Import the pieces you need from their modules (`she_jax.models`, `she_jax.sampling`,
`she_jax.tokenizer`, `she_jax.data`, `she_jax.train`, `she_jax.eval`); this package file stays light so
that `import she_jax` is fast in a notebook.
"""

__version__ = "0.1.0"
