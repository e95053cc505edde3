"""A callback that slows every training batch down (to kill a run in the middle of an epoch)."""

import time

import keras


class SlowBatches(keras.callbacks.Callback):
    def __init__(self, seconds: float = 0.2):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)
