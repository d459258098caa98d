"""Importing this module registers the run-folder builders of every deployment component."""

from neoc.deploy import denoiser, text_encoder  # noqa: F401
