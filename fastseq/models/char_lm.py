"""CharLM: character embedding -> multi-layer LSTM -> linear head over the vocabulary,
time-major (T, B) so truncated BPTT chunks come straight from the batched stream."""
import torch

from .layers import layers_for


class CharLM(torch.nn.Module):
    kind = "charlm"

    def __init__(self, vocab_size: int, embed: int = 64, hidden: int = 256, layers: int = 2,
                 dropout: float = 0.0, impl: str = "fastseq"):
        super().__init__()
        nn, _ = layers_for(impl)
        self.config = dict(vocab_size=vocab_size, embed=embed, hidden=hidden, layers=layers,
                           dropout=dropout, impl=impl)
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens, state=None):
        """tokens (T, B) int64 -> logits (T, B, V), (h, c) each (layers, B, hidden)."""
        out, state = self.lstm(self.drop(self.embed(tokens)), state)
        return self.head(self.drop(out)), state

    def hidden_states(self, tokens, state=None):
        """Every layer's hidden output at every step: (layers, T, B, hidden), for the
        cell-activation view. Runs the stack one layer at a time with the same weights."""
        nn, _ = layers_for(self.config["impl"])
        x = self.embed(tokens)
        outs = []
        for layer in range(self.lstm.num_layers):
            single = nn.LSTM(x.shape[-1], self.lstm.hidden_size, 1).to(x.device, x.dtype)
            single.load_state_dict({name.replace(f"_l{layer}", "_l0"): p
                                    for name, p in self.lstm.state_dict().items()
                                    if name.endswith(f"_l{layer}")})
            layer_state = None if state is None else (state[0][layer:layer + 1], state[1][layer:layer + 1])
            x, _ = single(x, layer_state)
            outs.append(x)
        return torch.stack(outs)
