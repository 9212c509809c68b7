"""Foreground masks: segmenters, and masks into the model frame and onto the patch grid."""
