"""export: trained rsz runs -> ONNX graphs, FP16 variants and TensorRT engines, in a bundle."""
