"""Former home of GRU, RNN, GRUCell and RNNCell (now fastseq/nn/gru_rnn.py), kept so that
whole modules pickled (torch.save(model)) before the move still load."""
from .gru_rnn import GRU, RNN, GRUCell, RNNCell  # noqa: F401
