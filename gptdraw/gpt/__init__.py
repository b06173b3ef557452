"""The GPT that learns captions and image codes as one language.

config.py (model, training and sampling configs, presets; torch-free), model.py (GPT-2 and its
loss), sampling.py (drawing codes: KV cache, guidance), lora.py (LoRA adapters), optimizer.py
(AdamW, Adafactor, Muon), checkpoint.py (exact-resume checkpoints), run_log.py (metrics, loss
curve, TensorBoard, W&B), train.py (the Accelerate training loop), finetune.py (training on from
a trained model directory). The names most users need are exported by `gptdraw` itself.
"""

__all__ = ["checkpoint", "config", "finetune", "lora", "model", "optimizer", "run_log", "sampling", "train"]
