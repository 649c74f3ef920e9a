"""CLI for the vision models: `fastseq train captioner|cnn|fc|ram|video` and
`fastseq caption` (a caption and its attention row for an image)."""
import argparse

from ...cliargs import add_device_args, add_run_args, nonnegative_float, nonnegative_int, positive_float, positive_int
from ..layers import IMPLS
from .captioner import ATTENTIONS, FEEDS
from .data_digits import CANVASES
from .ram import CORES


def int_list(text):
    """argparse type: "32,64,64" -> [32, 64, 64], every entry a positive integer."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _common(p, name, steps, batch_size, lr, eval_every, run):
    p.add_argument("--steps", type=positive_int, default=steps, help="total optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--lr", type=positive_float, default=lr, help="peak Adam learning rate")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip gradients to this global norm")
    p.add_argument("--eval-every", type=positive_int, default=eval_every, help="evaluate and checkpoint every N steps")
    p.add_argument("--impl", choices=IMPLS, default="fastseq",
                   help="fastseq's fused layers or torch.nn's (same weights, for comparison)")
    add_run_args(p, f"{name}-<options>-<impl>-seed<N>")
    p.set_defaults(func=lambda args: _report(run(args)))


def _report(final):
    from ...progress import note
    note("final: " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()))  # once, under torchrun
    return 0


def _digits_args(p, canvas):
    p.add_argument("--canvas", choices=CANVASES, default=canvas,
                   help="digits alone on the canvas, or among fragments of other digits")
    p.add_argument("--canvas-size", type=positive_int, default=60)
    p.add_argument("--clutter", type=nonnegative_int, default=4, help="fragments per cluttered canvas")


def _train_captioner(args):
    from .train_captioner import train_captioner
    return train_captioner(args)


def _train_digits(kind):
    def run(args):
        from .train_digits import train_digits
        return train_digits(kind, args)
    return run


def _train_video(args):
    from .train_video import train_video
    return train_video(args)


def register(subparsers, train_subparsers):
    p = train_subparsers.add_parser("captioner", help="CNN + LSTM image captioner on generated shape scenes")
    _common(p, "captioner", steps=2000, batch_size=64, lr=3e-3, eval_every=250, run=_train_captioner)
    p.add_argument("--attention", choices=ATTENTIONS, default="soft",
                   help="none: the pooled feature starts the decoder; soft: attend over the grid every word")
    p.add_argument("--image-size", type=positive_int, default=32, help="scene side in pixels (a multiple of 2**pools)")
    p.add_argument("--train-scenes", type=positive_int, default=8000)
    p.add_argument("--val-scenes", type=positive_int, default=500, help="held-out scenes, and as many unseen-combination ones")
    p.add_argument("--channels", type=int_list, default=[32, 64, 64], help="CNN widths, comma-separated")
    p.add_argument("--pools", type=positive_int, default=2,
                   help="2x2 max-pools in the CNN (the first blocks'); the attention grid is image-size / 2**pools")
    p.add_argument("--kernels", type=int_list, default=None,
                   help="convolution size per CNN block (default: soft 3,1,1 so each cell sees "
                        "only its own pixels; none 3,3,3 so the pooled feature sees shapes whole)")
    p.add_argument("--coords", action=argparse.BooleanOptionalAction, default=None,
                   help="append each grid cell's (y, x) to its feature (default: on with soft attention)")
    p.add_argument("--feed", choices=FEEDS, default=None,
                   help="what the LSTM reads each word: the attended feature (context) or only where "
                        "it looked (where; the default with soft attention)")
    p.add_argument("--embed", type=positive_int, default=32)
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument("--attn-dim", type=positive_int, default=64)
    p.add_argument("--doubly-stochastic", type=nonnegative_float, default=0.0,
                   help="weight of the penalty that makes each cell's attention sum to ~1 over a caption")
    p.add_argument("--beam", type=positive_int, default=3, help="beam width of the final evaluation (1: greedy only)")

    p = train_subparsers.add_parser("cnn", help="small CNN digit classifier, optionally with SelfAttention2d")
    _common(p, "cnn", steps=1500, batch_size=64, lr=2e-3, eval_every=250, run=_train_digits("cnn"))
    _digits_args(p, "cluttered")
    p.add_argument("--channels", type=int_list, default=[16, 32, 64], help="CNN widths, comma-separated")
    p.add_argument("--self-attention", action="store_true", help="add SelfAttention2d after the second block")

    p = train_subparsers.add_parser("fc", help="fully connected digit classifier on the whole canvas (RAM's baseline)")
    _common(p, "fc", steps=3000, batch_size=64, lr=1e-3, eval_every=500, run=_train_digits("fc"))
    _digits_args(p, "translated")
    p.add_argument("--hidden", type=positive_int, default=256)

    p = train_subparsers.add_parser("ram", help="recurrent attention model: glimpses chosen by REINFORCE")
    _common(p, "ram", steps=6000, batch_size=64, lr=1e-3, eval_every=500, run=_train_digits("ram"))
    _digits_args(p, "translated")
    p.add_argument("--glimpses", type=positive_int, default=6)
    p.add_argument("--patch", type=positive_int, default=12, help="side of the finest glimpse patch")
    p.add_argument("--scales", type=positive_int, default=3, help="patches per glimpse, each twice the last")
    p.add_argument("--hidden", type=positive_int, default=256)
    p.add_argument("--core", choices=CORES, default="lstm")
    p.add_argument("--std", type=positive_float, default=0.12, help="location policy's standard deviation")

    p = train_subparsers.add_parser("video", help="per-frame labels of moving-digit clips (CNN + LSTM)")
    _common(p, "video", steps=1500, batch_size=32, lr=2e-3, eval_every=250, run=_train_video)
    p.add_argument("--frames", type=positive_int, default=8)
    p.add_argument("--size", type=positive_int, default=32)
    p.add_argument("--noise", type=nonnegative_float, default=0.5, help="std of the Gaussian pixel noise")
    p.add_argument("--train-clips", type=positive_int, default=2000)
    p.add_argument("--test-clips", type=positive_int, default=400)
    p.add_argument("--channels", type=int_list, default=[16, 32])
    p.add_argument("--hidden", type=positive_int, default=128)

    p = subparsers.add_parser("caption", help="caption an image with a trained captioner; write its attention row")
    p.add_argument("--checkpoint", required=True, help="a captioner's checkpoint.pt")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="a PNG or JPEG (resized to the model's scene size)")
    source.add_argument("--random", action="store_true", help="a freshly generated held-out scene")
    p.add_argument("--split", choices=("val", "unseen"), default="val", help="--random: which combinations")
    p.add_argument("--seed", type=int, default=0, help="--random scene and --temperature sampling")
    p.add_argument("--beam", type=positive_int, default=1, help="beam width (1 = greedy)")
    p.add_argument("--temperature", type=nonnegative_float, default=0.0, help="sample at this temperature (0 = greedy)")
    p.add_argument("--out", default="caption.png", help="the attention-row picture")
    p.add_argument("--impl", choices=IMPLS, default=None, help="override the layers the model was trained with")
    add_device_args(p)
    p.set_defaults(func=_run_caption)


def _run_caption(args):
    from .caption import caption_command
    return caption_command(args)
