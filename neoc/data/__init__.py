"""Data for neoc: the procedural toy world (``toyworld``), real mp4 clips (``videos``), prompt corpora (``prompts``)."""
