"""Deployment rewrites of pipeline components (Neodragon §4.1): the modules the semantics-preserving passes
``static-shape``, ``precompute-inputs``, ``rope-rank-reduction``, ``mask-value`` and ``t5-fp16-rescale`` install.

Every class here registers a run-folder builder (``neoc.ir.components``), so a transformed pipeline saves and
loads like any other.
"""
