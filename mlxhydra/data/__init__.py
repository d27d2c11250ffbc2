"""Data files shipped with mlxhydra: the embedded model's calibration text and fine-tuning demo."""
