"""One small module per checkpoint source. Each says how to identify the model a checkpoint came from,
what conventions (padding, batch-norm eps, preprocessing) it was trained with, and how to build the
source model for ``--verify``; the mapping itself is ``effspec.weights.structural`` for all of them."""
