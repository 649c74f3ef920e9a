"""Floating-point operation counts of one benchmarked call: the GEMM work only.

Conventions (a multiply-add counts 2 flops; pointwise math, softmax, norms, Adam ignored):
- Recurrent layer (LSTM: G = 4 gates, GRU: G = 3, RNN: G = 1), per layer l with input
  width I_l (I for the first layer, H after): input projection 2*T*B*I_l*G*H plus the
  recurrent GEMMs 2*T*B*H*G*H. A cell is the same with T = 1.
- Attention: QK^T and PV, 4*B*H*L*S*D forward; causal keeps half the (L, S) matrix.
- Training (forward + backward): GEMM layers x3 (the backward computes the input and the
  weight gradients, each as costly as the forward). Attention x3.5: its backward is 2.5x
  its forward (the FlashAttention convention: QK^T recomputed, then dV, dP, dQ, dK).
- MultiheadAttention: Q, K, V and output projections 8*B*L*E^2 plus attention with
  H*D = E; the encoder layer adds its feed-forward 4*B*L*E*ff.
- Models: the layers above plus the vocabulary head 2*tokens*width*V.
"""

GEMM_TRAIN = 3.0
ATTENTION_TRAIN = 3.5
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _mode(forward, mode, factor):
    return forward * (factor if mode == "train" else 1.0)


def recurrent(op, T, B, I, H, layers, mode, directions=1):
    g = GATES[op]
    # A layer above a bidirectional one reads both directions' outputs (2H features).
    forward = directions * sum(2.0 * T * B * g * H * ((I if layer == 0 else directions * H) + H)
                               for layer in range(layers))
    return _mode(forward, mode, GEMM_TRAIN)


def attention_forward(B, H, L, S, D, causal):
    return 4.0 * B * H * L * S * D * (0.5 if causal else 1.0)


def attention(B, H, L, S, D, causal, mode):
    return _mode(attention_forward(B, H, L, S, D, causal), mode, ATTENTION_TRAIN)


def transformer_block(B, L, E, ff, causal, mode):
    """Self-attention (projections + attention) plus an optional feed-forward of width ff."""
    gemms = 8.0 * B * L * E * E + 4.0 * B * L * E * ff
    return _mode(gemms, mode, GEMM_TRAIN) + attention(B, 1, L, L, E, causal, mode)


def charlm(T, B, E, H, layers, V):
    return recurrent("lstm", T, B, E, H, layers, "train") + _mode(2.0 * T * B * H * V, "train", GEMM_TRAIN)


def gpt(T, B, D, layers, V):
    blocks = layers * transformer_block(B, T, D, 4 * D, True, "train")
    return blocks + _mode(2.0 * T * B * D * V, "train", GEMM_TRAIN)
