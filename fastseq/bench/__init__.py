"""The benchmark suite behind `fastseq bench`: fastseq against PyTorch's own path."""
