"""Cross-backend equivalence: weight manifest, conversion and `effspec check`."""
