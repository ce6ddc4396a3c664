"""Data layer: dataset readers, training targets, synthetic data, prepared datasets."""
