"""Training YOLOv8 through Ultralytics on sainet loaders. See `run.train` and `run.two_stage`."""

from sainet.train.run import TrainRequest, TrainResult, resolve, train, two_stage

__all__ = ["TrainRequest", "TrainResult", "resolve", "train", "two_stage"]
