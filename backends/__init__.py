"""Code-generation backends, one package per target (installed as ``effspec.backends``)."""
