"""Step distillation for pyramidal flow matching (Neodragon §3.4), used by the ``distill-steps`` pass.

One concern per module:

* :mod:`neoc.distill.pyramid`        stage geometry (local/global sigma, timesteps), the denoiser call, the
                                     student's clean-latent parametrisation and the stage-wise renoising
                                     (paper eqs. 17-18, 23-25);
* :mod:`neoc.distill.sampling`       a Python mirror of the unrolled graph sampler (teacher data, first frame);
* :mod:`neoc.distill.data`           text conditions, training latents (toy world or teacher samples) and the
                                     per-step batches;
* :mod:`neoc.distill.dmd`            Pyramidal DMD (student + fake score, two-time-scale updates);
* :mod:`neoc.distill.progressive`    Pyramidal progressive distillation (student matches k teacher Euler steps);
* :mod:`neoc.distill.collapse_guard` NaN / frame-variance / colour-histogram checks that stop a collapsing run;
* :mod:`neoc.distill.train`          the driver the pass and the benchmark call (shared Trainer, resume).
"""
