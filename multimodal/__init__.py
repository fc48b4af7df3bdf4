"""multimodal: cancer genomics, expression and imaging phenomics fused for outcome prediction."""

__version__ = "0.1.0"
