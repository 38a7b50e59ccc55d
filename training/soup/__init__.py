"""MEHL-Soup: learned soups of fine-tunes of one base, a batch of members at a time."""
