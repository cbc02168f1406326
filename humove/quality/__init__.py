"""Image-quality and aesthetic scoring of video frames.

- `technical`: the offline `technical-quality` score (sharpness, exposure, contrast, noise) on its own 0–10
  scale. It measures whether a frame is technically usable; it is NOT an aesthetic model.
- `aesthetic`: the real aesthetic predictors, LAION improved aesthetic predictor v2 (CLIP ViT-L/14 + MLP) and
  aesthetic-predictor v2.5 (SigLIP so400m + MLP), both on the ≈ 1–10 scale of their training ratings.
- `frames`: which frames of a clip are scored, and their decoding.
"""
