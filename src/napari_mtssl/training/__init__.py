"""The training engine, in rooms by purpose, each importing only the rooms below it:

* ``running``: the pipeline over a workspace, its units, executors and jobs, the saved models;
* ``planning``: the plan (shape, steps, budget) and how many units train at once;
* ``loop``: the step loop (trainer, the method's stages and loss terms, losses, metrics,
  checkpoints, pace) and stage 2's stored ensemble;
* ``prediction``: sliding-window inference, post-processing, ranking of slices to correct;
* ``data``: preprocessing and the slices, patches and batches models train on;
* ``config`` and ``errors``: what every room shares.

Nothing is imported here on purpose: the api reaches ``running.jobs`` and ``running.saved``
from the viewer and must not pull in torch; import the modules you need.
"""
