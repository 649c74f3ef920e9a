"""Every input check: bad input raises a clear error naming the argument, the expected
and the actual value; nothing crashes the interpreter or returns a silent wrong answer."""
import pytest
import torch

import fastseq
import fastseq.nn as fnn


# ---- lstm ----


# ---- gru / rnn ----


# ---- attention (functional) ----


# ---- multihead attention / transformer ----


# ---- models / rl ----
