"""Cityscapes data: the official layout, the label table, joint transforms, a synthetic set."""
