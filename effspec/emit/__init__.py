"""Emission: the backend registry, template rendering, the compile pipeline, generated modules."""
