"""Evaluation: the toy-world quality score (``quality.score_videos``), its probe (``probe``), and the real
VBench adapter (``vbench_adapter``), which only runs when VBench and its weights are present."""
