"""The image tokenizer: a VQGAN that turns pictures into grids of codes and back.

config.py (architecture and training configs, torch-free), model.py (ImageTokenizer on
diffusers' VQModel), train.py (`gptdraw train-vq`), discriminator.py and perceptual.py (the
adversarial and LPIPS losses), convert.py (pretrained VQGANs, loaded without running pickled
code), metrics.py (reconstruction quality).
"""

__all__ = ["config", "convert", "discriminator", "metrics", "model", "perceptual", "train"]
