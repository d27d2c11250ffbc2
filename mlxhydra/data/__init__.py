"""Data files shipped with mlxhydra (calibration text of the embedded model)."""
