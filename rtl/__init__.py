"""Amaranth components of the sparse ViT accelerator."""
