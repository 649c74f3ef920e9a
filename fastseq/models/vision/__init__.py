"""Vision-and-sequence models: an attending image captioner, CNN classifiers with and
without SelfAttention2d, the recurrent attention model (glimpses learned by REINFORCE)
and a per-frame video labeller, all on data generated offline."""
