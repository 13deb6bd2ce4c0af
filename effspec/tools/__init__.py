"""User tools built on the compiler: scale, search, plot, diagram, info."""
