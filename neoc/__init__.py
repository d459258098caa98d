"""neoc: a compiler for pyramidal text-to-video diffusion pipelines (Neodragon recipe, ICLR 2026)."""

__version__ = "0.1.0"
