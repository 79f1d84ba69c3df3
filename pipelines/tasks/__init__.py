"""The three task kinds, each an ensemble of members: segmentation, classification, detection."""
