"""One renderer per output format; each reads a Report and writes text."""
