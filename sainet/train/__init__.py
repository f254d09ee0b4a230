"""Training YOLOv8 through Ultralytics on sainet loaders. See `run.train` and `run.two_stage`."""

from sainet.settings import TrainSettings
from sainet.train.run import TrainRequest, TrainResult, resolve, restore_run, train, two_stage

__all__ = ["TrainSettings", "TrainRequest", "TrainResult", "resolve", "restore_run", "train", "two_stage"]
