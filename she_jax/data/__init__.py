"""Data: the ShopWorld generator, the 5-step CoT format, readers, the tfds builder, loaders.

Modules (import the one you need; this file imports nothing so `import she_jax.data` stays
fast and TensorFlow-free):
  shopworld     the synthetic e-commerce world -> records
  cot           render / parse the 5-step CoT, map generated tokens to steps
  readers       JSONL and Amazon ESCI files -> records
  tfds_builder  the `shop_relevance` tfds dataset (array_record, no TensorFlow)
  loader        grain pipelines: bucketed, padded, checkpointable batches
  stats         `python -m she_jax.data.stats`
Record schema and file formats: docs/data_formats.md.
"""
