"""Fast evaluation of the paper's wired networks: remove dead nodes, run the edges with a chosen
backend.

``removal.py`` decides what is kept (a ``plan.py`` plan, which ``MobileNetV1Like.fast_plan()``
and ``StaticNeuralGraph.fast_plan()`` return), ``backends.py`` runs one Block's edges,
``network.py`` assembles the shrunk model, ``export.py`` writes it as TorchScript,
``counting.py`` counts the multiply-adds a forward executes.
"""

from models.graphs.fast.backends import BACKENDS, BackendUnavailable, dgl_available, make_block
from models.graphs.fast.network import FastGraphNet

__all__ = ["BACKENDS", "BackendUnavailable", "FastGraphNet", "dgl_available", "make_block"]
