"""effspec's Keras trainer: what every generated ``generated/keras/<model>/train.py`` calls."""
