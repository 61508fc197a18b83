"""she_jax: JAX/Flax training of chain-of-thought relevance judges for e-commerce search."""

from setuptools import find_packages, setup

# Every dependency is pinned: a research result must be reproducible from this file alone.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "chex==0.1.92",
    "numpy==2.4.6",
    "sentencepiece==0.2.3",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "grain==0.2.18",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "pandas==3.1.1",
    "pyarrow==26.0.1",
]

EXTRAS_REQUIRE = {
    # torch only here, and exactly 2.13.0: any looser pin resolves to a multi-GB CUDA build.
    "test": [
        "pytest==9.0.3",
        "pytest-xdist==3.8.0",
        "torch==2.13.0",
        "trl==1.16.0",
        "scipy==1.17.1",  # tests/test_resampling.py checks the bootstrap against scipy's
        "nbformat==5.11.1",
        "nbclient==0.11.0",
        "ipykernel==7.4.0",
    ],
    "notebook": [
        "nbformat==5.11.1",
        "nbclient==0.11.0",
        "ipykernel==7.4.0",
    ],
    # Accelerator back-ends for launch/ (TPU VMs, GPU clusters): jax's own plugin packages
    # at the versions jax 0.10.2's `jax[tpu]` / `jax[cuda12]` extras name, pinned exactly.
    "tpu": [
        "libtpu==0.0.42.1",
        "requests==2.34.2",
    ],
    "cuda12": [
        "jax-cuda12-plugin[with-cuda]==0.10.2",
        "jax-cuda12-pjrt==0.10.2",
    ],
}

setup(
    name="she_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["she_jax", "she_jax.*", "experiments", "bench", "launch"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
