"""MMDiT block pruning (Neodragon §3.3): the pieces the ``prune-blocks`` pass orchestrates, one concern per file.

* :mod:`~neoc.prune.surgery`     remove blocks from a :class:`~neoc.models.mmdit.PyramidMMDiT`, block index maps
* :mod:`~neoc.prune.importance`  BI_k = 1 - E[cos(z_k, z_{k+1})] for visual and text tokens (forward hooks)
* :mod:`~neoc.prune.visual`      automated visual impact: drop each block alone, compare the generated videos
* :mod:`~neoc.prune.selection`   which blocks go: ``keep`` + ``policy`` (visual | text | average | combined | impact)
* :mod:`~neoc.prune.data`        toy latent training set (encoded with the pipeline's VAE) and flow-matching batches
* :mod:`~neoc.prune.finetune`    Stage 1 (data flow matching) and Stage 2 (full-teacher distillation) objectives
* :mod:`~neoc.prune.plot`        Fig. 7-style score plot and Fig. 8-style drop-one frame grid
"""
