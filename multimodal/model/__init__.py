"""The fusion model: data module, encoders and fusion, losses, metrics, cross-validation."""
