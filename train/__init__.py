"""Training stage: data (fracdata) -> split -> models -> honest evaluation.

Heavy imports (TensorFlow, scikit-learn, matplotlib) live inside the functions that need them.
Reading data, splits and run directories is fracdata's (TensorFlow-free, shared with export);
export takes from here only the model registry (train.models) and the float reference
(train.reference).
"""
