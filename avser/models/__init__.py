"""PyTorch modules named after the paper's boxes, and KernelLDA."""
