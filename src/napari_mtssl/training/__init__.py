"""The training engine: config, slice data, losses, metrics, the step loop, the stages of the
method (baseline, stage 1 joint / pretrain + selection, all tasks jointly, stage 2 distillation),
inference, checkpoints, the pipeline over a workspace and the job runner.

Nothing is imported here on purpose: ``napari_mtssl.training.jobs`` is imported by the widgets
and must not pull in torch; import the submodules you need.
"""
