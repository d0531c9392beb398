"""What every part shares: errors, atomic writes, the typed configuration, params, paths, precision, batching,
pooling, metrics, tables."""
