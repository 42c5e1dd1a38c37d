"""Training stage: FracAtlas or phantom data -> split -> models -> honest evaluation.

Heavy imports (TensorFlow, scikit-learn, matplotlib) live inside the modules that need them, so
`train.data`, `train.phantom` and `train.split` stay importable from light tools and tests.
"""
