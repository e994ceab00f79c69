"""continual-trainer: update deployed neural networks as new labelled data arrives."""

__version__ = "0.1.0"
