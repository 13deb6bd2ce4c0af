"""Weights in and out: the manifest shared with the IR, torch <-> Keras conversion, one importer per source, export."""
