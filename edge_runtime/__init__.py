"""What runs on the clinic device: bundle loading, image decoding, the one preprocessing
function, inference on LiteRT / tflite-runtime / onnxruntime, Grad-CAM in numpy, overlays.

Imports only numpy and Pillow at module level so the runtime starts fast and never pulls in
TensorFlow or any other stage (train, export, device, benchmarks).
"""

__version__ = "0.1.0"
