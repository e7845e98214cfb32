"""The step loop: one model's training (the trainer), the loss terms a model of the method
learns from (the stages), the losses, metrics, checkpoints, the pace that re-times a unit while
it trains, and stage 2's stored ensemble of teachers.

Nothing is imported here; import the modules you need.
"""
