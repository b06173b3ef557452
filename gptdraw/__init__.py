"""gptdraw: train a GPT-2 to draw. Captions and VQGAN image codes form one sequence."""

__version__ = "0.1.0"
