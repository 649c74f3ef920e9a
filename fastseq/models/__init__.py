"""Classic sequence models on fastseq's layers: CharLM (LSTM), GPT (transformer) and
Seq2Seq with additive attention, with training, sampling and pictures behind the CLI."""
from .char_lm import CharLM
from .gpt import GPT
from .seq2seq import Seq2Seq

__all__ = ["CharLM", "GPT", "Seq2Seq"]
