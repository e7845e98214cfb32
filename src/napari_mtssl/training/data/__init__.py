"""Training data: scans preprocessed to the plan's resolution (normalised, resampled, cached on
disk), and the slices, patches, batches and augmentation every model trains on.

Nothing is imported here; import the modules you need.
"""
