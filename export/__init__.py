"""export: trained rsz runs -> ONNX graphs, FP16 variants and TensorRT engines, in a bundle."""

ENGINE_CHOICES = ("trt", "none", "auto")  # --engine: TensorRT required, none, or when a library imports
