"""fastseq.ops.attention_settings: the CPU attention kernels' settings (GEMM path, tile sizes)
changed for a block of code and restored after it, for tests and tuning. The settings live in
fastseq._C (attention_settings() / set_attention_settings(**kw)); a kernel call reads them once."""
import contextlib

from .._ext import _C


@contextlib.contextmanager
def attention_settings(**changes):
    """Within the block, the CPU attention kernels use the given settings; the previous ones
    come back on exit (also on an exception). Yields the settings in force inside.

    gemm: "auto" (oneDNN brgemm where it serves this CPU, else the AVX-512 tile kernel, else
    the BLAS), "tile" (tile_gemm.h only; AVX-512 builds) or "blas". Tile sizes: block_q,
    block_k (forward), block_q_bwd, block_k_bwd (backward) of the tile/BLAS kernels and
    br_block_q (0 = by L), br_block_k, br_block_q_bwd, br_block_k_bwd (0 = by is_causal) of
    the brgemm ones.
    A bad name, type or range raises before anything changes. The settings are process-wide:
    other threads' calls inside the block see them too.

        with fastseq.ops.attention_settings(gemm="blas", block_q=32):
            out = fastseq.nn.functional.scaled_dot_product_attention(q, k, v)
    """
    before = _C.attention_settings()
    _C.set_attention_settings(**changes)
    try:
        yield _C.attention_settings()
    finally:
        _C.set_attention_settings(**before)
