"""`fastseq caption`: load a captioner, caption one image (a file or a generated scene),
print the caption and draw the image with the attention map of every word in a row."""
import numpy as np
import torch
import torch.nn.functional as F

from .. import checkpoint
from .captioner import Captioner
from .data_shapes import ShapeScenes
from .train_captioner import MAX_WORDS, caption_text


def read_image(path, size):
    """A PNG/JPEG file -> (1, 3, size, size) float in [0, 1] (alpha dropped, grey to RGB)."""
    from matplotlib.image import imread

    try:
        pixels = np.asarray(imread(path), dtype=np.float32)
    except FileNotFoundError:
        raise FileNotFoundError(f"--image: no such file: {path!r}") from None
    except Exception as exc:  # PIL and matplotlib raise several types for a non-image
        raise ValueError(f"--image: {path!r} is not a readable image ({type(exc).__name__})") from exc
    if pixels.max() > 1:
        pixels = pixels / 255.0
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, -1)
    image = torch.from_numpy(np.ascontiguousarray(pixels[..., :3])).permute(2, 0, 1)[None]
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def caption_image(model, vocab, image, beam=1, temperature=0.0, seed=0):
    """-> (words, attention (T, N) or None) for image (1, 3, S, S)."""
    if beam > 1:
        tokens, attention, _ = model.beam_search(image, beam, MAX_WORDS)
    else:
        generator = torch.Generator().manual_seed(seed)
        out, attention = model.decode(image, MAX_WORDS, temperature, generator)
        tokens = out[0].tolist()
        attention = attention[0] if attention is not None else None
    words = caption_text(vocab, tokens)
    return words, attention[: len(words)] if attention is not None else None


def caption_command(args):
    from .viz import plot_caption_attention

    if args.beam > 1 and args.temperature > 0:
        raise ValueError("--beam and --temperature: choose beam search or sampling, not both")
    device = torch.device(args.device)  # checked by cliargs.device at parse time
    state = checkpoint.load(args.checkpoint, expect_kind=Captioner.kind)
    model = checkpoint.build_model(state, impl=args.impl, device=device)
    vocab = checkpoint.vocab_from_dict(state["vocab"])
    size = model.config["image_size"]
    if args.image:
        image = read_image(args.image, size)
    else:
        image = ShapeScenes(1, size, args.split, seed=10_000 + args.seed).images
    words, attention = caption_image(model, vocab, image.to(device), args.beam, args.temperature, args.seed)
    print(" ".join(words) or "(empty caption)")
    if attention is None:
        plot_caption_attention(image[0], [], None, model.grid, args.out, title=" ".join(words))
        print(f"wrote {args.out} (a captioner without attention: the image alone)")
    else:
        plot_caption_attention(image[0], words, attention.cpu(), model.grid, args.out, title=" ".join(words))
        print(f"wrote {args.out}")
    return 0
