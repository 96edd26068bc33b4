"""Fast evaluation of wired networks: remove dead nodes, run the edges with a chosen backend.

``removal.py`` decides what is kept (a ``plan.py`` plan), ``backends.py`` runs one Block's
edges, ``network.py`` assembles the shrunk model (``fast_eval``), ``export.py`` writes it as
TorchScript, ``counting.py`` counts the multiply-adds a forward executes.
"""

from models.graphs.fast.backends import BACKENDS, dgl_available, make_block
from models.graphs.fast.network import FastGraphNet, fast_eval, make_plan

__all__ = ["BACKENDS", "FastGraphNet", "dgl_available", "fast_eval", "make_block", "make_plan"]
