"""cellserve: a stateful gRPC service for recurrent (LSTM/GRU) character models."""

__version__ = "0.1.0"
