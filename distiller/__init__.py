"""distiller: versioned distilled datasets (MTT, RaT-BPTT, Boost-DD)."""

__version__ = "0.1.0"
