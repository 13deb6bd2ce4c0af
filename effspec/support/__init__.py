"""Foundations every layer may use: errors, path naming, CPUs, the torchvision guard, atomic output."""
