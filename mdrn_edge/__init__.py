"""mdrn-edge: MDRN super-resolution for MRI, from training to a small GPU at the scanner.

The top-level package imports nothing heavy: torch lives only in ``models``, ``train`` and ``export``, so the
inference runtime stays NumPy-only on a Jetson.
"""

__version__ = "0.1.0"
