"""Former home of LSTM and LSTMCell (now fastseq/nn/lstm.py), kept so that whole modules
pickled (torch.save(model)) before the move still load."""
from .lstm import LSTM, LSTMCell  # noqa: F401
