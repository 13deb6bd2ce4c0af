"""effspec: compile EfficientNet-family YAML specs into standalone PyTorch and Keras code."""

__version__ = "0.1.0"
