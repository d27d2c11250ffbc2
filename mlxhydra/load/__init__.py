"""Building the model: architecture lookup, weight files, quantization specs and rules, pre-quantized and runtime quantization, the weights cache and the loader."""
