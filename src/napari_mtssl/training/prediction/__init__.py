"""Prediction: sliding-window inference with Gaussian blending mapped back to the scan's grid,
post-processing, and the ranking of slices to correct from a model's predictions. The api,
the exporters and the correction loop reach it without climbing into training.

Nothing is imported here; import the modules you need.
"""
