"""Budgets: an image's size, layers and wasted bytes, and its time to ready and to build,
held to limits like the layer cache (``check``), from a walk of its layers (``layers``)."""
