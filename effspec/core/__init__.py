"""The compiler core: YAML -> validated spec -> scaled -> lowered IR -> verified and analysed.

Imports only effspec.support, never torch or TensorFlow (docs/architecture.md)."""
