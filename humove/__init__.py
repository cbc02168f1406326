"""humove: build the HuMoVe dataset and train EchoMotion on it."""

__version__ = "0.1.0"
