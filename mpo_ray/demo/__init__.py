"""The demo: SmolLM2 with three DPO-trained LoRA policies, their objectives, training and plots."""
