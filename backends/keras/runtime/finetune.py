"""Fine-tuning in the Keras trainer: --init loaded into the network, and the freezing of each epoch
(the rules and the file reading: ``backends/finetune.py``)."""

from __future__ import annotations

import argparse
from types import ModuleType

import keras

from effspec.support.errors import TrainingError

from ...finetune import InitError, Phase, keras_manifest, phase_at, prepare


def initialize(network: keras.Model, args: argparse.Namespace, net: ModuleType, verbose: bool) -> None:
    """Load --init into the generated Keras ``network`` through the weight manifest; the classifier
    may be new (it keeps the network's fresh initialization)."""
    from effspec.weights.convert import keras_layer_weights, set_keras_weights, to_keras_array

    try:
        manifest = keras_manifest(args, net)
        plan = prepare(args, net, "keras", {entry.name: entry.shape for entry in manifest}, verbose)
    except InitError as exc:
        raise TrainingError(str(exc)) from None
    layers = keras_layer_weights(network)
    for layer, entries in manifest.keras_layers.items():
        for entry in entries:
            if entry.name in plan.assign:
                layers[layer][entry.keras.index] = to_keras_array(entry, plan.assign[entry.name])
    set_keras_weights(manifest, network, layers)


class Freezer:
    """Applies the epoch's phase: frozen layers are not trainable, which in Keras also runs their batch
    norms in inference mode (statistics fixed); the train step is traced again when it changes."""

    def __init__(self, model: keras.Model, network: keras.Model, args: argparse.Namespace) -> None:
        self.model = model  # compiled: its train step is traced again
        self.network = network  # the generated model, whose layers carry the canonical names
        self.args = args
        self.phase: Phase | None = None

    def apply(self, epoch: int) -> None:
        phase = phase_at(self.args, epoch)
        changed = phase != self.phase and (phase.freezes or (self.phase is not None and self.phase.freezes))
        self.phase = phase
        if not changed:
            return
        for layer in self.network.layers:
            if layer.weights:
                layer.trainable = not phase.frozen(layer.name, isinstance(layer, keras.layers.BatchNormalization))
        self.model.make_train_function(force=True)
